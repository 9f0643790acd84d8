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
from trainer.hpo.search import display_url, finished_trials, load_study, open_storage, study_name
from trainer.hpo.settings import PARAM_RANGES, HpoSettings
from trainer.hpo.shared import (
    POLL_S,
    check_same_settings,
    claim_trial,
    fail_stale,
    finished_count,
    heartbeat,
    run_trial,
    trial_sampler,
    worker_id,
)
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
    storage_url = _storage_url(settings, out_dir)
    meter = StudyEnergy.open(
        settings.energy_source, device=settings.device, watts_per_core=settings.watts_per_core
    )
    return _Prepared(data, meter, storage_url)


def _storage_url(settings: HpoSettings, out_dir: Path) -> str:
    return settings.storage or f"sqlite:///{out_dir.resolve() / 'hpo.db'}"


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
    worker = worker_id()

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
            # Whether energy_j includes the devices' idle draw (None: unknown source), the idle
            # power energy_net_j subtracts, and who measured: a shared study's trials come from
            # several workers, each with its own meter.
            "energy_idle_included": source_idle_included(result.energy_source),
            "idle_power_w": result.idle_power_w,
            "worker": worker,
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
        storage = open_storage(prepared.storage_url, shared=settings.shared)
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
    trials_csv = _write_results(
        settings,
        out_dir,
        rows,
        storage_url=prepared.storage_url,
        energy_source=prepared.meter.source,
        extra={"wall_s": round(wall_s, 3)},
    )
    logger.info("HPO: %d trials in %s (%.1f s)", len(rows), trials_csv, wall_s)
    return trials_csv


def _write_results(
    settings: HpoSettings,
    out_dir: Path,
    rows: list[dict[str, Any]],
    *,
    storage_url: str,
    energy_source: str,
    extra: dict[str, Any],
) -> Path:
    """The trials table (with the target), ``hpo_settings.json`` and the report; the table's path."""
    target = resolve_target(rows, settings.target_accuracy, settings.target_fraction)
    for row in rows:
        row["target_accuracy"] = target
    trials_csv = out_dir / TRIALS_CSV
    columns = [*TRIAL_KEY_COLUMNS, *settings.param_names, *TRIAL_RESULT_COLUMNS]
    write_table(trials_csv, columns, rows)
    provenance = {
        "settings": {
            k: (display_url(v) if k == "storage" and v else str(v) if isinstance(v, Path) else v)
            for k, v in asdict(settings).items()
        },
        "effective": {
            "rounds": settings.n_rounds,
            "repeats": settings.n_repeats,
            "epochs": settings.n_epochs,
            "limit": settings.data_limit,
        },
        "fingerprint": settings.fingerprint(),
        "storage": display_url(storage_url),
        "energy_source": energy_source,
        **extra,
    }
    write_text_atomic(out_dir / SETTINGS_JSON, json.dumps(provenance, indent=2, default=str) + "\n")
    write_hpo_report(trials_csv, out_dir)
    return trials_csv


def report_hpo(settings: HpoSettings, out_dir: Path) -> Path:
    """The trials table, summary and plots of ``settings``' studies, read from the storage alone:
    nothing trains, no data is loaded (``greenserve train hpo --report-only``).

    The studies are found by their names, as a run finds them, so give the flags the workers were
    given (``--storage``, ``--study-name`` and the settings). Each study contributes its first
    ``rounds`` finished trials, as in :func:`run_hpo`, whose report this equals for the same trials;
    a study still short of rounds (workers still running) is reported as far as it got, with a
    warning. Returns the path of ``hpo_trials.csv``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainerError(f"output directory {out_dir} exists and is not a directory")
    url = _storage_url(settings, out_dir)
    if settings.storage is None and not (out_dir / "hpo.db").is_file():
        raise TrainerError(f"no storage at {out_dir / 'hpo.db'}: run the study first, or give --storage")
    rounds = settings.n_rounds
    rows: list[dict[str, Any]] = []
    storage = open_storage(url)
    try:
        for strategy in settings.strategies:
            for repeat in range(settings.n_repeats):
                name = study_name(settings, strategy, repeat)
                try:
                    study = optuna.load_study(study_name=name, storage=storage)
                except KeyError:
                    if settings.shared:
                        check_same_settings(settings, storage)  # says which settings are there
                    raise TrainerError(
                        f"no study {name} in {display_url(url)}: nothing to report for these settings "
                        "(give the flags the run was given)"
                    ) from None
                trials = finished_trials(study)[:rounds]
                if len(trials) < rounds:
                    logger.warning(
                        "study %s: %d of %d rounds finished; reporting those", name, len(trials), rounds
                    )
                rows.extend(_trial_rows(settings, strategy, repeat, name, trials))
    finally:
        storage.remove_session()
        storage.engine.dispose()
    if not rows:
        raise TrainerError(f"the studies in {display_url(url)} have no finished trial yet")
    sources = "+".join(sorted({str(r["energy_source"]) for r in rows}))
    out_dir.mkdir(parents=True, exist_ok=True)
    trials_csv = _write_results(
        settings, out_dir, rows, storage_url=url, energy_source=sources, extra={"report_only": True}
    )
    logger.info("HPO report: %d trials from %s in %s", len(rows), display_url(url), trials_csv)
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
    if settings.shared:
        check_same_settings(settings, storage)
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
    if settings.shared:
        _run_shared(settings, prepared, storage, studies, marks, finished=finished, progress=progress)
        return _rows(settings, studies)
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
    return _rows(settings, studies)


def _rows(settings: HpoSettings, studies: dict[tuple[str, int], optuna.Study]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for (strategy, repeat), study in studies.items():
        trials = finished_trials(study)[: settings.n_rounds]
        rows.extend(_trial_rows(settings, strategy, repeat, study.study_name, trials))
    return rows


def _run_shared(
    settings: HpoSettings,
    prepared: _Prepared,
    storage: optuna.storages.BaseStorage,
    studies: dict[tuple[str, int], optuna.Study],
    marks: _Marks,
    *,
    finished: int,
    progress: bool,
) -> None:
    """Run this worker's share of the shared studies (:mod:`trainer.hpo.shared`): claim free rounds
    study by study; with none left to claim, wait for the other workers' running trials, and take
    over any round whose trial failed or whose worker stopped beating. Returns once every study has
    its ``rounds`` finished trials, whoever ran them."""
    rounds = settings.n_rounds
    total = rounds * len(studies)
    failed_in_a_row = 0
    ran_here = 0  # trials this worker ran that finished (complete or pruned)
    waiting_logged = False
    with progress_bar("HPO trials", total, completed=finished, enabled=progress) as step:
        shown = finished

        def show(label: str) -> int:
            nonlocal shown
            done = finished_count(studies, rounds)
            for _ in range(done - shown):
                step(label, True)
            shown = max(shown, done)
            return done

        while True:
            ran = 0
            for (strategy, repeat), study in studies.items():
                label = f"HPO {strategy} r{repeat}"
                objective = _objective(settings, strategy, repeat, prepared, marks)
                fail_stale(study)
                while (trial := claim_trial(study, rounds, storage)) is not None:
                    step(label, False)
                    study.sampler = trial_sampler(settings, strategy, repeat, trial.number)
                    with heartbeat(storage, trial):
                        state = run_trial(study, trial, objective)
                    ran += 1
                    ran_here += state != TrialState.FAIL
                    failed_in_a_row = failed_in_a_row + 1 if state == TrialState.FAIL else 0
                    if failed_in_a_row >= rounds:  # trials fail without raising: do not loop forever
                        raise TrainerError(
                            f"study {study.study_name}: trials fail without finishing; see the log"
                        )
                    show(label)
            if show("HPO: waiting for other workers") >= total:
                logger.info(
                    "HPO: every study has its %d rounds; worker %s ran %d of the %d missing at its start",
                    rounds,
                    worker_id(),
                    ran_here,
                    total - finished,
                )
                return
            if not ran:
                if not waiting_logged:
                    logger.info("HPO: every round is taken; waiting for the other workers' trials")
                    waiting_logged = True
                time.sleep(POLL_S)
                marks.reset()  # waiting is not the sampler's overhead


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
