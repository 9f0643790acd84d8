"""The model-zoo study: energy per image and accuracy of a decade of vision networks, on this machine.

The study this project follows found that from AlexNet (2012) on, the energy of one inference kept
rising while the accuracy gained slowed, ShuffleNetV2 (2018) being the exception. ``greenserve zoo``
measures it here: each catalogued network (:mod:`trainer.zoo_catalog`), with random weights, at a
few batch sizes, timed and metered by :func:`energy.profile.profile_batches` — the core the load
generator's model profile uses, so the figures are comparable — and the verdicts are computed from
the resulting table alone (:mod:`trainer.zoo_report`).

A study is data plus a pure function (docs/zoo.md): :func:`plan` and :func:`estimate` turn
:class:`ZooSettings` into the cells to measure and a time estimate without running anything;
:func:`run_zoo` measures each (model, batch size) cell not yet in ``zoo_measurements.csv`` and
appends its row as soon as it is measured, so a killed study resumes where it stopped.

Two things keep the full run inside its time: every cell but a model's smallest batch size is
predicted from the sizes measured before it (the per-image latency of the largest one × the batch
size) and skipped, with the prediction in the table, when warm-up plus timed batches would take
longer than ``size_budget_s``; and before anything runs, the whole study is estimated from each
model's GFLOPS, so that the user sees what the run will cost.
"""

from __future__ import annotations

import csv
import gc
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import energy
from energy.profile import BatchProfileError, check_batch_sizes
from studies.kit.files import ResumableTable, write_csv_atomic
from trainer.errors import TrainerError, check_energy_settings
from trainer.zoo_catalog import CATALOGUE, QUICK_MODELS, ZooModel, lookup
from trainer.zoo_report import (
    DONE_STATUSES,
    MEASUREMENTS_CSV,
    STATUS_FAILED,
    STATUS_MEASURED,
    STATUS_OUT_OF_MEMORY,
    STATUS_OVER_BUDGET,
    WEIGHTS,
    ZOO_COLUMNS,
    read_zoo_table,
    zoo_report,
)

if TYPE_CHECKING:
    import torch

    from energy.profile import ProfileRun
    from trainer.training import StudyEnergy

logger = logging.getLogger(__name__)

SETTINGS_JSON = "zoo_settings.json"

DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 16, 32, 64, 128)
#: One untimed batch per size: it allocates the activations and lets oneDNN / cuDNN pick kernels.
DEFAULT_WARMUP = 1
DEFAULT_REPEATS = 3
#: Each size is timed for at least this long: NVML's counter refreshes only every ~10-100 ms.
DEFAULT_MIN_TIME_S = 1.0
#: Largest predicted time (warm-up + timed batches) of one batch size. With it the full default
#: catalogue takes about 20 minutes on two CPU cores with one torch thread (docs/zoo.md), and a
#: model's sizes together cost at most about twice this (each size costs ~2× the one before).
DEFAULT_SIZE_BUDGET_S = 60.0

#: What ``quick`` measures when not told otherwise: a smoke test of the pipeline in seconds.
QUICK_BATCH_SIZES: tuple[int, ...] = (1, 2)
QUICK_RESOLUTION = 64
QUICK_WARMUP = 0
QUICK_REPEATS = 1
QUICK_MIN_TIME_S = 0.0

#: The time estimate's machine model: a batch of b images takes ``overhead + b × GFLOPS / rate``.
#: Measured on the development VM (2 vCPUs, AMD EPYC, torch 2.14, 1 thread) in the full default
#: run: effective rates of 8 (EfficientNet-B0) to 37 GFLOP/s (ViT-B/16), median 16, the large
#: networks that take most of the time 25-35; 20 predicts best which cells the budget skips. The
#: ~5 ms overhead is what the small networks (ShuffleNetV2, MobileNetV3) spend in per-layer
#: dispatch at batch 1. The CUDA figures are deliberately rough: there ``min_time_s`` dominates.
CPU_GFLOPS_PER_S_PER_THREAD = 20.0
CPU_BATCH_OVERHEAD_S = 0.005
CUDA_GFLOPS_PER_S = 5000.0
CUDA_BATCH_OVERHEAD_S = 0.003
#: Building a model with random weights (initialising its parameters), per million parameters.
BUILD_S_PER_MPARAM = 0.01
#: Importing torch and torchvision, starting the meter, writing the report.
STARTUP_S = 15.0

SAMPLER_PERIOD_S = 0.02
#: How long idle power is measured before the first cell (sensor sources only; 0 for estimate).
IDLE_S = 1.0

# Bump when the meaning of the table's columns changes, so old tables are not resumed into.
_TABLE_VERSION = 1

ALLOCATOR_MODES = ("reuse", "system")


@dataclass(frozen=True)
class ZooSettings:
    """What the zoo study measures. Validated on construction: a bad value is a TrainerError.

    None means "the mode's default": the whole catalogue, batch sizes 1, 16, 32, 64, 128, each
    model's own resolution, 1 warm-up batch, 3 timed batches and at least 1 s per size; with
    ``quick`` the three :data:`~trainer.zoo_catalog.QUICK_MODELS`, batch sizes 1 and 2, 64×64
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

    models: tuple[str, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    resolution: int | None = None
    device: str = "cpu"
    torch_threads: int = 1
    energy_source: str = "auto"
    watts_per_core: float | None = None
    warmup: int | None = None
    repeats: int | None = None
    min_time_s: float | None = None
    size_budget_s: float = DEFAULT_SIZE_BUDGET_S
    allocator: str = "reuse"
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        for name in ("models", "batch_sizes"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise TrainerError(f"{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.models is not None:
            lookup(self.models)  # unknown names → TrainerError with the close matches
        if self.batch_sizes is not None:
            try:
                check_batch_sizes(self.batch_sizes)
            except BatchProfileError as exc:
                raise TrainerError(str(exc)) from None
        for name in ("resolution", "torch_threads", "warmup", "repeats", "seed"):
            value = getattr(self, name)
            if value is None:
                continue
            low = 0 if name in ("warmup", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TrainerError(f"{name} must be an integer ≥ {low}, got {value!r}")
        if self.min_time_s is not None and not (math.isfinite(self.min_time_s) and self.min_time_s >= 0):
            raise TrainerError(f"min_time_s must be a finite number ≥ 0, got {self.min_time_s!r}")
        if math.isnan(self.size_budget_s) or self.size_budget_s <= 0:
            raise TrainerError(f"size_budget_s must be > 0 (inf: no budget), got {self.size_budget_s!r}")
        if not self.device:
            raise TrainerError("device must not be empty")
        check_energy_settings(self.energy_source, self.watts_per_core)
        if self.allocator not in ALLOCATOR_MODES:
            raise TrainerError(
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


# ---------------------------------------------------------------------------------------------
# Planning and estimating (pure)
# ---------------------------------------------------------------------------------------------


def predicted_size_s(batch_s: float, *, warmup: int, repeats: int, min_time_s: float) -> float:
    """Time :func:`~energy.profile.profile_batches` spends on one batch size whose batch takes
    ``batch_s``: the warm-up batches, then at least ``repeats`` batches and at least ``min_time_s``."""
    return warmup * batch_s + max(repeats * batch_s, min_time_s)


def over_budget_reason(predicted_s: float, budget_s: float, basis: str) -> str:
    """The note of a cell skipped by the time budget (``basis`` says what the prediction rests on)."""
    return f"over the time budget: predicted {predicted_s:.1f} s > {budget_s:g} s per size ({basis})"


@dataclass(frozen=True)
class PlannedCell:
    """One (model, batch size) cell of the estimate: its predicted seconds and whether it runs."""

    model: str
    batch_size: int
    predicted_s: float
    runs: bool


@dataclass(frozen=True)
class Estimate:
    """The study's time estimate, from each model's GFLOPS (:func:`estimate`)."""

    cells: tuple[PlannedCell, ...]
    build_s: float
    total_s: float

    def skipped(self) -> list[PlannedCell]:
        return [c for c in self.cells if not c.runs]


def nominal_batch_s(entry: ZooModel, batch_size: int, s: ResolvedSettings) -> float:
    """A batch's time from the model's GFLOPS and the device's nominal rate (the estimate's model)."""
    if s.device.startswith("cuda"):
        rate, overhead = CUDA_GFLOPS_PER_S, CUDA_BATCH_OVERHEAD_S
    else:
        rate, overhead = CPU_GFLOPS_PER_S_PER_THREAD * s.torch_threads, CPU_BATCH_OVERHEAD_S
    return overhead + batch_size * entry.gflops_at(s.resolution_of(entry)) / rate


def estimate(
    settings: ZooSettings | ResolvedSettings, done: Mapping[tuple[str, int], Any] | None = None
) -> Estimate:
    """Predict the study's wall time from each model's GFLOPS, applying the same budget rule as the
    run: a model's smallest size always runs; each larger one runs if its predicted time fits
    ``size_budget_s``, and once one does not, the larger ones do not either. Cells in ``done``
    (already in the table) cost nothing. A nominal figure, not a promise: it assumes a fixed
    GFLOP/s rate per thread, which small networks do not reach (docs/zoo.md, *Time*)."""
    s = settings.resolved() if isinstance(settings, ZooSettings) else settings
    done = done or {}
    cells: list[PlannedCell] = []
    build_s = 0.0
    for entry in s.models:
        todo = [b for b in s.batch_sizes if (entry.name, b) not in done]
        if todo:
            build_s += BUILD_S_PER_MPARAM * entry.params / 1e6
        fits = True
        for position, size in enumerate(s.batch_sizes):
            predicted = predicted_size_s(
                nominal_batch_s(entry, size, s), warmup=s.warmup, repeats=s.repeats, min_time_s=s.min_time_s
            )
            fits = fits and (position == 0 or predicted <= s.size_budget_s)
            if (entry.name, size) not in done:
                cells.append(PlannedCell(entry.name, size, predicted, fits))
    run_s = sum(c.predicted_s for c in cells if c.runs)
    return Estimate(tuple(cells), build_s, STARTUP_S + build_s + run_s)


def format_estimate(est: Estimate) -> str:
    """One line: the estimated total and what the budget will skip."""
    runs = sum(c.runs for c in est.cells)
    skipped = len(est.cells) - runs
    minutes = est.total_s / 60
    text = f"estimated time ≈ {minutes:.1f} min for {runs} cells (model × batch size) from the models' GFLOPS"
    if skipped:
        text += f"; {skipped} cells predicted over the time budget"
    return text


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


@dataclass
class _Table:
    """What an existing output directory already holds (read before anything is written)."""

    file: ResumableTable
    rows: dict[tuple[str, int], dict[str, Any]]

    @property
    def done(self) -> dict[tuple[str, int], dict[str, Any]]:
        """Cells that a rerun does not measure again: measured, out of memory, or failed. A cell
        skipped by the time budget is decided again, since the budget may have changed."""
        return {k: r for k, r in self.rows.items() if r["status"] in DONE_STATUSES}

    @property
    def sources(self) -> set[str]:
        return {str(r["energy_source"]) for r in self.rows.values() if r["energy_source"]}


def _inspect_out_dir(out_dir: Path, fingerprint: dict[str, Any]) -> _Table:
    """Read what a previous run left in ``out_dir``; refuse a table made with other settings."""
    file = ResumableTable.open(out_dir, MEASUREMENTS_CSV, SETTINGS_JSON, fingerprint, study="zoo study")
    rows = read_zoo_table(file.path, text=file.text) if file.text else []
    return _Table(file, {(r["model"], r["batch_size"]): r for r in rows})


def _check_device(device: str) -> None:
    import torch

    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError, ValueError) as exc:  # AssertionError: a CUDA-less build
        raise TrainerError(f"device {device!r} is not usable here: {exc}") from None


def _open_energy(s: ResolvedSettings) -> StudyEnergy:
    """The study's meter, read by one sampler (started once) whose curve times every cell."""
    from trainer.training import StudyEnergy  # imports torch: only when a study runs

    return StudyEnergy.open(
        s.energy_source, device=s.device, watts_per_core=s.watts_per_core, period_s=SAMPLER_PERIOD_S
    )


@contextmanager
def _progress_bar(enabled: bool, total: int, completed: int) -> Iterator[Callable[[str, bool], None]]:
    """A rich progress bar over the cells; yields ``step(description, advance)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("zoo"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        disable=not enabled,
    )
    with progress:
        task = progress.add_task("", total=total, completed=completed)

        def step(description: str, advance: bool) -> None:
            progress.update(task, description=description, advance=1 if advance else 0)

        yield step


def _row(
    entry: ZooModel,
    s: ResolvedSettings,
    size: int,
    status: str,
    source: str,
    *,
    reason: str = "",
    measured: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of ``zoo_measurements.csv`` (the columns of :data:`~trainer.zoo_report.ZOO_COLUMNS`)."""
    return {
        "model": entry.name,
        "year": entry.year,
        "acc1_pct": entry.acc1_pct,
        "gflops": entry.gflops,
        "params": entry.params,
        "acc_resolution": entry.resolution,
        "acc_weights": entry.weights,
        "resolution": s.resolution_of(entry),
        "device": s.device,
        "threads": s.torch_threads,
        "batch_size": size,
        "status": status,
        "reason": reason,
        "energy_source": source,
        "weights": WEIGHTS,
        **(measured or {}),
    }


def _measured_columns(run: ProfileRun, idle_w: float, seconds: float) -> dict[str, Any]:
    (point,) = run.points
    # Net of idle: the device's idle power over the batch's share of the timed loop's wall time.
    net_j_per_batch = point.energy_j_per_batch - idle_w * point.batch_size / point.images_per_s
    return {
        "batches": point.batches,
        "latency_mean_ms": point.latency_mean_ms,
        "latency_p50_ms": point.latency_p50_ms,
        "latency_p99_ms": point.latency_p99_ms,
        "latency_std_ms": point.latency_std_ms,
        "energy_j_per_batch": point.energy_j_per_batch,
        "energy_j_per_image": point.energy_j_per_image,
        "energy_net_j_per_image": net_j_per_batch / point.batch_size,
        "idle_power_w": idle_w,
        "images_per_s": point.images_per_s,
        "seconds": seconds,
    }


class _Measurer:
    """Measures one model's cells in order of batch size, deciding each against the time budget."""

    def __init__(
        self,
        s: ResolvedSettings,
        sampler: energy.EnergySampler,
        idle_w: float,
        emit: Callable[[dict[str, Any]], None],
        step: Callable[[str, bool], None],
    ) -> None:
        self.s, self.sampler, self.idle_w, self.emit, self.step = s, sampler, idle_w, emit, step

    def model(self, entry: ZooModel, table: Mapping[tuple[str, int], Mapping[str, Any]]) -> None:
        """Measure ``entry``'s cells that are not in ``table`` (whose measured rows still serve
        as the basis of the predictions for larger sizes)."""
        import torch

        from energy.profile import cuda_synchronizer, is_out_of_memory, profile_batches

        s = self.s
        source = self.sampler.source
        todo = [b for b in s.batch_sizes if (entry.name, b) not in table]
        if not todo:
            return
        # (size, per-image latency in s) of the largest size measured so far: the predictions' basis.
        basis: tuple[int, float] | None = None
        model: torch.nn.Module | None = None
        resolution = s.resolution_of(entry)
        stop: tuple[str, str] | None = None  # (status, reason) for every remaining size
        for position, size in enumerate(s.batch_sizes):
            done_row = table.get((entry.name, size))
            if done_row is not None:  # measured by an earlier run: it still informs the larger sizes
                if done_row["status"] == STATUS_MEASURED:
                    basis = (size, done_row["latency_mean_ms"] / 1000 / size)
                elif done_row["status"] == STATUS_OUT_OF_MEMORY:
                    stop = (STATUS_OUT_OF_MEMORY, f"larger than {size}, which ran out of memory")
                else:
                    stop = (STATUS_FAILED, f"not run: batch {size} failed")
                continue
            self.step(f"{entry.name} b{size}", False)
            if stop is not None:
                self.emit(_row(entry, s, size, stop[0], source, reason=stop[1]))
                self.step(f"{entry.name} b{size}", True)
                continue
            if position > 0 and basis is not None:
                predicted = predicted_size_s(
                    basis[1] * size, warmup=s.warmup, repeats=s.repeats, min_time_s=s.min_time_s
                )
                if predicted > s.size_budget_s:
                    basis_text = f"from batch {basis[0]} at {basis[1] * 1000:.1f} ms/image"
                    reason = over_budget_reason(predicted, s.size_budget_s, basis_text)
                    self.emit(_row(entry, s, size, STATUS_OVER_BUDGET, source, reason=reason))
                    logger.info("%s batch %d skipped: %s", entry.name, size, reason)
                    self.step(f"{entry.name} b{size}", True)
                    # Larger sizes are predicted larger still; each gets its own prediction.
                    continue
            try:
                if model is None:
                    from trainer.zoo_catalog import build_model

                    torch.manual_seed(s.seed)
                    model = build_model(entry, resolution).to(s.device)
                # Seeded per size, so that a resumed study feeds a cell the same input as a fresh one.
                generator = torch.Generator().manual_seed(s.seed * 1000 + size)
                inputs = torch.randn(size, 3, resolution, resolution, generator=generator).to(s.device)

                def run_batch(
                    batch_size: int, net: torch.nn.Module = model, x: torch.Tensor = inputs
                ) -> None:
                    net(x)

                start = time.monotonic()
                with torch.inference_mode():
                    run = profile_batches(
                        run_batch,
                        [size],
                        warmup=s.warmup,
                        repeats=s.repeats,
                        sampler=self.sampler,
                        min_time_s=s.min_time_s,
                        synchronize=cuda_synchronizer(s.device),
                    )
                seconds = time.monotonic() - start
                del inputs
            except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
                if isinstance(exc, TrainerError):
                    raise
                # A network that cannot run at this size or resolution (an input smaller than
                # its pooling, a ViT at a size not divisible by its patch — torch._assert raises
                # AssertionError), or whose weights do not fit: recorded, not fatal.
                first_line = (str(exc).splitlines() or [""])[0][:200]
                if is_out_of_memory(exc):
                    status, reason = STATUS_OUT_OF_MEMORY, f"out of memory: {first_line}"
                    stop = (STATUS_OUT_OF_MEMORY, f"larger than {size}, which ran out of memory")
                else:
                    status, reason = STATUS_FAILED, f"failed: {type(exc).__name__}: {first_line}"
                    stop = (STATUS_FAILED, f"not run: batch {size} failed")
                logger.warning("%s batch %d %s", entry.name, size, reason)
                self.emit(_row(entry, s, size, status, source, reason=reason))
                self.step(f"{entry.name} b{size}", True)
                continue
            if run.skipped:
                reason = run.skipped[0][1]
                self.emit(_row(entry, s, size, STATUS_OUT_OF_MEMORY, source, reason=reason))
                stop = (STATUS_OUT_OF_MEMORY, f"larger than {size}, which ran out of memory")
            else:
                row = _row(
                    entry,
                    s,
                    size,
                    STATUS_MEASURED,
                    source,
                    measured=_measured_columns(run, self.idle_w, seconds),
                )
                self.emit(row)
                basis = (size, row["latency_mean_ms"] / 1000 / size)
            self.step(f"{entry.name} b{size}", True)
        del model
        gc.collect()
        if s.device.startswith("cuda"):
            torch.cuda.empty_cache()


def run_zoo(settings: ZooSettings, out_dir: Path, *, progress: bool = True) -> Path:
    """Measure every (model, batch size) cell not yet in ``out_dir``'s table, then write the
    report (:func:`trainer.zoo_report.zoo_report`); return the table's path.

    Refused before anything is written (a TrainerError): bad settings (on construction), a table
    in ``out_dir`` made with other settings or another energy source, an unusable device or
    energy source. Each cell's row is appended and flushed as soon as it is measured, so a study
    killed at any point keeps its finished cells; running it again skips them. At the end the
    table is rewritten with one row per cell (a cell decided again — one over the time budget —
    replaces its earlier row). One meter and sampler serve the whole study: the idle power and
    every cell are read from the sampler's curve (:func:`energy.profile.profile_batches`).
    """
    s = settings.resolved()
    out_dir = Path(out_dir)
    table_csv = out_dir / MEASUREMENTS_CSV
    fingerprint = s.fingerprint()
    table = _inspect_out_dir(out_dir, fingerprint)
    done = table.done
    est = estimate(s, done)
    logger.info("zoo: %s (random weights)", format_estimate(est))

    import torch

    from energy.allocator import configure_allocator

    _check_device(s.device)
    meter = _open_energy(s)
    configure_allocator("reuse" if s.allocator == "reuse" else "system")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(s.torch_threads)
    started = time.monotonic()
    try:
        table.file.prepare(sources=table.sources, meter_source=meter.source, rows="cells")
        total = len(s.models) * len(s.batch_sizes)
        planned_done = sum((m.name, b) in done for m in s.models for b in s.batch_sizes)
        if planned_done:
            logger.info("resuming %s: %d of %d cells done", table_csv, planned_done, total)
        rows = dict(table.rows)
        with table_csv.open("a", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(ZOO_COLUMNS), lineterminator="\n")
            if table.file.complete_bytes == 0:
                writer.writeheader()
                f.flush()

            def emit(row: dict[str, Any]) -> None:
                writer.writerow({c: "" if row.get(c) is None else row[c] for c in ZOO_COLUMNS})
                # Flushed and synced per cell: a killed study loses at most the cell in progress.
                f.flush()
                os.fsync(f.fileno())
                rows[(row["model"], row["batch_size"])] = row

            meter.start()
            # The devices' idle power, once per study (0 for estimate, which is 0 when idle).
            idle_w = meter.measure_idle_w(IDLE_S)
            with _progress_bar(progress, total, planned_done) as step:
                measurer = _Measurer(s, meter.sampler, idle_w, emit, step)
                for entry in s.models:
                    measurer.model(entry, done)
    finally:
        meter.close()
        torch.set_num_threads(threads_before)
    # One row per cell, in the table's order: a re-decided cell replaces its earlier row.
    write_csv_atomic(table_csv, ZOO_COLUMNS, list(rows.values()))
    logger.info(
        "zoo: measured in %.1f min (estimate was %.1f min)",
        (time.monotonic() - started) / 60,
        est.total_s / 60,
    )
    zoo_report(table_csv, out_dir)
    return table_csv


__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_SIZE_BUDGET_S",
    "SETTINGS_JSON",
    "Estimate",
    "PlannedCell",
    "ResolvedSettings",
    "ZooSettings",
    "estimate",
    "format_estimate",
    "predicted_size_s",
    "run_zoo",
]
