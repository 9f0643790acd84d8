"""The search: Optuna samplers and pruners of each strategy, the partial grid, and the studies in
their RDB storage (a deterministic name per strategy × repeat, so a killed run resumes)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import warnings
from typing import Any

import numpy as np
import optuna
import sqlalchemy.engine
import sqlalchemy.event
import sqlalchemy.exc
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
    """The storage name of one study: the same settings always name the same study.

    ``<study_name>-<strategy>-r<repeat>-<fingerprint>``, ``hpo`` when no ``study_name`` is given.
    """
    return f"{settings.name_prefix}-{strategy}-r{repeat}-{settings.fingerprint()}"


#: The study user attribute that says what a study is (settings, strategy, repeat), for a reader of
#: the storage alone (``optuna-dashboard``, a worker that joins, a refusal's message).
RECORD_ATTR = "greenserve_hpo"


def study_record(settings: HpoSettings, strategy: str, repeat: int) -> dict[str, Any]:
    """What :data:`RECORD_ATTR` holds: the study's name prefix, strategy, repeat, fingerprint and the
    settings the fingerprint hashes (JSON values)."""
    return {
        "study_name": settings.name_prefix,
        "strategy": strategy,
        "repeat": repeat,
        "fingerprint": settings.fingerprint(),
        "identity": json.loads(json.dumps(settings.identity(), default=str)),
    }


_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def driver_url(url: str) -> str:
    """``url`` with a driver SQLAlchemy can load: a bare ``postgresql://`` means psycopg2 to
    SQLAlchemy; where only psycopg (3) is installed, ``postgresql+psycopg://``."""
    parsed = sqlalchemy.engine.make_url(url)
    if (
        parsed.drivername == "postgresql"
        and importlib.util.find_spec("psycopg2") is None
        and importlib.util.find_spec("psycopg") is not None
    ):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def display_url(url: str) -> str:
    """``url`` with its password hidden, for logs and ``hpo_settings.json``."""
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def open_storage(url: str, *, shared: bool = False) -> optuna.storages.RDBStorage:
    """The Optuna storage at ``url`` (SQLite in WAL mode); for one of several workers when ``shared``
    (:func:`trainer.hpo.shared.open_shared_storage`: heartbeats, concurrent table creation)."""
    url = driver_url(url)
    try:
        if shared:
            from trainer.hpo.shared import open_shared_storage

            return open_shared_storage(url)
        storage = optuna.storages.RDBStorage(url)
    except (ImportError, sqlalchemy.exc.OperationalError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if (
            isinstance(exc, ImportError)
            and sqlalchemy.engine.make_url(url).get_backend_name() == "postgresql"
        ):
            reason += " (PostgreSQL needs a driver: pip install 'psycopg[binary]')"
        raise TrainerError(f"cannot open the storage {display_url(url)}: {reason}") from exc
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
    run left RUNNING is marked failed. Shared studies (``settings.study_name`` given) are
    :func:`trainer.hpo.shared.join_study`'s."""
    if settings.shared:
        from trainer.hpo.shared import join_study

        return join_study(settings, strategy, repeat, storage)
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
    record_study(study, settings, strategy, repeat)
    return study


def record_study(study: optuna.Study, settings: HpoSettings, strategy: str, repeat: int) -> None:
    """Write the study's :data:`RECORD_ATTR` once (several workers may write the same value)."""
    if RECORD_ATTR not in study.user_attrs:
        study.set_user_attr(RECORD_ATTR, study_record(settings, strategy, repeat))


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's COMPLETE and PRUNED trials, in order (failed ones never count as rounds)."""
    return sorted(study.get_trials(deepcopy=False, states=_FINISHED), key=lambda t: t.number)
