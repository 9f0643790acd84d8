"""Distributed HPO: several workers on one study in a real PostgreSQL (and SQLite on one machine).

The PostgreSQL is a throw-away cluster (``initdb`` in a temporary directory, the server listening on
a Unix socket there and on no TCP address), started once for this module and removed after it. Its
server programs come from Debian's ``postgresql`` package, which ``make test`` installs when missing;
without them these tests fail, saying so, rather than skip.

Two tests run two real worker processes each (``greenserve train hpo --storage URL --study-name
NAME``) that train for real, on PostgreSQL and on SQLite; the others run in this process, most with
``test_hpo``'s fake training.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy.engine
from optuna.trial import TrialState

from tests.trainer.test_hpo import FakeTrain
from trainer.cli import main as train_main
from trainer.errors import TrainerError
from trainer.hpo import HpoSettings, read_trials_csv, run_hpo, study_name
from trainer.hpo import shared as shared_mod
from trainer.hpo.search import display_url, driver_url, open_storage

REPO = Path(__file__).resolve().parents[2]
INSTALL_HINT = "`make test` installs it (Debian's postgresql package: apt-get install postgresql)"
REPORT_FILES = (
    "hpo_trials.csv",
    "hpo_summary.csv",
    "hpo_summary.md",
    "hpo_best_so_far.png",
    "hpo_cumulative_energy.png",
)


def _server_bin() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest
    ``/usr/lib/postgresql/<version>/bin``."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    found = [
        p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()
    ]
    if not found:
        pytest.fail(
            f"PostgreSQL's server programs (initdb, pg_ctl) are not installed: {INSTALL_HINT}", pytrace=False
        )
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


@dataclass
class Postgres:
    """A running throw-away cluster, reached through its Unix socket in ``socket_dir``."""

    socket_dir: Path

    def create_database(self, name: str) -> str:
        """A new, empty database; its SQLAlchemy URL (psycopg 3)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=str(self.socket_dir), user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"postgresql+psycopg://postgres@/{name}?host={self.socket_dir}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    try:
        import psycopg  # noqa: F401  (the driver Optuna's storage uses)
    except ImportError:
        pytest.fail("the PostgreSQL driver psycopg is not installed: `make test` installs it", pytrace=False)
    bin_dir = _server_bin()
    # PostgreSQL refuses to run as root: as root, the cluster belongs to the postgres user.
    as_owner: list[str] = []
    # In /tmp, not $TMPDIR: the postgres user must reach it, and a Unix socket's path is short (107 bytes).
    root = Path(tempfile.mkdtemp(prefix="greenserve-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.fail(
                "running as root, the tests need runuser to start PostgreSQL as postgres", pytrace=False
            )
        shutil.chown(root, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"

    def ctl(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_owner, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
        )

    try:
        made = ctl(bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        assert made.returncode == 0, f"initdb failed: {made.stderr}"
        with (data / "postgresql.conf").open("a") as conf:  # appended: the file stays the owner's
            conf.write(
                f"listen_addresses = ''\nunix_socket_directories = '{root}'\n"  # a socket, no TCP at all
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"  # throw-away data
            )
        started = ctl(bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "start")
        if started.returncode != 0:
            text = log.read_text() if log.exists() else ""
            pytest.fail(f"PostgreSQL did not start: {started.stdout}{started.stderr}\n{text}", pytrace=False)
        yield Postgres(root)
    finally:
        if (data / "postmaster.pid").exists():
            ctl(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def storages() -> Iterator[Callable[..., optuna.storages.RDBStorage]]:
    """``open(url, shared=False)``: a storage whose connections are closed after the test."""
    opened: list[optuna.storages.RDBStorage] = []

    def open_one(url: str, *, shared: bool = False) -> optuna.storages.RDBStorage:
        opened.append(open_storage(url, shared=shared))
        return opened[-1]

    yield open_one
    for storage in opened:
        storage.remove_session()
        storage.engine.dispose()


@pytest.fixture
def fake_train(monkeypatch: pytest.MonkeyPatch) -> FakeTrain:
    fake = FakeTrain()
    monkeypatch.setattr("trainer.hpo.run.train", fake)
    return fake


def settings(**overrides: Any) -> HpoSettings:
    base: dict[str, Any] = {"quick": True, "energy_source": "estimate", "seed": 0}
    base.update(overrides)
    return HpoSettings(**base)


def _worker(storage: str, out: Path, flags: list[str]) -> subprocess.Popen[bytes]:
    """A worker process; its stdout and stderr go to ``<out>.log``."""
    command = [
        sys.executable,
        "-m",
        "greenserve",
        "train",
        "hpo",
        "--storage",
        storage,
        "--out",
        str(out),
        *flags,
    ]
    with (out.parent / f"{out.name}.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )


def _wait_all(workers: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """Wait for every worker (within pytest's 120 s timeout), killing any still running after it."""
    deadline = time.monotonic() + timeout_s
    try:
        for worker in workers:
            worker.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _assert_rounds_shared_exactly(
    storage: optuna.storages.BaseStorage, names: list[str], rounds: int
) -> list[optuna.trial.FrozenTrial]:
    """Every study has exactly ``rounds`` finished trials, and its other trials are surplus ones
    that never trained; returns the finished trials."""
    finished = []
    for name in names:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(done) == rounds, (name, [(t.number, t.state.name) for t in trials])
        for t in trials:
            if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
                assert t.state == TrialState.FAIL and t.user_attrs == {"surplus": True}, (name, t)
        assert len({tuple(sorted(t.params.items())) for t in done}) == rounds, f"{name}: a point run twice"
        finished += done
    return finished


# --- two worker processes, one study in PostgreSQL ------------------------------------------------


def test_two_workers_share_one_study_in_postgresql_and_report_what_one_process_would(
    postgres: Postgres, tmp_path: Path, storages: Callable[..., optuna.storages.RDBStorage]
) -> None:
    url = postgres.create_database("two_workers")
    strategies, rounds = ("random", "grid", "bayes+hyperband"), 6
    flags = [
        "--quick",
        "--strategies",
        ",".join(strategies),
        "--rounds",
        str(rounds),
        "--energy-source",
        "estimate",
    ]
    # The study name "hpo" gives the studies the names a single process gives them, so that one
    # process can be shown the very same trials below.
    workers = [_worker(url, tmp_path / f"w{i}", [*flags, "--study-name", "hpo"]) for i in range(2)]
    _wait_all(workers, timeout_s=100)
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log

    s = settings(strategies=strategies, rounds=rounds, study_name="hpo")
    names = [study_name(s, strategy, 0) for strategy in strategies]
    storage = storages(url)
    finished = _assert_rounds_shared_exactly(storage, names, rounds)
    # No trial ran twice: the trials the workers say they trained are the finished ones, no more.
    ran = [int(m) for log in logs for m in re.findall(r"worker \S+ ran (\d+) of", log)]
    assert len(ran) == 2 and sum(ran) == len(finished) == rounds * len(strategies), ran
    assert {t.user_attrs["worker"] for t in finished} <= {f"{os.uname().nodename}:{w.pid}" for w in workers}
    for t in finished:  # each trial's energy, as user attributes
        assert t.user_attrs["energy_source"] == "estimate" and t.user_attrs["energy_idle_included"] is False
        assert t.user_attrs["energy_j"] > 0 and t.user_attrs["energy_net_j"] == t.user_attrs["energy_j"]
    assert any(t.state == TrialState.PRUNED for t in finished)  # Hyperband's trials are shared too
    rows = read_trials_csv(tmp_path / "w0" / "hpo_trials.csv")
    assert [(r["strategy"], r["round"]) for r in rows] == [
        (st, str(i)) for st in strategies for i in range(1, rounds + 1)
    ]

    # Both workers waited for the last trial: each wrote the whole study's report.
    for name in REPORT_FILES:
        assert (tmp_path / "w0" / name).read_bytes() == (tmp_path / "w1" / name).read_bytes(), name

    # The report from the storage alone, trains nothing.
    code = train_main(
        [
            "hpo",
            *flags,
            "--storage",
            url,
            "--study-name",
            "hpo",
            "--report-only",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 0
    # One process shown the same trials (copied into its own SQLite storage) reports the same.
    single = tmp_path / "single"
    single.mkdir()
    for name in names:
        optuna.copy_study(
            from_study_name=name, from_storage=storage, to_storage=f"sqlite:///{single / 'hpo.db'}"
        )
    run_hpo(settings(strategies=strategies, rounds=rounds), single, progress=False)
    for name in REPORT_FILES:
        expected = (tmp_path / "w0" / name).read_bytes()
        assert (tmp_path / "r" / name).read_bytes() == expected, name
        assert (single / name).read_bytes() == expected, name


# --- the rules, in this process ------------------------------------------------------------------


def test_a_trial_created_after_the_last_round_was_taken_is_surplus_and_never_runs(
    postgres: Postgres, storages: Callable[..., optuna.storages.RDBStorage]
) -> None:
    url = postgres.create_database("surplus")
    s = settings(strategies=("random",), study_name="surplus")
    storage_a, storage_b = storages(url, shared=True), storages(url, shared=True)  # two workers
    a = shared_mod.join_study(s, "random", 0, storage_a)
    b = shared_mod.join_study(s, "random", 0, storage_b)
    assert shared_mod.claim_trial(a, 2, storage_a) is not None  # round 1: worker a

    # Worker b sees one round free, but worker a takes it between b's look and b's trial.
    real_ask = b.ask

    def ask_after_a_took_the_last_round(*args: Any, **kwargs: Any) -> optuna.Trial:
        assert shared_mod.claim_trial(a, 2, storage_a) is not None
        return real_ask(*args, **kwargs)

    b.ask = ask_after_a_took_the_last_round  # type: ignore[method-assign]
    assert shared_mod.claim_trial(b, 2, storage_b) is None
    trials = b.get_trials()
    assert [(t.number, t.state) for t in trials] == [
        (0, TrialState.RUNNING),
        (1, TrialState.RUNNING),
        (2, TrialState.FAIL),
    ]
    assert trials[2].user_attrs == {"surplus": True} and trials[2].params == {}
    b.ask = real_ask  # type: ignore[method-assign]
    assert shared_mod.claim_trial(b, 2, storage_b) is None  # every round is taken: nothing asked
    assert len(b.get_trials()) == 3


def test_a_dead_workers_trial_is_failed_after_the_grace_period_and_its_round_run_again(
    postgres: Postgres,
    tmp_path: Path,
    fake_train: FakeTrain,
    monkeypatch: pytest.MonkeyPatch,
    storages: Callable[..., optuna.storages.RDBStorage],
) -> None:
    monkeypatch.setattr(shared_mod, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(shared_mod, "GRACE_PERIOD_S", 1)
    url = postgres.create_database("dead_worker")
    s = settings(strategies=("tpe",), rounds=2, study_name="dead", storage=url)
    storage = storages(url, shared=True)
    study = shared_mod.join_study(s, "tpe", 0, storage)
    assert shared_mod.claim_trial(study, 2, storage) is not None  # ...and its worker is killed
    time.sleep(2.5)

    run_hpo(s, tmp_path, progress=False)
    assert len(fake_train.calls) == 1 + 2  # the warm-up, then both rounds
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert [r["trial"] for r in read_trials_csv(tmp_path / "hpo_trials.csv")] == ["1", "2"]


def test_a_worker_with_other_settings_is_refused_with_the_differences(
    postgres: Postgres, tmp_path: Path, fake_train: FakeTrain, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres.create_database("other_settings")
    run_hpo(
        settings(strategies=("random",), rounds=2, study_name="exp", storage=url),
        tmp_path / "a",
        progress=False,
    )
    with pytest.raises(TrainerError, match=r"study name 'exp' is already used .*epochs 2 there vs 3 here"):
        run_hpo(
            settings(strategies=("random",), rounds=2, epochs=3, study_name="exp", storage=url),
            tmp_path / "b",
            progress=False,
        )
    # The report of those other settings says why there is none.
    flags = "--strategies random --rounds 2 --quick --epochs 3 --energy-source estimate --study-name exp"
    code = train_main(
        ["hpo", *flags.split(), "--storage", url, "--report-only", "--out", str(tmp_path / "c")]
    )
    assert code == 2 and "epochs 2 there vs 3 here" in capsys.readouterr().err
    # Another name is another study.
    run_hpo(
        settings(strategies=("random",), rounds=2, epochs=3, study_name="exp-3", storage=url),
        tmp_path / "b",
        progress=False,
    )


def test_a_shared_grid_may_use_every_point(
    tmp_path: Path, fake_train: FakeTrain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna's grid stops ``study.optimize`` when its last point is taken, which raises outside
    it; a shared study is told outside it."""
    for module in ("trainer.hpo.settings", "trainer.hpo.search"):
        monkeypatch.setattr(f"{module}.GRID_POINTS_PER_PARAM", 2)  # 2 × 2 × 2 = 8 points
    s = settings(
        strategies=("grid",), rounds=8, study_name="all-points", storage=f"sqlite:///{tmp_path / 'db'}"
    )
    run_hpo(s, tmp_path, progress=False)
    rows = read_trials_csv(tmp_path / "hpo_trials.csv")
    assert len({(r["lr"], r["beta1"], r["beta2"]) for r in rows}) == 8


def test_workers_opening_a_new_database_at_once_all_succeed(postgres: Postgres) -> None:
    """PostgreSQL refuses the second of two concurrent CREATE TYPE/TABLE: the loser retries."""
    url = postgres.create_database("opened_at_once")
    barrier, errors = threading.Barrier(4), []

    def open_one() -> None:
        barrier.wait()
        try:
            storage = open_storage(url, shared=True)
            storage.engine.dispose()
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []


def test_two_workers_share_one_study_in_sqlite_on_one_machine(
    tmp_path: Path, storages: Callable[..., optuna.storages.RDBStorage]
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    flags = ["--quick", "--strategies", "tpe", "--rounds", "6", "--epochs", "1", "--study-name", "local"]
    workers = [_worker(url, tmp_path / f"w{i}", [*flags, "--energy-source", "estimate"]) for i in range(2)]
    _wait_all(workers, timeout_s=100)
    for i, worker in enumerate(workers):
        assert worker.returncode == 0, (tmp_path / f"w{i}.log").read_text()
    s = settings(strategies=("tpe",), rounds=6, epochs=1, study_name="local")
    _assert_rounds_shared_exactly(storages(url), [study_name(s, "tpe", 0)], 6)
    assert (tmp_path / "w0" / "hpo_trials.csv").read_bytes() == (
        tmp_path / "w1" / "hpo_trials.csv"
    ).read_bytes()


def test_report_only_of_a_single_process_run_reads_its_sqlite_storage(
    tmp_path: Path, fake_train: FakeTrain, capsys: pytest.CaptureFixture[str]
) -> None:
    run_hpo(settings(strategies=("random", "tpe"), rounds=3), tmp_path / "run", progress=False)
    fake_train.calls.clear()
    flags = ["hpo", "--quick", "--strategies", "random,tpe", "--energy-source", "estimate", "--rounds", "3"]
    assert train_main([*flags, "--report-only", "--out", str(tmp_path / "run")]) == 0
    assert fake_train.calls == []  # nothing trained, not even the warm-up
    assert capsys.readouterr().out.strip() == str(tmp_path / "run" / "hpo_trials.csv")
    assert '"report_only": true' in (tmp_path / "run" / "hpo_settings.json").read_text()

    assert train_main([*flags, "--report-only", "--out", str(tmp_path / "empty")]) == 2
    assert "no storage at" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()
    # Other settings name other studies, and the message says so.
    assert train_main([*flags, "--epochs", "3", "--report-only", "--out", str(tmp_path / "run")]) == 2
    assert "nothing to report for these settings" in capsys.readouterr().err
    # A shorter run's report: the first rounds of each study, as a run with --rounds 2 reports.
    assert train_main([*flags[:-1], "2", "--report-only", "--out", str(tmp_path / "run")]) == 0
    assert [r["round"] for r in read_trials_csv(tmp_path / "run" / "hpo_trials.csv")] == ["1", "2"] * 2


def test_study_names_are_checked_and_a_bare_postgresql_url_uses_psycopg() -> None:
    with pytest.raises(TrainerError, match="study_name must be"):
        settings(study_name="a b")
    with pytest.raises(TrainerError, match="study_name must be"):
        settings(study_name="-x")
    assert study_name(settings(study_name="exp"), "bayes", 1).startswith("exp-bayes-r1-")
    assert study_name(settings(), "bayes", 1) == study_name(settings(study_name="hpo"), "bayes", 1)
    # SQLAlchemy reads a bare postgresql:// as psycopg2's; the URL is given a driver that is here.
    bare = driver_url("postgresql://u:secret@127.0.0.1/db")
    assert bare.startswith("postgresql+") and "u:secret@" in bare
    sqlalchemy.engine.make_url(bare).get_dialect().import_dbapi()
    assert (
        display_url("postgresql+psycopg://u:secret@127.0.0.1/db") == "postgresql+psycopg://u:***@127.0.0.1/db"
    )
    # A storage that cannot be reached is a user error, its password hidden (port 1: nothing listens).
    with pytest.raises(TrainerError, match=r"cannot open the storage postgresql\+psycopg://u:\*\*\*@127"):
        open_storage("postgresql+psycopg://u:secret@127.0.0.1:1/db", shared=True)
