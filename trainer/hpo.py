"""Hyperparameter search strategies compared by accuracy *and* energy (the Green AI study's HPO part).

The study is data plus a pure function: :class:`HpoSettings` in, a table of trials out
(``hpo_trials.csv``), and a summary and plots drawn from that table alone (:func:`write_hpo_report`),
so any result can be re-plotted without re-running. Each (strategy, repeat) pair is one Optuna study
in an RDB storage (SQLite by default) under a deterministic name, so a killed run resumes where it
stopped. See ``docs/hpo.md`` for the strategies, ranges, resume rules and how to read the summary.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import sqlalchemy.engine
import sqlalchemy.event
import sqlalchemy.exc
import torch
from optuna.trial import TrialState

from energy.profile import idle_phrase, source_idle_included
from trainer.data import Dataset, dataset_names, load_dataset
from trainer.errors import TrainerError, check_energy_settings
from trainer.models import build_model, model_names
from trainer.training import StudyEnergy, TrainConfig, train

logger = logging.getLogger(__name__)

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

TRIALS_CSV = "hpo_trials.csv"
SUMMARY_CSV = "hpo_summary.csv"
SUMMARY_MD = "hpo_summary.md"
SETTINGS_JSON = "hpo_settings.json"
BEST_SO_FAR_PNG = "hpo_best_so_far.png"
ENERGY_PNG = "hpo_cumulative_energy.png"


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

#: Columns of ``hpo_trials.csv`` before and after the tuned parameters (which depend on ``space``).
TRIAL_KEY_COLUMNS: tuple[str, ...] = ("strategy", "repeat", "round", "trial", "study")
TRIAL_RESULT_COLUMNS: tuple[str, ...] = (
    "accuracy",
    "best_so_far",
    "target_accuracy",
    "energy_j",
    "energy_net_j",
    "energy_source",
    "seconds",
    "epochs_run",
    "pruned",
    "state",
    "sampler_energy_j",
    "sampler_seconds",
    "energy_idle_included",
)
#: Columns :func:`summarize_trials` needs; the rest are optional.
REQUIRED_COLUMNS: tuple[str, ...] = ("strategy", "repeat", "round", "accuracy", "energy_j", "energy_source")

SUMMARY_COLUMNS: tuple[str, ...] = (
    "strategy",
    "repeats",
    "rounds",
    "energy_source",
    "energy_idle",
    "target_accuracy",
    "best_accuracy_mean",
    "best_accuracy_std",
    "reached",
    "rounds_to_target_mean",
    "rounds_to_target_std",
    "energy_to_target_j_mean",
    "energy_to_target_j_std",
    "energy_per_round_j_mean",
    "epochs_per_round_mean",
    "pruned_rounds",
    "study_energy_j_mean",
    "study_energy_j_std",
    "total_energy_j",
    "sampler_energy_per_round_j_mean",
    "pruning_baseline",
    "pruning_energy_saved_pct",
)


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
    storage: str | None = None  # Optuna RDB URL; None: sqlite:///<out_dir>/hpo.db
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
        if self.dataset not in dataset_names():
            raise TrainerError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(dataset_names())}"
            )
        if self.model not in model_names():
            raise TrainerError(f"unknown model {self.model!r}; choose one of {', '.join(model_names())}")
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

    def fingerprint(self) -> str:
        """A short hash of everything that changes a trial's result; rounds, repeats and strategies excluded.

        Two runs with the same fingerprint share their studies in the storage: that is what lets a
        killed run resume, and a run with more rounds or repeats extend an earlier one.
        """
        identity = {
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
        text = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


# --- search space, samplers, names ---------------------------------------------------------------


def grid_values(space: int) -> dict[str, list[float]]:
    """The partial grid: each parameter's range cut into 5 values (log-spaced for log parameters).

    The end points are the range's own bounds, exactly, so every grid value lies inside the range.
    """
    values: dict[str, list[float]] = {}
    for name in SPACES[space]:
        r = PARAM_RANGES[name]
        spaced = np.geomspace if r.log else np.linspace
        values[name] = [float(v) for v in spaced(r.low, r.high, GRID_POINTS_PER_PARAM)]
    return values


def _seed(*parts: int) -> int:
    """A 32-bit seed mixed from several integers (independent streams for (seed, repeat, …))."""
    return int(np.random.SeedSequence([abs(p) for p in parts]).generate_state(1)[0])


def make_sampler(strategy: str, *, space: int, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``strategy``, seeded with ``seed``."""
    if strategy not in STRATEGIES:
        raise TrainerError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    # GPSampler (and a few of its arguments) were experimental in some Optuna 4.x releases; the
    # warning says nothing about our use, and pytest runs with filterwarnings = error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if strategy in ("bayes", "bayes+hyperband"):
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
        if strategy == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
        if strategy == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # GridSampler shuffles the full grid once with its seed and gives trial n the n-th point:
        # random order, deterministic by seed, each point once (a failed trial's point is skipped).
        return optuna.samplers.GridSampler(grid_values(space), seed=seed)


def make_pruner(strategy: str, epochs: int) -> optuna.pruners.BasePruner:
    if strategy.endswith("+hyperband"):
        return optuna.pruners.HyperbandPruner(
            min_resource=HYPERBAND_MIN_EPOCHS,
            max_resource=epochs,
            reduction_factor=HYPERBAND_REDUCTION_FACTOR,
        )
    return optuna.pruners.NopPruner()


def study_name(settings: HpoSettings, strategy: str, repeat: int) -> str:
    """The storage name of one study: the same settings always name the same study."""
    return f"hpo-{strategy}-r{repeat}-{settings.fingerprint()}"


# --- running ------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    data: Dataset
    meter: StudyEnergy  # one sampler reads the meter throughout the whole study
    storage_url: str
    idle_power_w: float | None = None  # measured once per study, on the first trial


def _prepare(settings: HpoSettings, out_dir: Path) -> _Prepared:
    """Everything that can fail on the user's input, done before anything is written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainerError(f"output directory {out_dir} exists and is not a directory")
    data = load_dataset(
        settings.dataset,
        data_dir=settings.data_dir,
        seed=settings.seed,
        download=settings.download,
        limit=settings.data_limit,
    )
    # Building one model checks the model's parameters against the data's shape.
    build_model(
        settings.model, input_shape=data.input_shape, num_classes=data.num_classes, **settings.model_params
    )
    storage_url = settings.storage or f"sqlite:///{out_dir.resolve() / 'hpo.db'}"
    meter = StudyEnergy.open(
        settings.energy_source, device=settings.device, watts_per_core=settings.watts_per_core
    )
    return _Prepared(data, meter, storage_url)


class _Marks:
    """When the last trial's training ended (for the Optuna sampler's overhead since then, read
    from the study's energy curve)."""

    def __init__(self, meter: StudyEnergy) -> None:
        self.meter = meter
        self.reset()

    def reset(self) -> None:
        self.time_s = time.monotonic()

    def since(self) -> tuple[float, float]:
        now = time.monotonic()
        return self.meter.energy_between(self.time_s, now), now - self.time_s


def _objective(
    settings: HpoSettings, strategy: str, repeat: int, prepared: _Prepared, marks: _Marks
) -> Callable[[optuna.Trial], float]:
    prune = strategy.endswith("+hyperband")
    epochs = settings.n_epochs
    # The same initial weights and batch order for every trial of a repeat, whatever the strategy:
    # trials then differ only by their hyperparameters.
    train_seed = settings.seed + repeat
    data = prepared.data

    def objective(trial: optuna.Trial) -> float:
        params = {
            name: trial.suggest_float(
                name, PARAM_RANGES[name].low, PARAM_RANGES[name].high, log=PARAM_RANGES[name].log
            )
            for name in settings.param_names
        }
        # Read after the suggestions: model-based samplers fit their model on the first suggest call.
        sampler_j, sampler_s = marks.since()
        config = TrainConfig(
            epochs=epochs,
            batch_size=settings.batch_size,
            seed=train_seed,
            device=settings.device,
            idle_s=settings.idle_s,
            **params,
        )
        torch.manual_seed(train_seed)
        model = build_model(
            settings.model,
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            **settings.model_params,
        )
        pruned = False

        def on_epoch(epoch: int, accuracy: float) -> bool:
            nonlocal pruned
            trial.report(accuracy, epoch)
            if prune and epoch < epochs and trial.should_prune():
                pruned = True
                return False
            return True

        try:
            if prepared.idle_power_w is None:
                prepared.idle_power_w = prepared.meter.measure_idle_w(settings.idle_s)
            result = train(
                model,
                data,
                config,
                meter=prepared.meter,
                on_epoch=on_epoch,
                idle_power_w=prepared.idle_power_w,
            )
        finally:
            marks.reset()
        # Pruned trials spent real energy: it is recorded like any other trial's.
        for key, value in {
            "accuracy": result.accuracy,
            "energy_j": result.energy_j,
            "energy_net_j": result.energy_net_j,
            "energy_source": result.energy_source,
            "seconds": result.seconds,
            "epochs_run": result.epochs_run,
            "pruned": pruned,
            "sampler_energy_j": sampler_j,
            "sampler_seconds": sampler_s,
        }.items():
            trial.set_user_attr(key, value)
        if pruned:
            raise optuna.TrialPruned(
                f"pruned after epoch {result.epochs_run} at accuracy {result.accuracy:.4f}"
            )
        return result.accuracy

    return objective


_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _open_storage(url: str) -> optuna.storages.RDBStorage:
    storage = optuna.storages.RDBStorage(url)
    if storage.engine.dialect.name == "sqlite":
        # Optuna commits every report and attribute (~25 commits a trial), and SQLite's default
        # journal waits for an fsync on each: 0.1-0.2 s a trial here. WAL with synchronous=NORMAL
        # loses nothing when the process is killed (what resuming needs); only a power cut can
        # drop the last commits, and then those rounds are simply run again.
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # the connection that created the tables predates the pragmas
    return storage


def _load_study(
    settings: HpoSettings, strategy: str, repeat: int, storage: optuna.storages.BaseStorage
) -> optuna.Study:
    name = study_name(settings, strategy, repeat)
    # Samplers cannot restore their random state, so a resumed study gets a fresh stream mixed with
    # the number of trials already made (else random search would replay its first points). The
    # grid is the exception: its seed fixes the shuffled order, and trial n takes the n-th point.
    existing = 0
    with contextlib.suppress(KeyError):  # KeyError: a new study
        existing = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    sampler_seed = (
        _seed(settings.seed, repeat) if strategy == "grid" else _seed(settings.seed, repeat, existing)
    )
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=make_sampler(
            strategy, space=settings.space, seed=sampler_seed, startup_trials=settings.startup_trials
        ),
        pruner=make_pruner(strategy, settings.n_epochs),
        load_if_exists=True,
    )
    # A trial still RUNNING was left by a killed process (runs are single-writer): it never counts,
    # and its round is run again.
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        logger.warning(
            "study %s: trial %d was left running by a killed run; marking it failed", name, stale.number
        )
        study.tell(stale.number, state=TrialState.FAIL, skip_if_finished=True)
    return study


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return sorted(study.get_trials(deepcopy=False, states=_FINISHED), key=lambda t: t.number)


def run_hpo(settings: HpoSettings, out_dir: Path, *, progress: bool = True) -> Path:
    """Run (or resume) every strategy × repeat study; write the trials table, summary and plots.

    Returns the path of ``hpo_trials.csv``. Finished trials found in the storage are not run again:
    each study runs only the rounds it is missing. Raises :class:`TrainerError` for bad settings or
    data before anything is written; an interrupted run leaves only the storage, never half a file.
    """
    out_dir = Path(out_dir)
    prepared = _prepare(settings, out_dir)
    previous_verbosity = optuna.logging.get_verbosity()
    previous_threads = torch.get_num_threads()
    started = time.monotonic()
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if settings.torch_threads > 0:
            torch.set_num_threads(settings.torch_threads)
        out_dir.mkdir(parents=True, exist_ok=True)
        storage = _open_storage(prepared.storage_url)
        try:
            prepared.meter.start()
            rows = _run_studies(settings, prepared, storage, progress=progress)
        finally:
            storage.remove_session()
            storage.engine.dispose()
    finally:
        prepared.meter.close()
        optuna.logging.set_verbosity(previous_verbosity)
        torch.set_num_threads(previous_threads)
    wall_s = time.monotonic() - started

    target = _resolve_target(rows, settings.target_accuracy, settings.target_fraction)
    for row in rows:
        row["target_accuracy"] = target
    trials_csv = out_dir / TRIALS_CSV
    columns = [*TRIAL_KEY_COLUMNS, *settings.param_names, *TRIAL_RESULT_COLUMNS]
    _atomic_write_text(trials_csv, _csv_text(rows, columns))
    provenance = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "effective": {
            "rounds": settings.n_rounds,
            "repeats": settings.n_repeats,
            "epochs": settings.n_epochs,
            "limit": settings.data_limit,
        },
        "fingerprint": settings.fingerprint(),
        "storage": prepared.storage_url,
        "energy_source": prepared.meter.source,
        "wall_s": round(wall_s, 3),
    }
    _atomic_write_text(out_dir / SETTINGS_JSON, json.dumps(provenance, indent=2, default=str) + "\n")
    write_hpo_report(trials_csv, out_dir)
    logger.info("HPO: %d trials in %s (%.1f s)", len(rows), trials_csv, wall_s)
    return trials_csv


def _run_studies(
    settings: HpoSettings, prepared: _Prepared, storage: optuna.storages.BaseStorage, *, progress: bool
) -> list[dict[str, Any]]:
    from rich.console import Console
    from rich.progress import Progress

    rounds = settings.n_rounds
    studies = {
        (strategy, repeat): _load_study(settings, strategy, repeat, storage)
        for strategy in settings.strategies
        for repeat in range(settings.n_repeats)
    }
    done = {key: min(rounds, len(_finished(study))) for key, study in studies.items()}
    marks = _Marks(prepared.meter)
    with Progress(console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("HPO trials", total=rounds * len(studies), completed=sum(done.values()))
        for (strategy, repeat), study in studies.items():
            missing = rounds - done[(strategy, repeat)]
            if missing <= 0:
                continue
            logger.info(
                "study %s: %d rounds finished, running %d more",
                study.study_name,
                done[(strategy, repeat)],
                missing,
            )
            bar.update(task, description=f"HPO {strategy} r{repeat}")
            objective = _objective(settings, strategy, repeat, prepared, marks)
            while missing > 0:
                marks.reset()
                study.optimize(objective, n_trials=missing, callbacks=[lambda _s, _t: bar.advance(task)])
                now = len(_finished(study))
                if now == rounds - missing:  # every trial failed without raising: do not loop forever
                    raise TrainerError(
                        f"study {study.study_name}: trials fail without finishing; see the log"
                    )
                missing = rounds - now
    rows: list[dict[str, Any]] = []
    for (strategy, repeat), study in studies.items():
        rows.extend(_trial_rows(settings, strategy, repeat, study.study_name, _finished(study)[:rounds]))
    return rows


def _trial_rows(
    settings: HpoSettings, strategy: str, repeat: int, name: str, trials: Sequence[optuna.trial.FrozenTrial]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i, t in enumerate(trials, start=1):
        attrs = t.user_attrs
        complete = t.state == TrialState.COMPLETE
        accuracy = float(attrs.get("accuracy", t.value if t.value is not None else math.nan))
        rows.append(
            {
                "strategy": strategy,
                "repeat": repeat,
                "round": i,
                "trial": t.number,
                "study": name,
                **{p: float(t.params[p]) for p in settings.param_names},
                "accuracy": accuracy,
                "best_so_far": math.nan,  # filled in below
                "target_accuracy": math.nan,
                "energy_j": float(attrs.get("energy_j", math.nan)),
                "energy_net_j": float(attrs.get("energy_net_j", math.nan)),
                "energy_source": str(attrs.get("energy_source", "")),
                "seconds": float(attrs.get("seconds", math.nan)),
                "epochs_run": int(attrs.get("epochs_run", 0)),
                "pruned": not complete,
                "state": t.state.name,
                "sampler_energy_j": float(attrs.get("sampler_energy_j", math.nan)),
                "sampler_seconds": float(attrs.get("sampler_seconds", math.nan)),
                # Everything the meter read during the trial: idle included unless the source is
                # the estimate (zero when idle).
                "energy_idle_included": _flag(source_idle_included(str(attrs.get("energy_source", "")))),
            }
        )
    for row, best in zip(rows, best_so_far(rows), strict=True):
        row["best_so_far"] = best
    return rows


# --- the summary: a pure function of the trials table --------------------------------------------


def _float(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)


def _flag(value: bool | None) -> str:
    return "" if value is None else str(value).lower()


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _is_pruned(row: Mapping[str, Any]) -> bool:
    if "pruned" in row and row["pruned"] not in (None, ""):
        return _bool(row["pruned"])
    return str(row.get("state", "COMPLETE")).upper() == "PRUNED"


def _resolve_target(
    rows: Sequence[Mapping[str, Any]], explicit: float | None, fraction: float | None
) -> float:
    """``explicit``; else ``fraction`` × the best completed accuracy; else the table's recorded target;
    else the default fraction × the best completed accuracy (NaN when no trial completed)."""
    if explicit is not None:
        return float(explicit)
    if fraction is None:
        recorded = {_float(r["target_accuracy"]) for r in rows if "target_accuracy" in r}
        recorded = {t for t in recorded if not math.isnan(t)}
        if len(recorded) > 1:
            raise TrainerError(f"the table records several target accuracies: {sorted(recorded)}")
        if recorded:
            return recorded.pop()
        fraction = DEFAULT_TARGET_FRACTION
    complete = [_float(r["accuracy"]) for r in rows if not _is_pruned(r)]
    complete = [a for a in complete if not math.isnan(a)]
    return fraction * max(complete) if complete else math.nan


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (n − 1); NaN for fewer than two values."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.std(finite, ddof=1)) if len(finite) >= 2 else math.nan


def _by_strategy(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[int, list[Mapping[str, Any]]]]:
    """rows grouped by strategy (first-appearance order), then by repeat, each sorted by round."""
    groups: dict[str, dict[int, list[Mapping[str, Any]]]] = {}
    for row in rows:
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise TrainerError(f"trials table lacks column(s) {', '.join(missing)}")
        groups.setdefault(str(row["strategy"]), {}).setdefault(int(row["repeat"]), []).append(row)
    for repeats in groups.values():
        for repeat_rows in repeats.values():
            repeat_rows.sort(key=lambda r: int(r["round"]))
    return groups


def best_so_far(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Best accuracy of the *completed* trials up to each round (NaN before the first one).

    ``rows`` are one study's rounds in order. Like Optuna's ``best_value``, a pruned trial's partial
    accuracy is not a result: the search stopped that model before it finished.
    """
    best, out = math.nan, []
    for row in rows:
        accuracy = _float(row["accuracy"])
        if not _is_pruned(row) and not math.isnan(accuracy):
            best = accuracy if math.isnan(best) else max(best, accuracy)
        out.append(best)
    return out


def summarize_trials(
    rows: Sequence[Mapping[str, Any]],
    *,
    target_accuracy: float | None = None,
    target_fraction: float | None = None,
) -> list[dict[str, Any]]:
    """One summary row per strategy (in the table's order) from the trials table; pure.

    The target accuracy is ``target_accuracy`` if given, else ``target_fraction`` × the best completed
    accuracy in the table if that is given, else the table's ``target_accuracy`` column (what the run
    recorded), else 0.99 × the best completed accuracy. A repeat reaches the target
    at the first round whose best-so-far accuracy is ≥ it; its energy to target is the summed
    ``energy_j`` of rounds 1 to that one (pruned rounds included: they spent it). Means and sample
    standard deviations of rounds and energy to target are over the repeats that reached it
    (``reached`` says how many); NaN where none did. Values may be numbers or CSV strings.
    """
    target = _resolve_target(rows, target_accuracy, target_fraction)
    groups = _by_strategy(rows)
    summary: list[dict[str, Any]] = []
    for strategy, repeats in groups.items():
        best, to_target_rounds, to_target_j, study_j = [], [], [], []
        all_rows = [r for repeat_rows in repeats.values() for r in repeat_rows]
        for repeat_rows in repeats.values():
            curve = best_so_far(repeat_rows)
            energies = [_float(r["energy_j"]) for r in repeat_rows]
            best.append(curve[-1] if curve else math.nan)
            study_j.append(float(np.sum(energies)))
            hit = next((i for i, b in enumerate(curve) if not math.isnan(b) and b >= target), None)
            if hit is not None:
                to_target_rounds.append(float(int(repeat_rows[hit]["round"])))
                to_target_j.append(float(np.sum(energies[: hit + 1])))
        sources = sorted({str(r["energy_source"]) for r in all_rows})
        sampler_j = [_float(r.get("sampler_energy_j")) for r in all_rows]
        epochs = [_float(r.get("epochs_run")) for r in all_rows]
        summary.append(
            {
                "strategy": strategy,
                "repeats": len(repeats),
                "rounds": max(len(v) for v in repeats.values()),
                "energy_source": "+".join(sources),
                "energy_idle": idle_phrase("+".join(sources)),
                "target_accuracy": target,
                "best_accuracy_mean": _mean(best),
                "best_accuracy_std": _std(best),
                "reached": len(to_target_rounds),
                "rounds_to_target_mean": _mean(to_target_rounds),
                "rounds_to_target_std": _std(to_target_rounds),
                "energy_to_target_j_mean": _mean(to_target_j),
                "energy_to_target_j_std": _std(to_target_j),
                "energy_per_round_j_mean": _mean([_float(r["energy_j"]) for r in all_rows]),
                "epochs_per_round_mean": _mean(epochs),
                "pruned_rounds": sum(_is_pruned(r) for r in all_rows),
                "study_energy_j_mean": _mean(study_j),
                "study_energy_j_std": _std(study_j),
                "total_energy_j": float(np.nansum(study_j)),
                "sampler_energy_per_round_j_mean": _mean(sampler_j),
                "pruning_baseline": "",
                "pruning_energy_saved_pct": math.nan,
            }
        )
    by_name = {s["strategy"]: s for s in summary}
    for s in summary:
        base = PRUNING_BASELINES.get(s["strategy"])
        if base in by_name and by_name[base]["study_energy_j_mean"] > 0:
            s["pruning_baseline"] = base
            s["pruning_energy_saved_pct"] = 100.0 * (
                1.0 - s["study_energy_j_mean"] / by_name[base]["study_energy_j_mean"]
            )
    return summary


def curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """Per strategy, repeats × rounds arrays of best-so-far accuracy and cumulative energy (J); NaN-padded."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for strategy, repeats in _by_strategy(rows).items():
        n_rounds = max(len(v) for v in repeats.values())
        best = np.full((len(repeats), n_rounds), np.nan)
        cumulative = np.full((len(repeats), n_rounds), np.nan)
        for i, repeat_rows in enumerate(repeats.values()):
            best[i, : len(repeat_rows)] = best_so_far(repeat_rows)
            cumulative[i, : len(repeat_rows)] = np.cumsum([_float(r["energy_j"]) for r in repeat_rows])
        out[strategy] = {"best_so_far": best, "cumulative_energy_j": cumulative}
    return out


# --- files --------------------------------------------------------------------------------------


def read_trials_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a trials table, as strings (every reader here accepts those)."""
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"no trials table at {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TrainerError(f"{path} is not an HPO trials table: it lacks {', '.join(missing)}")
        return list(reader)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c, "")) for c in columns])
    return buf.getvalue()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name beside ``path``, then rename: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def _fmt(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    return _fmt(mean, digits) if math.isnan(std) else f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"


def summary_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary table as Markdown, with every energy column labelled by its source and whether
    it includes the devices' idle draw (the trials' ``energy_j``: everything the meter read)."""
    sources = sorted({str(s["energy_source"]) for s in summary})
    label = "+".join(sources) or "unknown"
    idle = idle_phrase(label)
    lines = ["# HPO strategies: accuracy and energy", ""]
    if any("estimate" in s.split("+") for s in sources):
        lines += [
            "> **⚠ ENERGY IS AN ESTIMATE, NOT A MEASUREMENT.** Source `estimate`: this process's CPU",
            "> time × watts per core (no power sensor was read). Compare strategies with each other,",
            "> not with a meter.",
            "",
        ]
    if len(sources) > 1:
        lines += [
            f"> **Mixed energy sources ({', '.join(sources)}): the energy columns are not comparable.**",
            "",
        ]
    if summary:
        first = summary[0]
        lines += [
            f"Target accuracy: **{_fmt(first['target_accuracy'], 4)}**. Rounds to target: the first round "
            "whose best-so-far accuracy (completed trials only) reaches it; energy to target sums the "
            "training energy of rounds 1 to that one, pruned rounds included. Means ± sample std over the "
            "repeats that reached it; best accuracy and energy per study over all "
            f"{first['repeats']} repeat(s) of {first['rounds']} rounds. Energy is everything the "
            f"meter read during each trial's training ({label}, {idle}).",
            "",
        ]
    unit = f"J, {label}, {idle}"
    header = [
        "strategy",
        "best accuracy",
        "rounds to target",
        "reached",
        f"energy to target ({unit})",
        f"energy/round ({unit})",
        "epochs/round",
        "pruned rounds",
        f"energy/study ({unit})",
        f"total energy ({unit})",
        f"sampler overhead/round ({unit})",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        cells = [
            s["strategy"],
            _pm(s["best_accuracy_mean"], s["best_accuracy_std"], 4),
            _pm(s["rounds_to_target_mean"], s["rounds_to_target_std"], 1),
            f"{s['reached']}/{s['repeats']}",
            _pm(s["energy_to_target_j_mean"], s["energy_to_target_j_std"], 1),
            _fmt(s["energy_per_round_j_mean"], 2),
            _fmt(s["epochs_per_round_mean"], 2),
            str(s["pruned_rounds"]),
            _pm(s["study_energy_j_mean"], s["study_energy_j_std"], 1),
            _fmt(s["total_energy_j"], 1),
            _fmt(s["sampler_energy_per_round_j_mean"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    pruning = [s for s in summary if s["pruning_baseline"]]
    if pruning:
        lines += ["", "## Energy saved by pruning", ""]
        by_name = {s["strategy"]: s for s in summary}
        for s in pruning:
            base = by_name[s["pruning_baseline"]]

            def pair(key: str, digits: int, s: Mapping[str, Any] = s, base: Mapping[str, Any] = base) -> str:
                return f"{_fmt(s[key], digits)} vs {_fmt(base[key], digits)}"

            lines.append(
                f"- **{s['strategy']}** vs **{base['strategy']}**: "
                f"{_fmt(s['pruning_energy_saved_pct'], 1)}% less energy per study "
                f"({pair('study_energy_j_mean', 1)} J, {label}, {idle}); "
                f"best accuracy {pair('best_accuracy_mean', 4)}; "
                f"energy to target {pair('energy_to_target_j_mean', 1)} J "
                f"(reached {s['reached']}/{s['repeats']} vs {base['reached']}/{base['repeats']})."
            )
    return "\n".join(lines) + "\n"


def write_hpo_report(
    trials_csv: Path,
    out_dir: Path,
    *,
    target_accuracy: float | None = None,
    target_fraction: float | None = None,
) -> list[Path]:
    """Redraw the summary (CSV and Markdown) and the plots from a trials table alone; return their paths."""
    from trainer import hpo_plots

    rows = read_trials_csv(Path(trials_csv))
    if not rows:
        raise TrainerError(f"{trials_csv} has no trials")
    summary = summarize_trials(rows, target_accuracy=target_accuracy, target_fraction=target_fraction)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / SUMMARY_CSV, out_dir / SUMMARY_MD, out_dir / BEST_SO_FAR_PNG, out_dir / ENERGY_PNG]
    _atomic_write_text(paths[0], _csv_text(summary, SUMMARY_COLUMNS))
    _atomic_write_text(paths[1], summary_markdown(summary))
    target = summary[0]["target_accuracy"]
    source = summary[0]["energy_source"] if len({s["energy_source"] for s in summary}) == 1 else "mixed"
    series = curves(rows)
    _atomic_write_bytes(paths[2], hpo_plots.best_so_far_png(series, target_accuracy=target))
    _atomic_write_bytes(paths[3], hpo_plots.cumulative_energy_png(series, energy_source=source))
    return paths
