"""The layer ablation: a full factorial over a simple CNN's layers, with the energy of every run.

A study is data plus a pure function (docs/ablation.md). :func:`designs` turns
:class:`AblationSettings` into the table of runs: every combination of the conv-layer, linear-layer
and activation levels, times ``repeats``. :func:`run_ablation` trains each run once and appends its
result to ``ablation_runs.csv`` as soon as it finishes, then draws the report
(:func:`trainer.report.ablation_report`) from that table alone.

Run order is randomised in blocks: each repeat is one random permutation of the designs, drawn
from ``seed``. Drift over the study (thermal throttling, other load on the machine, a warming page
cache) then falls on every design alike instead of on whichever designs happened to run last,
and a study stopped after r complete blocks still holds r runs of every design. Repeat r of every
design uses the same seed (initial weights and batch order), so designs are compared on common
random numbers.

A killed study is resumed by running it again with the same settings: runs already in the table are
skipped. The settings are fingerprinted in ``ablation_settings.json`` next to the table, and a
rerun with different settings is refused instead of mixing two studies in one table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import logging
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from studies.kit.files import ResumableTable
from trainer.data import Dataset, dataset_names, load_dataset
from trainer.errors import TrainerError, check_energy_settings
from trainer.models import build_model, model_names
from trainer.report import (
    ABLATION_COLUMNS,
    RUNS_CSV,
    ablation_report,
    format_bool,
)
from trainer.training import StudyEnergy, TrainConfig, train

logger = logging.getLogger(__name__)

SETTINGS_JSON = "ablation_settings.json"

#: What ``quick=True`` runs: a smoke test of the whole pipeline in seconds, not a result.
QUICK_EPOCHS = 1
QUICK_MAX_REPEATS = 2
QUICK_TRAIN_SAMPLES = 256
QUICK_TEST_SAMPLES = 128

#: The warm-up run before the first recorded one (discarded): the first training in a process pays
#: for thread-pool start-up and lazy initialisation, ~1 s here, which would land on one design.
WARMUP_SAMPLES = 256

# Bump when the meaning of a table's columns changes, so old tables are not resumed into.
_TABLE_VERSION = 1


@dataclass(frozen=True)
class AblationSettings:
    """What an ablation study runs. Validated on construction: a bad value is a TrainerError.

    ``download`` lets torchvision's datasets fetch missing files into ``data_dir`` (never by default).
    ``threads`` sets torch's intra-op threads for the study and is restored afterwards (None: torch's
    default, one per core). It defaults to 1: these models are too small to gain from a second
    thread (0.53 vs 0.48 s per epoch here), the idle thread's spinning doubles the CPU-time energy
    estimate, and on a machine shared with other work spinning threads slow a run down by up to 100×.

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
    threads: int | None = 1
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
        for name in ("repeats", "epochs", "batch_size", "threads"):
            value = getattr(self, name)
            if name == "threads" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainerError(f"{name} must be an integer ≥ 1, got {value!r}")
        if self.dataset not in dataset_names():
            raise TrainerError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(dataset_names())}"
            )
        if self.model not in model_names():
            raise TrainerError(f"unknown model {self.model!r}; choose one of {', '.join(model_names())}")
        check_energy_settings(self.energy_source, self.watts_per_core)
        self.train_config(seed=self.seed)  # TrainConfig's own checks (lr > 0, ...)

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
        """Everything that shapes the table's numbers, as JSON-ready data (the resume check)."""
        data = dataclasses.asdict(self.resolved())
        del data["download"]  # how the files arrive does not change them
        data["data_dir"] = None if self.data_dir is None else str(self.data_dir)
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
    design once, in an order shuffled by ``settings.seed`` (see the module docstring).
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


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


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


def _open_energy(s: AblationSettings) -> StudyEnergy:
    return StudyEnergy.open(s.energy_source, device=s.device, watts_per_core=s.watts_per_core)


def _warm_up(s: AblationSettings, data: Dataset, row: DesignRow, meter: StudyEnergy) -> None:
    small = dataclasses.replace(
        data, x_train=data.x_train[:WARMUP_SAMPLES], y_train=data.y_train[:WARMUP_SAMPLES]
    )
    torch.manual_seed(row["seed"])
    config = dataclasses.replace(s.train_config(seed=row["seed"]), epochs=1, idle_s=0.0)
    train(_build(s, data, row), small, config, meter=meter)


@contextmanager
def _progress_bar(enabled: bool, total: int, completed: int) -> Iterator[tuple[Progress, TaskID]]:
    progress = Progress(
        TextColumn("ablation"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        disable=not enabled,
    )
    with progress:
        yield progress, progress.add_task("", total=total, completed=completed)


def run_ablation(settings: AblationSettings, out_dir: Path, *, progress: bool = True) -> Path:
    """Run every design × repeat not yet in ``out_dir``'s table, then write the report; return the table.

    Everything that can be refused is checked before anything is written: the settings (on
    construction), an existing table's fingerprint and energy source, the data set and every
    design's model. Each finished run is appended to ``ablation_runs.csv`` and flushed to disk at
    once, so a study killed at any point keeps its finished runs; running it again with the same
    settings skips them. One energy meter serves the whole study, read throughout by one sampler
    started once (:class:`~trainer.training.StudyEnergy`), and is closed at the end.
    """
    s = settings.resolved()
    out_dir = Path(out_dir)
    runs_csv = out_dir / RUNS_CSV
    fingerprint = s.fingerprint()
    table = _inspect_out_dir(out_dir, fingerprint)
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

    meter = _open_energy(s)
    torch_threads = torch.get_num_threads()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    try:
        table.file.prepare(sources=table.sources, meter_source=meter.source, rows="runs")
        if table.done:
            logger.info(
                "resuming %s: %d of %d runs done, %d to go", runs_csv, len(table.done), len(plan), len(todo)
            )
        with runs_csv.open("a", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(ABLATION_COLUMNS), lineterminator="\n")
            if table.file.complete_bytes == 0:
                writer.writeheader()
                f.flush()
            idle_w = 0.0
            if todo:
                meter.start()
                _warm_up(s, data, todo[0], meter)
                # Idle power once per study, not before each run (sensor sources; 0 for estimate).
                idle_w = meter.measure_idle_w(s.train_config(seed=0).idle_s)
            with _progress_bar(progress, len(plan), len(plan) - len(todo)) as (bar, task):
                for row in todo:
                    bar.update(task, description=row["design_id"])
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
                    bar.advance(task)
    finally:
        meter.close()
        torch.set_num_threads(torch_threads)
    ablation_report(runs_csv, out_dir)
    return runs_csv


__all__ = [
    "SETTINGS_JSON",
    "AblationSettings",
    "DesignRow",
    "design_id",
    "designs",
    "run_ablation",
    "run_seed",
]
