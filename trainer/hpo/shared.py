"""One HPO study shared by several workers (processes or machines) through one Optuna RDB storage.

``greenserve train hpo --storage URL --study-name NAME`` on each worker. Every (strategy, repeat)
is one Optuna study, named ``NAME-<strategy>-r<repeat>-<fingerprint>`` (:func:`study_name`): workers
with the same settings meet in the same studies, and a worker whose settings differ could never mix
its trials into them — it is refused (:func:`check_same_settings`), with the differences.

How the workers share the rounds of a study (:func:`claim_trial`): a worker creates a trial
(``study.ask()``; Optuna numbers trials under a lock on the study's row, so numbers are unique and
a trial's lower-numbered ones are all visible once it exists), then counts the study's live trials
(waiting, running, complete, pruned) numbered below it. Fewer than ``rounds``: the trial is the
worker's to run. Otherwise it is surplus — another worker took the last round meanwhile — and is
marked failed before anything trained (user attribute ``surplus``); failed trials never count. So a
study never gets more than ``rounds`` finished trials (the (rounds + 1)-th live trial would have
counted ``rounds`` below it), and a worker ends only when every study has ``rounds`` of them, running
again any round whose trial failed or whose worker died (``trainer.hpo.run``).

A dead worker's trial is found by Optuna's heartbeat: a running trial's worker records a heartbeat
every :data:`HEARTBEAT_INTERVAL_S`, and a trial without one for :data:`GRACE_PERIOD_S` is marked
failed by the next worker that looks (:func:`fail_stale`); its round is run again.

Samplers are seeded per trial (:func:`trial_sampler`): ``(seed, repeat, trial number)``. Two workers
seeded alike would otherwise propose the same points; with the trial number every trial gets its own
stream, whichever worker runs it, and random, TPE and GP still start from the same points within a
repeat (their random start-up draws the same first value from the same seed). The grid keeps one
seed per study: trial *n* takes the *n*-th point of its shuffled order, so no two workers take the
same point.
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy.event
import sqlalchemy.exc
import sqlalchemy.pool
from optuna.trial import TrialState

from trainer.errors import TrainerError
from trainer.hpo.search import (
    RECORD_ATTR,
    finished_trials,
    grid_values,
    make_pruner,
    make_sampler,
    mix_seed,
    record_study,
    study_name,
    study_record,
)
from trainer.hpo.settings import STRATEGIES, HpoSettings

logger = logging.getLogger(__name__)

#: A running trial's worker records a heartbeat this often; a trial without one for the grace
#: period is taken for dead (its worker killed, its machine gone) and its round is run again.
HEARTBEAT_INTERVAL_S = 5
GRACE_PERIOD_S = 30
#: How often a worker with nothing left to claim looks at the studies again.
POLL_S = 1.0
#: Attempts at opening a storage whose tables another worker may be creating at the same moment.
OPEN_ATTEMPTS = 8

#: The states of a trial that holds a round: it will finish, or already has.
LIVE: tuple[TrialState, ...] = (
    TrialState.WAITING,
    TrialState.RUNNING,
    TrialState.COMPLETE,
    TrialState.PRUNED,
)


def worker_id() -> str:
    """``host:pid``: which worker ran a trial (its ``worker`` user attribute)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _sqlite_immediate(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite starts no transaction itself; SQLAlchemy's "begin" below starts each one IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_shared_storage(url: str) -> optuna.storages.RDBStorage:
    """The storage at ``url`` for one of several workers: Optuna's heartbeat on, and opened even
    when other workers are creating its tables at the same moment (:func:`_create_tables`).

    SQLite (workers on one machine): every transaction takes the write lock when it begins
    (``BEGIN IMMEDIATE``), so that two processes queue on SQLite's busy timeout instead of one failing
    with "database is locked" when the other wrote between its read and its write.
    """
    sqlite = sqlalchemy.engine.make_url(url).get_backend_name() == "sqlite"
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    _create_tables(url, engine_kwargs)
    with warnings.catch_warnings():  # the heartbeat is "experimental" (Optuna 2.9 to 5.0 at least)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=GRACE_PERIOD_S,
        )
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_immediate)
        sqlalchemy.event.listen(storage.engine, "begin", _sqlite_begin)
        storage.engine.dispose()  # the connections made so far predate the listeners
    return storage


def _create_tables(url: str, engine_kwargs: dict[str, Any]) -> None:
    """Make sure Optuna's tables and version row exist, whoever creates them.

    Optuna creates them when a storage opens; of two workers doing so at once, one fails (PostgreSQL
    refuses the second of two concurrent ``CREATE TYPE``/``CREATE TABLE``, SQLite says the table
    exists or the database is locked, the version row's key is taken). The loser tries again and
    finds them. These attempts use connections that close on release (``NullPool``), so a failed
    one leaves none open; the worker's own storage then opens on tables that exist.
    """
    kwargs = {**engine_kwargs, "poolclass": sqlalchemy.pool.NullPool}
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            optuna.storages.RDBStorage(url, engine_kwargs=kwargs).engine.dispose()
            return
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            if attempt == OPEN_ATTEMPTS:
                raise
            logger.debug("storage tables being created by another worker (%s); trying again", exc)
        except sqlalchemy.exc.OperationalError as exc:
            if attempt == OPEN_ATTEMPTS or not ("locked" in str(exc) or "already exists" in str(exc)):
                raise
            logger.debug("storage tables being created by another worker (%s); trying again", exc)
        time.sleep(random.uniform(0.05, 0.3))


def _names_under(storage: optuna.storages.BaseStorage, prefix: str) -> dict[str, str]:
    """The storage's HPO study names under ``prefix``, each with its fingerprint."""
    strategies = "|".join(re.escape(s) for s in STRATEGIES)
    pattern = re.compile(rf"{re.escape(prefix)}-(?:{strategies})-r\d+-([0-9a-f]{{10}})")
    found = {}
    for name in optuna.get_all_study_names(storage):
        match = pattern.fullmatch(name)
        if match:
            found[name] = match.group(1)
    return found


def _differences(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> str:
    keys = sorted(set(mine) | set(theirs))
    return ", ".join(
        f"{k} {theirs.get(k)!r} there vs {mine.get(k)!r} here" for k in keys if mine.get(k) != theirs.get(k)
    )


def check_same_settings(settings: HpoSettings, storage: optuna.storages.BaseStorage) -> None:
    """Refuse to join ``settings.study_name`` when the storage holds its studies under other settings
    (another fingerprint): every worker of one shared study must train the same way."""
    mine = settings.fingerprint()
    others = {name: fp for name, fp in _names_under(storage, settings.name_prefix).items() if fp != mine}
    if not others:
        return
    name = min(others)
    record = optuna.load_study(study_name=name, storage=storage).user_attrs.get(RECORD_ATTR, {})
    own = study_record(settings, "", 0)["identity"]
    what = _differences(own, record.get("identity", {})) or "unknown settings"
    raise TrainerError(
        f"study name {settings.name_prefix!r} is already used in this storage with other settings "
        f"(study {name}: {what}); every worker of a shared study needs the same settings: give the same "
        "flags, or another --study-name"
    )


def join_study(
    settings: HpoSettings, strategy: str, repeat: int, storage: optuna.storages.BaseStorage
) -> optuna.Study:
    """The shared study of ``strategy`` × ``repeat``, created by whichever worker comes first (Optuna's
    ``create_study(load_if_exists=True)``: the second of two concurrent creations fails on the unique
    name and loads the first's). Trials other workers are running are left alone."""
    study = optuna.create_study(
        storage=storage,
        study_name=study_name(settings, strategy, repeat),
        direction="maximize",
        sampler=trial_sampler(settings, strategy, repeat, 0),
        pruner=make_pruner(strategy, settings.n_epochs),
        load_if_exists=True,
    )
    record_study(study, settings, strategy, repeat)
    return study


def trial_sampler(
    settings: HpoSettings, strategy: str, repeat: int, number: int
) -> optuna.samplers.BaseSampler:
    """The sampler that chooses trial ``number``'s parameters: seeded with (seed, repeat, number);
    the grid's seed is the study's (it fixes the order, and trial n takes the n-th point)."""
    if strategy == "grid":
        return _SharedGrid(grid_values(settings.space), seed=mix_seed(settings.seed, repeat))
    seed = mix_seed(settings.seed, repeat, number)
    return make_sampler(strategy, space=settings.space, seed=seed, startup_trials=settings.startup_trials)


class _SharedGrid(optuna.samplers.GridSampler):
    """The grid, told outside ``study.optimize``: once the grid is used up, ``GridSampler`` stops the
    optimize loop (``study.stop()``), which raises anywhere else. Workers count rounds instead."""

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


def live_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=LIVE)


def is_surplus(study: optuna.Study, number: int, rounds: int) -> bool:
    """Whether trial ``number`` came after the study's ``rounds`` live trials: no round left for it."""
    return sum(1 for t in live_trials(study) if t.number < number) >= rounds


def claim_trial(
    study: optuna.Study, rounds: int, storage: optuna.storages.BaseStorage
) -> optuna.Trial | None:
    """A new trial for one of the study's missing rounds, or ``None`` when every round is taken
    (finished, or running on some worker). A trial created when another worker took the last
    round at the same moment is marked failed (``surplus``) before anything runs."""
    if len(live_trials(study)) >= rounds:
        return None
    with warnings.catch_warnings():
        # Optuna expects heartbeats with study.optimize, whose loop beats for its trials; here
        # heartbeat() does the same for the trials asked for.
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used", UserWarning)
        trial = study.ask()
    _beat(storage, trial)
    if is_surplus(study, trial.number, rounds):
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        logger.debug("study %s: trial %d is surplus (every round taken)", study.study_name, trial.number)
        return None
    return trial


def _beat(storage: optuna.storages.BaseStorage, trial: optuna.Trial) -> None:
    if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None:
        storage.record_heartbeat(trial._trial_id)  # Optuna's own heartbeat thread does the same


@contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial: optuna.Trial) -> Iterator[None]:
    """Record ``trial``'s heartbeat every :data:`HEARTBEAT_INTERVAL_S` while the block runs."""
    if not (isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None):
        yield
        return
    stop = threading.Event()
    interval = storage.get_heartbeat_interval() or HEARTBEAT_INTERVAL_S

    def beat() -> None:
        try:
            while not stop.wait(interval):
                try:
                    _beat(storage, trial)
                except Exception as exc:  # a lost beat is not fatal; the next one may pass
                    logger.warning("trial %d: heartbeat not recorded: %s", trial.number, exc)
        finally:
            storage.remove_session()  # this thread's connection back to the pool

    thread = threading.Thread(target=beat, name=f"hpo-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study: optuna.Study) -> None:
    """Mark failed the study's running trials whose worker stopped beating (Optuna's
    ``fail_stale_trials``; its rounds are then free again)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_trial(
    study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]
) -> TrialState:
    """Run ``objective`` on ``trial`` and tell the study, as ``study.optimize`` would: pruned, complete,
    or failed (an exception is re-raised after the trial is marked failed)."""
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        frozen = study.tell(trial, state=TrialState.PRUNED)
    except (Exception, KeyboardInterrupt):
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        frozen = study.tell(trial, value)
    return frozen.state


def finished_count(studies: Mapping[Any, optuna.Study], rounds: int) -> int:
    """The rounds finished over all ``studies`` (each counted up to ``rounds``)."""
    return sum(min(rounds, len(finished_trials(study))) for study in studies.values())
