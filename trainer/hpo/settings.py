"""What an HPO study runs: :class:`HpoSettings` (validated on construction), the strategies, the
search spaces and the defaults of a full run and of a quick one."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy.engine
import sqlalchemy.exc
import torch

from trainer.errors import TrainerError, check_dataset_and_model, check_energy_settings

#: Every strategy, in the order the summary lists them.
STRATEGIES: tuple[str, ...] = ("bayes", "tpe", "random", "grid", "bayes+hyperband")
#: The strategies that prune with Hyperband, and the strategy each is compared with for energy saved.
PRUNING_BASELINES: dict[str, str] = {"bayes+hyperband": "bayes"}

#: Values per parameter in the partial grid (the study's choice).
GRID_POINTS_PER_PARAM = 5
#: Hyperband: the smallest budget (epochs) a trial gets before it can be pruned, and the keep ratio 1/η.
HYPERBAND_MIN_EPOCHS = 1
HYPERBAND_REDUCTION_FACTOR = 3

#: Defaults of a full run and of ``quick=True`` (a smoke run: seconds, not minutes).
DEFAULT_ROUNDS, QUICK_ROUNDS = 30, 4
DEFAULT_REPEATS, QUICK_REPEATS = 3, 1
DEFAULT_EPOCHS, QUICK_EPOCHS = 5, 2
QUICK_LIMIT = 400
#: The default target accuracy is this fraction of the best accuracy any strategy reached.
DEFAULT_TARGET_FRACTION = 0.99
#: The studies' name prefix when ``study_name`` is not given (the single-process run's names).
DEFAULT_STUDY_NAME = "hpo"
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*(?:-[A-Za-z0-9_.]+)*")


class ParamRange(NamedTuple):
    low: float
    high: float
    log: bool


#: Adam's hyperparameters and their ranges. Learning rate, ε and weight decay span orders of
#: magnitude, so they are searched (and gridded) on a log scale; β1 and β2 linearly.
PARAM_RANGES: dict[str, ParamRange] = {
    "lr": ParamRange(1e-5, 1e-1, log=True),
    "beta1": ParamRange(0.5, 0.999, log=False),
    "beta2": ParamRange(0.9, 0.9999, log=False),
    "eps": ParamRange(1e-10, 1e-6, log=True),
    "weight_decay": ParamRange(1e-6, 1e-2, log=True),
}
#: The two search spaces of the study, by size.
SPACES: dict[int, tuple[str, ...]] = {
    3: ("lr", "beta1", "beta2"),
    5: ("lr", "beta1", "beta2", "eps", "weight_decay"),
}


ModelParams = dict[str, int | float | bool | str]


def _default_model_params() -> ModelParams:
    return {"conv_layers": 1, "linear_layers": 3, "activation": True}


def _scalar(text: str) -> int | float | bool | str:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_model_params(text: str) -> ModelParams:
    """``"conv_layers=2,activation=false"`` → ``{"conv_layers": 2, "activation": False}`` (for a CLI flag)."""
    params: ModelParams = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise TrainerError(
                f"model parameters are key=value pairs separated by commas, got {item!r} in {text!r}"
            )
        params[key.strip()] = _scalar(value.strip())
    return params


@dataclass(frozen=True)
class HpoSettings:
    """One HPO experiment. Plain types throughout, so an argparse namespace maps onto it field by field.

    ``rounds``, ``repeats``, ``epochs`` and ``limit`` left at ``None`` take the full-run defaults, or
    the tiny ``quick`` ones; a value given explicitly wins over ``quick``. Everything is checked on
    construction (:class:`TrainerError` naming the bad value); :func:`run_hpo` then checks what needs
    the data (dataset present, model parameters valid, energy source available) before it writes.
    """

    dataset: str = "digits"
    data_dir: Path | None = None
    model: str = "simple_cnn"
    model_params: ModelParams = field(default_factory=_default_model_params, hash=False)
    strategies: tuple[str, ...] = STRATEGIES
    rounds: int | None = None  # trials per study (one study = one strategy × one repeat)
    repeats: int | None = None  # independent studies per strategy, each with its own seeds
    space: int = 3  # 3: lr, beta1, beta2; 5: + eps, weight_decay
    epochs: int | None = None  # per trial (and Hyperband's maximum budget)
    batch_size: int = 64
    limit: int | None = None  # at most this many samples in all, 20% held out (load_dataset's limit)
    download: bool = False  # let torchvision fetch missing dataset files
    target_accuracy: float | None = None  # None: target_fraction × the best accuracy of all strategies
    target_fraction: float = DEFAULT_TARGET_FRACTION
    startup_trials: int = 10  # random trials before the GP / TPE model is used (Optuna's default)
    seed: int = 0
    device: str = "cpu"
    energy_source: str = "auto"
    watts_per_core: float | None = None
    idle_s: float = 1.0  # idle-power measurement, once before the first trial (sensor sources only)
    torch_threads: int = 1  # torch's intra-op threads during the run; 0: leave torch's setting alone
    storage: str | None = field(
        default=None,  # None: sqlite:///<out_dir>/hpo.db
        metadata={"help": "Optuna RDB URL, e.g. postgresql+psycopg://user@host/db; unset: <out>/hpo.db"},
    )
    # A name shared by several workers (processes or machines) on one storage; None: one process.
    study_name: str | None = field(
        default=None,
        metadata={"help": "share the studies with every worker given this name and --storage (docs/hpo.md)"},
    )
    quick: bool = False

    def __post_init__(self) -> None:
        # Plain inputs from argparse: a list or "a,b" string of strategies, a str data_dir, and
        # "key=value,..." model parameters.
        strategies: Any = self.strategies
        if isinstance(strategies, str):
            strategies = [s.strip() for s in strategies.split(",") if s.strip()]
        object.__setattr__(self, "strategies", tuple(strategies))
        data_dir: Any = self.data_dir
        if data_dir is not None:
            object.__setattr__(self, "data_dir", Path(data_dir))
        model_params: Any = self.model_params
        if isinstance(model_params, str):
            model_params = parse_model_params(model_params)
        object.__setattr__(self, "model_params", dict(model_params))
        self._validate()

    def _validate(self) -> None:
        if not self.strategies:
            raise TrainerError(f"no strategy given; choose from {', '.join(STRATEGIES)}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise TrainerError(f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
        if len(set(self.strategies)) != len(self.strategies):
            raise TrainerError(f"a strategy is listed twice: {', '.join(self.strategies)}")
        check_dataset_and_model(self.dataset, self.model)
        if self.space not in SPACES:
            raise TrainerError(
                f"space must be 3 (lr, beta1, beta2) or 5 (+ eps, weight_decay), got {self.space!r}"
            )
        if (
            isinstance(self.torch_threads, bool)
            or not isinstance(self.torch_threads, int)
            or self.torch_threads < 0
        ):
            raise TrainerError(
                f"torch_threads must be an integer ≥ 0 (0: torch's default), got {self.torch_threads!r}"
            )
        for name in ("rounds", "repeats", "epochs", "limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TrainerError(f"{name} must be an integer ≥ 1, got {value!r}")
        for name in ("batch_size", "startup_trials"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainerError(f"{name} must be an integer ≥ 1, got {value!r}")
        if "grid" in self.strategies and self.n_rounds > self.grid_size:
            raise TrainerError(
                f"rounds={self.n_rounds} exceeds the grid's {self.grid_size} points "
                f"({GRID_POINTS_PER_PARAM} values × {self.space} parameters); use fewer rounds or drop 'grid'"
            )
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise TrainerError(f"target_accuracy must be in (0, 1], got {self.target_accuracy!r}")
        if not 0 < self.target_fraction <= 1:
            raise TrainerError(f"target_fraction must be in (0, 1], got {self.target_fraction!r}")
        if not (math.isfinite(self.idle_s) and self.idle_s >= 0):
            raise TrainerError(f"idle_s must be a finite number ≥ 0, got {self.idle_s!r}")
        check_energy_settings(self.energy_source, self.watts_per_core)
        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError) as exc:
            raise TrainerError(f"bad device {self.device!r}: {exc}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TrainerError(f"device {self.device!r} asked for, but torch sees no CUDA device here")
        if self.storage is not None:
            try:
                sqlalchemy.engine.make_url(self.storage)
            except sqlalchemy.exc.ArgumentError as exc:
                raise TrainerError(
                    f"storage must be a database URL such as sqlite:///hpo.db, got {self.storage!r}"
                ) from exc
        if self.study_name is not None and not (
            len(self.study_name) <= 100 and _STUDY_NAME.fullmatch(self.study_name)
        ):
            raise TrainerError(
                "study_name must be 1-100 letters, digits, '_', '.' or single '-' between them "
                f"(e.g. hpo-digits-2026), got {self.study_name!r}"
            )

    # Effective values: explicit settings win, then quick, then the full-run defaults.
    @property
    def n_rounds(self) -> int:
        return self.rounds if self.rounds is not None else (QUICK_ROUNDS if self.quick else DEFAULT_ROUNDS)

    @property
    def n_repeats(self) -> int:
        return (
            self.repeats if self.repeats is not None else (QUICK_REPEATS if self.quick else DEFAULT_REPEATS)
        )

    @property
    def n_epochs(self) -> int:
        return self.epochs if self.epochs is not None else (QUICK_EPOCHS if self.quick else DEFAULT_EPOCHS)

    @property
    def data_limit(self) -> int | None:
        return self.limit if self.limit is not None else (QUICK_LIMIT if self.quick else None)

    @property
    def param_names(self) -> tuple[str, ...]:
        return SPACES[self.space]

    @property
    def grid_size(self) -> int:
        return int(GRID_POINTS_PER_PARAM ** len(SPACES[self.space]))

    @property
    def shared(self) -> bool:
        """Whether several workers may share the studies (``study_name`` given)."""
        return self.study_name is not None

    @property
    def name_prefix(self) -> str:
        """The first part of every study's name: ``study_name``, else ``hpo``."""
        return self.study_name if self.study_name is not None else DEFAULT_STUDY_NAME

    def identity(self) -> dict[str, Any]:
        """Everything that changes a trial's result (what :meth:`fingerprint` hashes), as plain values."""
        return {
            "v": 1,
            "dataset": self.dataset,
            "data_dir": None if self.data_dir is None else str(self.data_dir),
            "model": self.model,
            "model_params": sorted(self.model_params.items()),
            "space": self.space,
            "epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "limit": self.data_limit,
            "startup_trials": self.startup_trials,
            "seed": self.seed,
            "device": self.device,
            "energy_source": self.energy_source,
            "watts_per_core": self.watts_per_core,
            "idle_s": self.idle_s,
        }

    def fingerprint(self) -> str:
        """A short hash of everything that changes a trial's result; rounds, repeats and strategies excluded.

        Two runs with the same fingerprint share their studies in the storage: that is what lets a
        killed run resume, and a run with more rounds or repeats extend an earlier one.
        """
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]
