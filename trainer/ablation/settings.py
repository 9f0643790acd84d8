"""What an ablation study runs: :class:`AblationSettings` (validated on construction) and the table
of runs it stands for (:func:`designs`, a pure function of the settings)."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from trainer.errors import TrainerError, check_dataset_and_model, check_energy_settings
from trainer.training import TrainConfig

#: What ``quick=True`` runs: a smoke test of the whole pipeline in seconds, not a result.
QUICK_EPOCHS = 1
QUICK_MAX_REPEATS = 2
QUICK_TRAIN_SAMPLES = 256
QUICK_TEST_SAMPLES = 128

# Bump when the meaning of a table's columns changes, so old tables are not resumed into.
_TABLE_VERSION = 1


@dataclass(frozen=True)
class AblationSettings:
    """What an ablation study runs. Validated on construction: a bad value is a TrainerError.

    ``download`` lets torchvision's datasets fetch missing files into ``data_dir`` (never by default).
    ``torch_threads`` sets torch's intra-op threads for the study and is restored afterwards (None:
    torch's default, one per core; the flag is ``--torch-threads``, ``--threads`` its old spelling).
    It defaults to 1: these models are too small to gain from a second thread (0.53 vs 0.48 s per
    epoch here), the idle thread's spinning doubles the CPU-time energy estimate, and on a machine
    shared with other work spinning threads slow a run down by up to 100×.

    The defaults are sized so that the full study on ``digits`` (8 designs × 5 repeats × 8 epochs)
    finishes well inside 10 minutes on two CPU cores (about 2 minutes measured; docs/ablation.md).
    ``quick=True`` is a smoke test: 1 epoch, at most 2 repeats, a seed-chosen 256 training and 128
    held-out samples (it overrides ``epochs`` and caps ``repeats``; see :meth:`resolved`).
    """

    dataset: str = "digits"
    data_dir: Path | None = None
    download: bool = False
    model: str = "simple_cnn"
    conv_levels: tuple[int, ...] = (1, 4)
    linear_levels: tuple[int, ...] = (3, 7)
    activation_levels: tuple[bool, ...] = (False, True)
    repeats: int = 5
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    torch_threads: int | None = field(
        default=1, metadata={"help": "torch's intra-op threads during the study, restored afterwards"}
    )
    energy_source: str = "auto"
    watts_per_core: float | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        # Accept any sequence (a CLI gives lists); store tuples so settings stay hashable and comparable.
        for name in ("conv_levels", "linear_levels", "activation_levels"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise TrainerError(f"{name} must be a sequence of levels, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        _check_int_levels("conv_levels", self.conv_levels)
        _check_int_levels("linear_levels", self.linear_levels)
        _check_levels("activation_levels", self.activation_levels)
        if not all(isinstance(v, bool) for v in self.activation_levels):
            raise TrainerError(f"activation_levels must be booleans, got {self.activation_levels!r}")
        for name in ("repeats", "epochs", "batch_size", "torch_threads"):
            value = getattr(self, name)
            if name == "torch_threads" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainerError(f"{name} must be an integer ≥ 1, got {value!r}")
        check_dataset_and_model(self.dataset, self.model)
        check_energy_settings(self.energy_source, self.watts_per_core)
        self.train_config(seed=self.seed)  # TrainConfig's own checks (lr > 0, ...)

    @property
    def threads(self) -> int | None:
        """The old name of :attr:`torch_threads` (read-only)."""
        return self.torch_threads

    def resolved(self) -> AblationSettings:
        """The settings actually run: ``quick`` applied to ``epochs`` and ``repeats``."""
        if not self.quick:
            return self
        return dataclasses.replace(self, epochs=QUICK_EPOCHS, repeats=min(self.repeats, QUICK_MAX_REPEATS))

    def train_config(self, *, seed: int) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=seed, device=self.device
        )

    def fingerprint(self) -> dict[str, Any]:
        """Everything that shapes the table's numbers, as JSON-ready data (the resume check).

        The thread count is stored under its old key, ``threads``, in the old key order: a study
        directory made before the field was renamed ``torch_threads`` resumes unchanged.
        """
        data = dataclasses.asdict(self.resolved())
        del data["download"]  # how the files arrive does not change them
        data["data_dir"] = None if self.data_dir is None else str(self.data_dir)
        data = {"threads" if k == "torch_threads" else k: v for k, v in data.items()}
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
        return {"table_version": _TABLE_VERSION, **data}


def _check_levels(name: str, levels: tuple[Any, ...]) -> None:
    if not levels:
        raise TrainerError(f"{name} must name at least one level")
    if len(set(levels)) != len(levels):
        raise TrainerError(f"{name} has duplicate levels: {levels!r}")


def _check_int_levels(name: str, levels: tuple[Any, ...]) -> None:
    _check_levels(name, levels)
    bad = [v for v in levels if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad:
        raise TrainerError(f"{name} must be integers ≥ 1, got {', '.join(map(repr, bad))}")


class DesignRow(TypedDict):
    """One planned run: a design (a combination of levels) and a repeat of it."""

    design_id: str
    conv_layers: int
    linear_layers: int
    activation: bool
    repeat: int
    run_order: int
    seed: int


def design_id(conv_layers: int, linear_layers: int, activation: bool) -> str:
    """A design's name in tables and plots, e.g. ``c4-l7-relu``."""
    return f"c{conv_layers}-l{linear_layers}-{'relu' if activation else 'norelu'}"


def run_seed(seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` (weights and batch order), shared by every design."""
    return seed * 1000 + repeat


def designs(settings: AblationSettings) -> list[DesignRow]:
    """The study's runs, in the order they run (a pure function of the settings).

    One row per design × repeat. ``run_order`` counts from 0; each repeat is a block holding every
    design once, in an order shuffled by ``settings.seed`` (see :mod:`trainer.ablation`).
    """
    s = settings.resolved()
    factorial = list(itertools.product(s.conv_levels, s.linear_levels, s.activation_levels))
    rng = random.Random(s.seed)
    rows: list[DesignRow] = []
    for repeat in range(s.repeats):
        block = list(factorial)
        rng.shuffle(block)
        for conv, linear, act in block:
            rows.append(
                DesignRow(
                    design_id=design_id(conv, linear, act),
                    conv_layers=conv,
                    linear_layers=linear,
                    activation=act,
                    repeat=repeat,
                    run_order=len(rows),
                    seed=run_seed(s.seed, repeat),
                )
            )
    return rows
