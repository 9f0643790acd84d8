"""Distributed load (issue 16, part 2): a trace dealt among Locust workers, their records merged by
the master. The dealing, the wire format and the merge in-process; then a real Locust master and
two workers on 127.0.0.1 against a real server: every arrival of the trace sent exactly once, and
the same results files as one process writes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack  # type: ignore[import-untyped]  # Locust's message encoding (its dependency)
import pytest

from loadgen.errors import LoadgenError
from loadgen.loadtest import (
    LOST,
    NOT_SENT,
    RequestRecord,
    build_parser,
    build_summary,
    main,
    plan,
    run_figures,
)
from loadgen.loadtest.distributed import (
    Collector,
    Distribution,
    Share,
    chunks,
    record_from_wire,
    record_to_wire,
    share_indices,
)
from loadgen.loadtest.settings import LOCUSTFILE, LoadtestSettings
from loadgen.trace import Trace, write_trace
from studies.kit.flags import dataclass_from_args
from tests.conftest import REPO, ServerProcess, free_port, server_process

#: A model that answers in 20 ms, batches of up to 4: the requests overlap a little.
FAST_MODEL = ("--model", "tests.fakes:slow_classifier", "--max-batch-size", "4", "--no-access-log")
#: What every run writes, whatever the number of processes.
RESULT_FILES = {
    "summary.json",
    "requests.csv",
    "locust_stats.csv",
    "locust_failures.csv",
    "locust_exceptions.csv",
    "locust.log",
}


def _settings(*argv: str) -> LoadtestSettings:
    settings: LoadtestSettings = dataclass_from_args(LoadtestSettings, build_parser().parse_args(list(argv)))
    return settings


def _records(n: int) -> list[RequestRecord]:
    return [RequestRecord(i, f"digits-{i}", scheduled_s=i * 0.1) for i in range(n)]


def _answered(record: RequestRecord) -> RequestRecord:
    assert record.scheduled_s is not None
    start = record.scheduled_s + 0.001
    return RequestRecord(
        record.index, record.image_id, record.scheduled_s, start, start + 0.02, "200", 1, 0.01, "estimate"
    )


def _on_the_wire(rows: object) -> list[list[object]]:
    """Through msgpack, as Locust's messages carry them."""
    loaded: list[list[object]] = msgpack.loads(msgpack.dumps(rows), raw=False)
    return loaded


# --- in-process: dealing, wire, merge, settings ------------------------------------------------


@pytest.mark.parametrize("arrivals", [0, 1, 7, 30])
@pytest.mark.parametrize("shares", [1, 2, 3, 8])
def test_every_arrival_is_dealt_to_exactly_one_share(arrivals: int, shares: int) -> None:
    dealt = [i for k in range(shares) for i in share_indices(arrivals, shares, k)]
    assert sorted(dealt) == list(range(arrivals))
    # Interleaved: each share sends every shares-th arrival, an even slice of the whole trace.
    assert list(share_indices(arrivals, shares, 0)) == list(range(0, arrivals, shares))


def test_shares_follow_the_workers_connection_order() -> None:
    collector = Collector.deal(_records(5), [("late", 1), ("early", 0)])
    assert [(s.worker, s.share, list(s.indices)) for s in collector.shares.values()] == [
        ("early", 0, [0, 2, 4]),
        ("late", 1, [1, 3]),
    ]
    assert collector.arrivals("late") == ((1, 0.1, "digits-1"), (3, 0.30000000000000004, "digits-3"))
    with pytest.raises(LoadgenError, match="no Locust worker"):
        Collector.deal(_records(5), [])


def test_a_share_and_records_survive_locusts_message_encoding() -> None:
    share = Share(
        share=1,
        shares=2,
        arrivals=((1, 0.05, "digits-1"), (3, 0.15, "photo-3")),
        stop_after_s=None,
        images="digits",
        image_count=64,
        top_k=1,
        timeout_ms=250.0,
        max_in_flight=10,
        drain_timeout_s=60.0,
    )
    assert Share.from_wire(msgpack.loads(msgpack.dumps(share.to_wire()), raw=False)) == share
    records = [_answered(r) for r in _records(5)]
    records[4] = RequestRecord(4, "digits-4", 0.4)  # not sent: Nones on the wire
    parts = list(chunks(records, size=2))
    assert [len(p) for p in parts] == [2, 2, 1]
    assert [record_from_wire(row) for part in parts for row in _on_the_wire(part)] == records
    assert list(chunks([], size=2)) == [[]]  # an empty share still sends its last message


def test_the_master_merges_each_arrival_once_and_counts_a_silent_workers_as_lost() -> None:
    records = _records(6)
    collector = Collector.deal(records, [("w0", 0), ("w1", 1)])
    mine = [_answered(records[i]) for i in (0, 2, 4)]
    collector.add("w0", _on_the_wire([record_to_wire(r) for r in mine[:2]]), last=False, finished=False)
    stray = _answered(records[1])  # w1's arrival, from w0
    twice = mine[0]
    rows = [record_to_wire(r) for r in (mine[2], stray, twice)]
    collector.add("w0", _on_the_wire(rows), last=True, finished=True)
    assert not collector.done  # w1 has not reported
    collector.add("w1", [record_to_wire(_answered(records[1]))], last=False, finished=False)
    collector.leave("w1")  # then it went away
    assert (collector.done, collector.finished) == (True, False)
    warnings = collector.close()

    assert collector.records is records and records[0] == mine[0]  # the master's own list, filled in place
    assert [r.status for r in records] == ["200", "200", "200", LOST, "200", LOST]
    assert [s.as_dict()["received"] for s in collector.shares.values()] == [3, 1]
    assert any("arrival 1, not in its share" in w for w in warnings)
    assert any("arrival 0 came back twice" in w for w in warnings)
    assert any("worker 1 (w1) never reported 2 of its 3 requests" in w for w in warnings)
    assert collector.answered() == 4

    summary = build_summary(
        records,
        mode="trace",
        server=None,
        lag_threshold_ms=10.0,
        finished=collector.finished,
        duration_s=1.0,
        settings={},
        files={},
        distributed=collector.as_dict(),
        extra_warnings=warnings,
    )
    assert summary["requests"] == {
        "total": 6,
        "sent": 4,
        "answered": 4,
        "by_status": {"200": 4, LOST: 2},
        "cut_at_stop": 0,
    }
    assert summary["distributed"]["workers"] == 2
    assert set(warnings) <= set(summary["warnings"]) and not summary["finished"]
    assert run_figures(records, None).errors == 2  # lost requests are errors, as not_sent ones
    single = build_summary(
        records,
        mode="trace",
        server=None,
        lag_threshold_ms=10.0,
        finished=True,
        duration_s=1.0,
        settings={},
        files={},
    )
    assert "distributed" not in single  # a single process's summary is unchanged


def test_an_unreported_arrival_was_not_sent_by_the_master() -> None:
    records = _records(2)
    collector = Collector.deal(records, [("w0", 0)])
    assert [r.status for r in records] == [NOT_SENT, NOT_SENT]
    collector.add("stranger", [], last=True, finished=True)
    assert collector.problems == ["records from stranger, a worker that was dealt no share, ignored"]


def test_workers_flags_make_a_master_on_loopback() -> None:
    assert _settings().distribution is None  # one process, as before
    assert _settings("--workers", "2").distribution == Distribution(2, 2, "127.0.0.1", 5557)
    remote = _settings("--workers", "1", "--expect-workers", "3", "--master-port", "6000").distribution
    assert remote is not None and remote.remote_workers == 2 and remote.connect_host == "127.0.0.1"
    assert (
        remote.remote_command() == "greenserve loadtest --worker --master-host 127.0.0.1 --master-port 6000"
    )
    assert remote.master_args()[:6] == [
        "--master",
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        "6000",
        "--expect-workers",
    ]
    anywhere = Distribution(0, 1, "0.0.0.0", 5557)  # an address compared, never bound
    assert anywhere.connect_host == "127.0.0.1" and "<this machine's address>" in anywhere.remote_command()
    worker = _settings("--worker", "--master-host", "127.0.0.1")
    assert worker.worker and worker.distribution is None
    line = plan(_settings("--workers", "2", "--host", "http://h:1"), Trace.from_times([0.0, 1.0]))
    assert (
        "2 arrivals over 1 s against http://h:1 dealt among 2 Locust workers (master on 127.0.0.1:5557)"
        in line
    )


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--workers", "2", "--users", "3"], "closed loop (--users/--stages) runs in one process"),
        (["--workers", "0"], "--expect-workers (0) must be ≥ 1"),
        (["--workers", "3", "--expect-workers", "2"], "must be ≥ 1 and ≥ --workers (3)"),
        (["--workers", "-1"], "--workers must be ≥ 0"),
        (["--master-port", "0"], "--master-port must be in 1..65535"),
        (["--worker", "--workers", "2"], "--worker joins a master"),
        (["--worker", "--trace", "t.jsonl"], "takes the trace and the settings from its master"),
    ],
)
def test_bad_distributed_settings_are_one_line_and_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loadtest: ") and fragment in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_closed_loop_master_is_refused_before_any_load(tmp_path: Path) -> None:
    # Nothing listens on port 9: the refusal comes before the server is asked anything.
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--master"]
    argv += ["--master-bind-host", "127.0.0.1", "--master-bind-port", str(free_port())]
    argv += ["-u", "2", "-t", "1s", "-H", "http://127.0.0.1:9"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "closed-loop users (-u, --stages) run in one process" in done.stderr


# --- Locust's master and workers against a real server -----------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with server_process(
        tmp_path_factory.mktemp("server"), *FAST_MODEL, env={"FAKE_DELAY_S": "0.02"}
    ) as running:
        yield running


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _check_sent_once_each(out: Path, trace: Trace, workers: int) -> dict[str, object]:
    """Every arrival in requests.csv once, answered, at its place; the summary, Locust's statistics
    and the server's own count agree; each worker sent its share."""
    n = len(trace)
    rows = _rows(out / "requests.csv")
    assert [int(r["index"]) for r in rows] == list(range(n))
    assert [r["status"] for r in rows] == ["200"] * n, rows
    assert [float(r["scheduled_s"]) for r in rows] == pytest.approx(list(trace.times), abs=1e-6)
    assert [r["image_id"] for r in rows] == list(trace.image_ids or ())
    # Started at (never before) the schedule, from the master's one origin.
    assert all(float(r["lag_ms"]) > -20 for r in rows), rows
    raw: dict[str, object] = json.loads((out / "summary.json").read_text())
    assert raw["mode"] == "trace" and raw["finished"] is True
    assert raw["requests"] == {
        "total": n,
        "sent": n,
        "answered": n,
        "by_status": {"200": n},
        "cut_at_stop": 0,
    }
    server_side = raw["server"]
    assert isinstance(server_side, dict)
    assert server_side["requests_by_status"] == {"200": n}  # the server saw each one once
    stats = _rows(out / "locust_stats.csv")
    assert int(next(r for r in stats if r["Name"] == "/classify")["Request Count"]) == n
    distributed = raw["distributed"]
    assert isinstance(distributed, dict) and distributed["workers"] == workers
    shares = distributed["shares"]
    assert [s["arrivals"] for s in shares] == [len(share_indices(n, workers, k)) for k in range(workers)]
    assert all(s["received"] == s["arrivals"] and s["reported"] and s["finished"] for s in shares)
    assert len({s["worker"] for s in shares}) == workers
    assert {p.name for p in out.iterdir()} >= RESULT_FILES
    return raw


@pytest.mark.server
def test_make_loadtest_with_two_workers_sends_each_arrival_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    # 30 arrivals in 1 s, with bursts of simultaneous ones, each its own image.
    times = sorted([i * 0.04 for i in range(24)] + [0.5] * 6)
    trace = Trace.from_times(times, [f"digits-{i}" for i in range(len(times))])
    trace_path = write_trace(trace, tmp_path / "trace.jsonl")
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "loadgen.loadtest", "--host", server.url, "--trace", str(trace_path)]
    argv += ["--images", "digits", "--out", str(out), "--workers", "2", "--master-port", str(free_port())]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "dealt among 2 Locust workers (master on 127.0.0.1:" in done.stderr  # the plan
    assert f"Results: {out / 'summary.json'}" in done.stdout
    _check_sent_once_each(out, trace, workers=2)
    # Each worker process sent one share (which one: the order in which they connected).
    logs = [(out / f"locust_worker_{k}.log").read_text() for k in (0, 1)]
    sent = [[k for k in (0, 1) if f"share {k} of 2: 15 records sent to the master" in log] for log in logs]
    assert sorted(sent) == [[0], [1]], logs


@pytest.mark.server
def test_a_worker_started_elsewhere_joins_with_master_host(server: ServerProcess, tmp_path: Path) -> None:
    # One worker started by the master's command, one "from another machine" (here, loopback too).
    trace = Trace.from_times([i * 0.05 for i in range(12)], [f"digits-{i % 4}" for i in range(12)])
    trace_path = write_trace(trace, tmp_path / "trace.csv")
    out, port = tmp_path / "run", free_port()
    master = [sys.executable, "-m", "loadgen.loadtest", "--host", server.url, "--trace", str(trace_path)]
    master += ["--images", "digits", "--out", str(out), "--workers", "1", "--expect-workers", "2"]
    master += ["--master-port", str(port)]
    worker = [sys.executable, "-m", "loadgen.loadtest", "--worker", "--master-host", "127.0.0.1"]
    worker += ["--master-port", str(port)]
    pipe = subprocess.PIPE
    with (
        subprocess.Popen(master, stdout=pipe, stderr=pipe, text=True, cwd=REPO) as leader,
        subprocess.Popen(worker, stdout=pipe, stderr=pipe, text=True, cwd=REPO) as joined,
    ):
        try:
            stdout, stderr = leader.communicate(timeout=300)
            worker_output = "".join(joined.communicate(timeout=60))
        finally:
            for proc in (leader, joined):
                if proc.poll() is None:
                    proc.kill()
    assert leader.returncode == 0, stderr[-3000:] + stdout[-3000:]
    assert "waiting for 1 workers from other machines; on each, run: greenserve loadtest --worker" in stderr
    assert joined.returncode == 0, worker_output[-3000:]
    assert "records sent to the master" in worker_output
    _check_sent_once_each(out, trace, workers=2)
