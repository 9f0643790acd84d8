"""Running an ablation: train every design × repeat not yet in the table, one row appended per run.

:func:`run_ablation` checks everything that can be refused before it writes, says what it will do
and roughly how long it will take (:func:`studies.kit.progress.announce`), shows a progress bar,
and resumes a killed study from its table (:class:`studies.kit.files.ResumableTable`).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from studies.kit.files import ResumableTable
from studies.kit.progress import announce, progress_bar
from trainer.ablation.report import ablation_report
from trainer.ablation.settings import (
    QUICK_TEST_SAMPLES,
    QUICK_TRAIN_SAMPLES,
    AblationSettings,
    DesignRow,
    designs,
)
from trainer.ablation.table import ABLATION_COLUMNS, RUNS_CSV, SETTINGS_JSON, format_bool
from trainer.data import Dataset, load_dataset
from trainer.errors import TrainerError
from trainer.models import build_model
from trainer.training import StudyEnergy, train, warm_up

logger = logging.getLogger(__name__)

#: The study's name in messages (the refusal of a table made with other settings, the plan).
STUDY = "ablation"


@dataclass
class _Table:
    """What an existing output directory already holds (read before anything is written)."""

    file: ResumableTable
    done: set[tuple[str, int]]
    sources: set[str]


def _inspect_out_dir(out_dir: Path, fingerprint: dict[str, Any]) -> _Table:
    """Read what a previous run left in ``out_dir``; refuse a table made with other settings."""
    file = ResumableTable.open(out_dir, RUNS_CSV, SETTINGS_JSON, fingerprint, study="study")
    runs_csv = file.path
    reader = csv.DictReader(io.StringIO(file.text))
    if tuple(reader.fieldnames or ()) != ABLATION_COLUMNS and file.text:
        raise TrainerError(
            f"{runs_csv} has other columns than this version writes; use another output directory"
        )
    done: set[tuple[str, int]] = set()
    sources: set[str] = set()
    for line, row in enumerate(reader, start=2):
        try:
            done.add((row["design_id"], int(row["repeat"])))
        except (TypeError, ValueError):
            raise TrainerError(
                f"{runs_csv}, line {line}: not a run ({row!r}); fix or move the table"
            ) from None
        sources.add(row["energy_source"])
    return _Table(file, done, sources)


def _load_data(s: AblationSettings) -> Dataset:
    if not s.quick:
        return load_dataset(s.dataset, data_dir=s.data_dir, seed=s.seed, download=s.download)
    total = QUICK_TRAIN_SAMPLES + QUICK_TEST_SAMPLES  # a seed-chosen subsample, split 256 / 128
    return load_dataset(
        s.dataset,
        data_dir=s.data_dir,
        seed=s.seed,
        download=s.download,
        limit=total,
        test_fraction=QUICK_TEST_SAMPLES / total,
    )


def _build(s: AblationSettings, data: Dataset, row: DesignRow) -> torch.nn.Module:
    return build_model(
        s.model,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        conv_layers=row["conv_layers"],
        linear_layers=row["linear_layers"],
        activation=row["activation"],
    )


def plan_text(s: AblationSettings, runs: int) -> str:
    """What the study runs, in words: ``8 designs × 5 repeats = 40 runs of 8 epochs on digits``."""
    n_designs = len(s.conv_levels) * len(s.linear_levels) * len(s.activation_levels)
    text = f"{n_designs} designs × {s.repeats} repeats = {runs} runs of {s.epochs} epoch(s) on {s.dataset}"
    return text + (" (quick: a smoke test, not a result)" if s.quick else " (--quick for a smoke test)")


def run_ablation(settings: AblationSettings, out_dir: Path, *, progress: bool = True) -> Path:
    """Run every design × repeat not yet in ``out_dir``'s table, then write the report; return the table.

    Everything that can be refused is checked before anything is written: the settings (on
    construction), an existing table's fingerprint and energy source, the data set and every
    design's model. Each finished run is appended to ``ablation_runs.csv`` and flushed to disk at
    once, so a study killed at any point keeps its finished runs; running it again with the same
    settings skips them. One energy meter serves the whole study, read throughout by one sampler
    started once (:class:`~trainer.training.StudyEnergy`), and is closed at the end. After the
    warm-up, the plan and an estimate of its length are logged.
    """
    s = settings.resolved()
    out_dir = Path(out_dir)
    runs_csv = out_dir / RUNS_CSV
    table = _inspect_out_dir(out_dir, s.fingerprint())
    plan = designs(s)
    todo = [row for row in plan if (row["design_id"], row["repeat"]) not in table.done]
    data = _load_data(s)
    try:
        torch.zeros(1, device=s.device)
    except (RuntimeError, AssertionError) as exc:  # torch raises AssertionError for CUDA builds it lacks
        raise TrainerError(f"device {s.device!r} is not usable here: {exc}") from None
    params: dict[str, int] = {}
    for row in plan:  # also proves every design builds before any result is written
        if row["design_id"] not in params:
            params[row["design_id"]] = sum(p.numel() for p in _build(s, data, row).parameters())

    meter = StudyEnergy.open(s.energy_source, device=s.device, watts_per_core=s.watts_per_core)
    torch_threads = torch.get_num_threads()
    if s.torch_threads is not None:
        torch.set_num_threads(s.torch_threads)
    try:
        table.file.prepare(sources=table.sources, meter_source=meter.source, rows="runs")
        with runs_csv.open("a", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(ABLATION_COLUMNS), lineterminator="\n")
            if table.file.complete_bytes == 0:
                writer.writeheader()
                f.flush()
            idle_w, epoch_s = 0.0, None
            if todo:
                meter.start()
                config = s.train_config(seed=todo[0]["seed"])
                epoch_s = warm_up(_build(s, data, todo[0]), data, config, meter=meter, train_fn=train)
                # Idle power once per study, not before each run (sensor sources; 0 for estimate).
                idle_w = meter.measure_idle_w(s.train_config(seed=0).idle_s)
            estimate = None if epoch_s is None else epoch_s * s.epochs * len(todo)
            announce(
                STUDY, plan_text(s, len(plan)), units=len(plan), done=len(table.done), estimate_s=estimate
            )
            with progress_bar(STUDY, len(plan), completed=len(plan) - len(todo), enabled=progress) as step:
                for row in todo:
                    step(row["design_id"], False)
                    torch.manual_seed(row["seed"])  # the initial weights of repeat r, same for every design
                    result = train(
                        _build(s, data, row),
                        data,
                        s.train_config(seed=row["seed"]),
                        meter=meter,
                        idle_power_w=idle_w,
                    )
                    writer.writerow(
                        {
                            "dataset": s.dataset,
                            "model": s.model,
                            **row,
                            "activation": format_bool(row["activation"]),
                            "epochs": result.epochs_run,
                            "params": params[row["design_id"]],
                            "accuracy": result.accuracy,
                            "energy_j": result.energy_j,
                            "energy_net_j": result.energy_net_j,
                            "energy_source": result.energy_source,
                            "seconds": result.seconds,
                        }
                    )
                    # Flushed and synced per run: a killed study loses at most the run in progress.
                    f.flush()
                    os.fsync(f.fileno())
                    logger.info(
                        "run %d/%d %s repeat %d: accuracy %.4f, %.2f J (%s), %.2f s",
                        row["run_order"] + 1,
                        len(plan),
                        row["design_id"],
                        row["repeat"],
                        result.accuracy,
                        result.energy_j,
                        meter.describe,
                        result.seconds,
                    )
                    step(row["design_id"], True)
    finally:
        meter.close()
        torch.set_num_threads(torch_threads)
    ablation_report(runs_csv, out_dir)
    return runs_csv
