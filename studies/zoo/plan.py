"""The zoo study's plan, before anything runs: which (model, batch size) cells it measures, which the
time budget will skip, how long it will take (:func:`estimate`), and the line that says so
(:func:`announce_plan`). Pure: nothing here imports torch or measures anything.

Why the estimate comes from each network's GFLOPS rather than from the budget: the per-size budget
(60 s) × the 90 cells of the default run bounds it at 90 minutes, five times what it takes, since
most cells take a second or two. The GFLOPS model below, with the run's own budget rule, predicted
14.6 minutes for the default run on the development VM, which took 16 min 18 s (docs/zoo.md, *Time*).
While the run goes, the progress bar's remaining time is measured from the cells done so far.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studies.kit.progress import announce
from studies.zoo.catalog import ZooModel
from studies.zoo.settings import ResolvedSettings, ZooSettings

logger = logging.getLogger(__name__)

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

#: What the announcement suggests instead of a long run.
SMOKE_RUN = "greenserve zoo --quick --out /tmp/zoo-smoke"
#: Runs predicted longer than this get the suggestion.
LONG_RUN_S = 60.0


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


def announce_plan(s: ResolvedSettings, est: Estimate, *, done: int, out_dir: Path, quick: bool) -> list[str]:
    """Log (and return) what the run will do: networks × batch sizes = cells, where to, how many the
    budget will skip, how many are done already (a resumed run) and about how long the rest takes
    (``est``, made without the done cells); for a long run that is not ``quick``, a second line: how
    to run a smoke run instead, and that an interrupted run resumes."""
    total = len(s.models) * len(s.batch_sizes)
    runs = sum(c.runs for c in est.cells)
    skipped = len(est.cells) - runs
    over = f", {skipped} predicted over the {s.size_budget_s:g} s per-size budget" if skipped else ""
    what = (
        f"{len(s.models)} networks × {len(s.batch_sizes)} batch sizes = {total} cells into {out_dir} "
        f"({runs} to measure{over})"
    )
    lines = [announce("zoo", what, units=total, done=done, estimate_s=est.total_s)]
    if not quick and runs and est.total_s > LONG_RUN_S:
        hint = (
            f"zoo: for a smoke run in seconds instead: {SMOKE_RUN}; each cell's prediction: "
            "greenserve zoo --dry-run; interrupted (Ctrl-C), the same command resumes"
        )
        logger.info("%s", hint)
        lines.append(hint)
    return lines


__all__ = [
    "Estimate",
    "PlannedCell",
    "announce_plan",
    "estimate",
    "format_estimate",
    "over_budget_reason",
    "predicted_size_s",
]
