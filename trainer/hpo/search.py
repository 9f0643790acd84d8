"""The search: Optuna samplers and pruners of each strategy, the partial grid, and the studies in
their RDB storage (a deterministic name per strategy × repeat, so a killed run resumes)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

import numpy as np
import optuna
import sqlalchemy.event
from optuna.trial import TrialState

from trainer.errors import TrainerError
from trainer.hpo.settings import (
    GRID_POINTS_PER_PARAM,
    HYPERBAND_MIN_EPOCHS,
    HYPERBAND_REDUCTION_FACTOR,
    PARAM_RANGES,
    SPACES,
    STRATEGIES,
    HpoSettings,
)

logger = logging.getLogger(__name__)


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


def mix_seed(*parts: int) -> int:
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


_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna storage at ``url`` (SQLite in WAL mode)."""
    storage = optuna.storages.RDBStorage(url)
    if storage.engine.dialect.name == "sqlite":
        # Optuna commits every report and attribute (~25 commits a trial), and SQLite's default
        # journal waits for an fsync on each: 0.1-0.2 s a trial here. WAL with synchronous=NORMAL
        # loses nothing when the process is killed (what resuming needs); only a power cut can
        # drop the last commits, and then those rounds are simply run again.
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # the connection that created the tables predates the pragmas
    return storage


def load_study(
    settings: HpoSettings, strategy: str, repeat: int, storage: optuna.storages.BaseStorage
) -> optuna.Study:
    """The study of ``strategy`` × ``repeat`` in ``storage``, created or resumed; a trial a killed
    run left RUNNING is marked failed."""
    name = study_name(settings, strategy, repeat)
    # Samplers cannot restore their random state, so a resumed study gets a fresh stream mixed with
    # the number of trials already made (else random search would replay its first points). The
    # grid is the exception: its seed fixes the shuffled order, and trial n takes the n-th point.
    existing = 0
    with contextlib.suppress(KeyError):  # KeyError: a new study
        existing = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    sampler_seed = (
        mix_seed(settings.seed, repeat) if strategy == "grid" else mix_seed(settings.seed, repeat, existing)
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


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's COMPLETE and PRUNED trials, in order (failed ones never count as rounds)."""
    return sorted(study.get_trials(deepcopy=False, states=_FINISHED), key=lambda t: t.number)
