"""The zoo study's run: energy per image and latency of each catalogued network, on this machine.

The study this project follows found that from AlexNet (2012) on, the energy of one inference kept
rising while the accuracy gained slowed, ShuffleNetV2 (2018) being the exception. :func:`run_zoo`
measures it here: each catalogued network (:mod:`studies.zoo.catalog`), with random weights, at a
few batch sizes, timed and metered by :func:`energy.profile.profile_batches` — the core the load
generator's model profile uses, so the figures are comparable — and the verdicts are computed from
the resulting table alone (:mod:`studies.zoo.report`).

It first says what it will do and about how long it will take (:func:`studies.zoo.plan.announce_plan`),
then measures each (model, batch size) cell not yet in ``zoo_measurements.csv`` under a progress
bar with the remaining time, appending each cell's row as soon as it is decided, so a killed study
resumes where it stopped. Every cell but a model's smallest batch size is predicted from the sizes
measured before it (the per-image latency of the largest one × the batch size) and skipped, with
the prediction in the table, when warm-up plus timed batches would take longer than ``size_budget_s``.
"""

from __future__ import annotations

import csv
import gc
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import energy
from studies.kit.errors import LabError
from studies.kit.files import ResumableTable, write_csv_atomic
from studies.kit.progress import progress_bar
from studies.zoo.catalog import ZooModel
from studies.zoo.errors import ZooError
from studies.zoo.plan import announce_plan, estimate, over_budget_reason, predicted_size_s
from studies.zoo.report import zoo_report
from studies.zoo.settings import ResolvedSettings, ZooSettings
from studies.zoo.table import (
    DONE_STATUSES,
    MEASUREMENTS_CSV,
    SETTINGS_JSON,
    STATUS_FAILED,
    STATUS_MEASURED,
    STATUS_OUT_OF_MEMORY,
    STATUS_OVER_BUDGET,
    WEIGHTS,
    ZOO_COLUMNS,
    read_zoo_table,
)

if TYPE_CHECKING:
    import torch

    from energy.profile import ProfileRun
    from trainer.training import StudyEnergy

logger = logging.getLogger(__name__)

SAMPLER_PERIOD_S = 0.02
#: How long idle power is measured before the first cell (sensor sources only; 0 for estimate).
IDLE_S = 1.0


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
        raise ZooError(f"device {device!r} is not usable here: {exc}") from None


def _open_energy(s: ResolvedSettings) -> StudyEnergy:
    """The study's meter, read by one sampler (started once) whose curve times every cell."""
    from trainer.training import StudyEnergy  # imports torch: only when a study runs

    return StudyEnergy.open(
        s.energy_source, device=s.device, watts_per_core=s.watts_per_core, period_s=SAMPLER_PERIOD_S
    )


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
    """One row of ``zoo_measurements.csv`` (the columns of :data:`~studies.zoo.table.ZOO_COLUMNS`)."""
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
                    from studies.zoo.catalog import build_model

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
                if isinstance(exc, LabError):  # a user error (ours or the kit's), not a failed cell
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
    report (:func:`studies.zoo.report.zoo_report`); return the table's path.

    Refused before anything is written (a ZooError): bad settings (on construction), a table
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
    total = len(s.models) * len(s.batch_sizes)
    planned_done = sum((m.name, b) in done for m in s.models for b in s.batch_sizes)
    announce_plan(s, est, done=planned_done, out_dir=out_dir, quick=settings.quick)

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
            with progress_bar("zoo", total, completed=planned_done, enabled=progress) as step:
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


__all__ = ["run_zoo"]
