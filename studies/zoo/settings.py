"""The zoo study's settings: what it measures (:class:`ZooSettings`, validated on construction), the
defaults of a full run and of a quick smoke run, and the values actually run (:class:`ResolvedSettings`,
whose fingerprint guards a resumed table)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from energy.profile import BatchProfileError, check_batch_sizes
from studies.zoo.catalog import CATALOGUE, QUICK_MODELS, ZooModel, lookup
from studies.zoo.errors import ZooError
from studies.zoo.table import WEIGHTS
from trainer.errors import TrainerError, check_energy_settings

DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 16, 32, 64, 128)
#: One untimed batch per size: it allocates the activations and lets oneDNN / cuDNN pick kernels.
DEFAULT_WARMUP = 1
DEFAULT_REPEATS = 3
#: Each size is timed for at least this long: NVML's counter refreshes only every ~10-100 ms.
DEFAULT_MIN_TIME_S = 1.0
#: Largest predicted time (warm-up + timed batches) of one batch size. With it the full default
#: catalogue took 16 minutes on two CPU cores with one torch thread (docs/zoo.md, *Time*), and a
#: model's sizes together cost at most about twice this (each size costs ~2× the one before).
DEFAULT_SIZE_BUDGET_S = 60.0

#: What ``quick`` measures when not told otherwise: a smoke test of the pipeline in seconds.
QUICK_BATCH_SIZES: tuple[int, ...] = (1, 2)
QUICK_RESOLUTION = 64
QUICK_WARMUP = 0
QUICK_REPEATS = 1
QUICK_MIN_TIME_S = 0.0

# Bump when the meaning of the table's columns changes, so old tables are not resumed into.
_TABLE_VERSION = 1

ALLOCATOR_MODES = ("reuse", "system")


@dataclass(frozen=True)
class ZooSettings:
    """What the zoo study measures. Validated on construction: a bad value is a ZooError.

    None means "the mode's default": the whole catalogue, batch sizes 1, 16, 32, 64, 128, each
    model's own resolution, 1 warm-up batch, 3 timed batches and at least 1 s per size; with
    ``quick`` the three :data:`~studies.zoo.catalog.QUICK_MODELS`, batch sizes 1 and 2, 64×64
    images, no warm-up, 1 timed batch. Explicit values win over both (see :meth:`resolved`).

    ``resolution`` overrides every model's input size (square, pixels); the accuracy stays the
    metadata's, measured at the model's own resolution. ``torch_threads`` is torch's intra-op
    thread count during the study, restored afterwards: 1 by default because the ``estimate``
    source counts CPU time, and a second OpenMP thread that mostly spins doubles that count on a
    two-core machine (docs/ablation.md, *Reading the energy*). ``size_budget_s`` caps the predicted
    time of each batch size (``inf``: no cap). ``allocator`` is applied to the process as the
    server applies it (:mod:`energy.allocator`), so that batches cost what served ones do.
    ``seed`` seeds the random weights and inputs.
    """

    models: tuple[str, ...] | None = field(
        default=None, metadata={"help": "networks to measure, comma-separated (`greenserve zoo list`)"}
    )
    batch_sizes: tuple[int, ...] | None = field(
        default=None, metadata={"help": "batch sizes, comma-separated, measured smallest first"}
    )
    resolution: int | None = field(
        default=None, metadata={"help": "square input size for every network (default: each its own)"}
    )
    device: str = field(default="cpu", metadata={"help": "torch device (cpu, cuda, cuda:1)"})
    torch_threads: int = field(default=1, metadata={"help": "torch's intra-op threads during the study"})
    energy_source: str = field(default="auto", metadata={"help": "energy meter (docs/energy.md)"})
    watts_per_core: float | None = field(
        default=None, metadata={"help": "the estimate source's power per busy core"}
    )
    warmup: int | None = field(default=None, metadata={"help": "untimed batches per size"})
    repeats: int | None = field(default=None, metadata={"help": "timed batches per size, at least"})
    min_time_s: float | None = field(default=None, metadata={"help": "timed seconds per size, at least"})
    size_budget_s: float = field(
        default=DEFAULT_SIZE_BUDGET_S,
        metadata={"help": "largest predicted seconds of one batch size; larger ones are skipped (inf: none)"},
    )
    allocator: str = field(default="reuse", metadata={"help": "reuse (as the server) or system"})
    seed: int = field(default=0, metadata={"help": "seeds the random weights and inputs"})
    quick: bool = field(
        default=False, metadata={"help": "smoke run in seconds: 3 small networks, batch 1 and 2, 64×64"}
    )

    def __post_init__(self) -> None:
        for name in ("models", "batch_sizes"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ZooError(f"{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.models is not None:
            lookup(self.models)  # unknown names → ZooError with the close matches
        if self.batch_sizes is not None:
            try:
                check_batch_sizes(self.batch_sizes)
            except BatchProfileError as exc:
                raise ZooError(str(exc)) from None
        for name in ("resolution", "torch_threads", "warmup", "repeats", "seed"):
            value = getattr(self, name)
            if value is None:
                continue
            low = 0 if name in ("warmup", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ZooError(f"{name} must be an integer ≥ {low}, got {value!r}")
        if self.min_time_s is not None and not (math.isfinite(self.min_time_s) and self.min_time_s >= 0):
            raise ZooError(f"min_time_s must be a finite number ≥ 0, got {self.min_time_s!r}")
        if math.isnan(self.size_budget_s) or self.size_budget_s <= 0:
            raise ZooError(f"size_budget_s must be > 0 (inf: no budget), got {self.size_budget_s!r}")
        if not self.device:
            raise ZooError("device must not be empty")
        try:
            check_energy_settings(self.energy_source, self.watts_per_core)
        except TrainerError as exc:  # the energy settings' check is shared with the training studies
            raise ZooError(str(exc)) from None
        if self.allocator not in ALLOCATOR_MODES:
            raise ZooError(
                f"unknown allocator {self.allocator!r}; choose one of {', '.join(ALLOCATOR_MODES)}"
            )

    def resolved(self) -> ResolvedSettings:
        """The values actually run: the mode's defaults filled in where a setting is None."""
        q = self.quick
        models = self.models if self.models is not None else (QUICK_MODELS if q else None)
        entries = lookup(models) if models is not None else CATALOGUE
        return ResolvedSettings(
            models=entries,
            batch_sizes=check_batch_sizes(
                self.batch_sizes or (QUICK_BATCH_SIZES if q else DEFAULT_BATCH_SIZES)
            ),
            resolution=self.resolution if self.resolution is not None else (QUICK_RESOLUTION if q else None),
            device=self.device,
            torch_threads=self.torch_threads,
            energy_source=self.energy_source,
            watts_per_core=self.watts_per_core,
            warmup=_first(self.warmup, QUICK_WARMUP if q else DEFAULT_WARMUP),
            repeats=_first(self.repeats, QUICK_REPEATS if q else DEFAULT_REPEATS),
            min_time_s=_first(self.min_time_s, QUICK_MIN_TIME_S if q else DEFAULT_MIN_TIME_S),
            size_budget_s=self.size_budget_s,
            allocator=self.allocator,
            seed=self.seed,
        )


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value


@dataclass(frozen=True)
class ResolvedSettings:
    """:class:`ZooSettings` with every default applied: what :func:`run_zoo` runs."""

    models: tuple[ZooModel, ...]
    batch_sizes: tuple[int, ...]
    resolution: int | None
    device: str
    torch_threads: int
    energy_source: str
    watts_per_core: float | None
    warmup: int
    repeats: int
    min_time_s: float
    size_budget_s: float
    allocator: str
    seed: int

    def resolution_of(self, entry: ZooModel) -> int:
        """The input size ``entry`` is measured at."""
        return self.resolution if self.resolution is not None else entry.resolution

    def fingerprint(self) -> dict[str, Any]:
        """The settings that shape every row's numbers, as JSON-ready data (the resume check).

        The models, batch sizes and time budget are left out: they choose *which* cells a run
        measures, not what a cell measures, so a study can be extended with another model or a
        larger budget in the same table.
        """
        return {
            "table_version": _TABLE_VERSION,
            "device": self.device,
            "torch_threads": self.torch_threads,
            "resolution": self.resolution,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "min_time_s": self.min_time_s,
            "energy_source": self.energy_source,
            "watts_per_core": self.watts_per_core,
            "allocator": self.allocator,
            "seed": self.seed,
            "weights": WEIGHTS,
        }


__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_SIZE_BUDGET_S",
    "ResolvedSettings",
    "ZooSettings",
]
