"""Running an HPO study: every strategy × repeat is one Optuna study whose trials train the model
with the hyperparameters the strategy suggests, each trial's energy read from one sampler for the
whole run (:class:`~trainer.training.StudyEnergy`).

:func:`run_hpo` checks what can be refused before it writes, says what it will do and roughly how
long it will take (:func:`studies.kit.progress.announce`), shows a progress bar, resumes from the
studies' storage, and writes the trials table and the report (:mod:`trainer.hpo.report`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from energy.profile import source_idle_included
from studies.kit.files import write_text_atomic
from studies.kit.progress import announce, progress_bar
from trainer.data import Dataset, load_dataset
from trainer.errors import TrainerError
from trainer.hpo.report import write_hpo_report
from trainer.hpo.search import finished_trials, load_study, open_storage
from trainer.hpo.settings import PARAM_RANGES, HpoSettings
from trainer.hpo.summary import best_so_far, resolve_target
from trainer.hpo.table import (
    SETTINGS_JSON,
    TRIAL_KEY_COLUMNS,
    TRIAL_RESULT_COLUMNS,
    TRIALS_CSV,
    format_flag,
    write_table,
)
from trainer.models import build_model
from trainer.training import StudyEnergy, TrainConfig, train, warm_up

logger = logging.getLogger(__name__)

#: The study's name in its plan.
STUDY = "hpo"


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
        storage = open_storage(prepared.storage_url)
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

    target = resolve_target(rows, settings.target_accuracy, settings.target_fraction)
    for row in rows:
        row["target_accuracy"] = target
    trials_csv = out_dir / TRIALS_CSV
    columns = [*TRIAL_KEY_COLUMNS, *settings.param_names, *TRIAL_RESULT_COLUMNS]
    write_table(trials_csv, columns, rows)
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
    write_text_atomic(out_dir / SETTINGS_JSON, json.dumps(provenance, indent=2, default=str) + "\n")
    write_hpo_report(trials_csv, out_dir)
    logger.info("HPO: %d trials in %s (%.1f s)", len(rows), trials_csv, wall_s)
    return trials_csv


def plan_text(settings: HpoSettings, studies: int) -> str:
    """What the study runs, in words: ``5 strategies × 3 repeats = 15 studies × 30 rounds = 450
    trials of 5 epochs on digits``."""
    s = settings
    text = (
        f"{len(s.strategies)} strategies × {s.n_repeats} repeats = {studies} studies × {s.n_rounds} rounds "
        f"= {studies * s.n_rounds} trials of {s.n_epochs} epoch(s) on {s.dataset}"
    )
    return text + (" (quick: a smoke test, not a result)" if s.quick else " (--quick for a smoke test)")


def _warm_up(settings: HpoSettings, prepared: _Prepared) -> float:
    """The study's warm-up (not recorded; :func:`trainer.training.warm_up`): seconds per epoch."""
    data = prepared.data
    model = build_model(
        settings.model, input_shape=data.input_shape, num_classes=data.num_classes, **settings.model_params
    )
    config = TrainConfig(batch_size=settings.batch_size, seed=settings.seed, device=settings.device)
    return warm_up(model, data, config, meter=prepared.meter, train_fn=train)


def _run_studies(
    settings: HpoSettings, prepared: _Prepared, storage: optuna.storages.BaseStorage, *, progress: bool
) -> list[dict[str, Any]]:
    rounds = settings.n_rounds
    studies = {
        (strategy, repeat): load_study(settings, strategy, repeat, storage)
        for strategy in settings.strategies
        for repeat in range(settings.n_repeats)
    }
    done = {key: min(rounds, len(finished_trials(study))) for key, study in studies.items()}
    total, finished = rounds * len(studies), sum(done.values())
    # The warm-up pays the process's start-up cost before the first trial, and gives the pace.
    epoch_s = _warm_up(settings, prepared) if finished < total else None
    estimate = None if epoch_s is None else epoch_s * settings.n_epochs * (total - finished)
    announce(STUDY, plan_text(settings, len(studies)), units=total, done=finished, estimate_s=estimate)
    marks = _Marks(prepared.meter)
    with progress_bar("HPO trials", total, completed=finished, enabled=progress) as step:
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
            label = f"HPO {strategy} r{repeat}"
            step(label, False)
            objective = _objective(settings, strategy, repeat, prepared, marks)

            def advance(_study: optuna.Study, _trial: optuna.trial.FrozenTrial, label: str = label) -> None:
                step(label, True)

            while missing > 0:
                marks.reset()
                study.optimize(objective, n_trials=missing, callbacks=[advance])
                now = len(finished_trials(study))
                if now == rounds - missing:  # every trial failed without raising: do not loop forever
                    raise TrainerError(
                        f"study {study.study_name}: trials fail without finishing; see the log"
                    )
                missing = rounds - now
    rows: list[dict[str, Any]] = []
    for (strategy, repeat), study in studies.items():
        trials = finished_trials(study)[:rounds]
        rows.extend(_trial_rows(settings, strategy, repeat, study.study_name, trials))
    return rows


def _trial_rows(
    settings: HpoSettings, strategy: str, repeat: int, name: str, trials: Sequence[optuna.trial.FrozenTrial]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i, t in enumerate(trials, start=1):
        attrs = t.user_attrs
        source = str(attrs.get("energy_source", ""))
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
                "energy_source": source,
                "seconds": float(attrs.get("seconds", math.nan)),
                "epochs_run": int(attrs.get("epochs_run", 0)),
                "pruned": not complete,
                "state": t.state.name,
                "sampler_energy_j": float(attrs.get("sampler_energy_j", math.nan)),
                "sampler_seconds": float(attrs.get("sampler_seconds", math.nan)),
                # Everything the meter read during the trial: idle included unless the source is
                # the estimate (zero when idle).
                "energy_idle_included": format_flag(source_idle_included(source)),
            }
        )
    for row, best in zip(rows, best_so_far(rows), strict=True):
        row["best_so_far"] = best
    return rows
