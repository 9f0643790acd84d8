"""Running Locust: :mod:`loadgen.locustfile` headless in a subprocess, never imported here.

Locust monkey-patches the standard library with gevent when it is imported, so a caller (the
sweep, a test, ``make loadtest``) only ever starts it as a process and reads back what it wrote:
``summary.json``, ``requests.csv``, Locust's CSVs and ``locust.log`` in the output directory.

A distributed replay (:class:`~loadgen.loadtest.distributed.Distribution`) starts Locust as a
master and its workers on this machine as processes too (``locust_worker_K.log``); the master
writes the same files.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from loadgen.errors import LoadgenError
from loadgen.loadtest.distributed import COLLECT_GRACE_S, START_LEAD_S, STATS_CATCH_UP_S, Distribution
from loadgen.loadtest.settings import (
    CSV_PREFIX_NAME,
    DEFAULT_DRAIN_TIMEOUT_S,
    LOCUSTFILE,
    LOG_NAME,
    REPO_ROOT,
    REQUEST_LOG_NAME,
    STARTUP_MARGIN_S,
    SUMMARY_NAME,
    WORKER_LOG_NAME,
)
from loadgen.loadtest.stages import StageMode, parse_stages
from loadgen.loadtest.summary import LoadtestSummary
from loadgen.trace import read_trace


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT, like Ctrl-C (Locust then writes its CSVs), then SIGKILL to the group after 10 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def locust_argv(
    base_url: str,
    out_dir: Path,
    *,
    images: str | None,
    top_k: int,
    timeout_ms: float | None,
    max_s: float | None,
    extra: Sequence[str] = (),
) -> list[str]:
    """Locust's command line for a headless run writing into ``out_dir``."""
    argv = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host",
        base_url,
        "--summary-json",
        str(out_dir / SUMMARY_NAME),
        "--request-log",
        str(out_dir / REQUEST_LOG_NAME),
        "--csv",
        str(out_dir / CSV_PREFIX_NAME),
        "--top-k",
        str(top_k),
        # Failed requests (429, 504, …) are results here, not a failure of the run.
        "--exit-code-on-error",
        "0",
    ]
    if images is not None:
        argv += ["--images", images]
    if timeout_ms is not None:
        argv += ["--timeout-ms", f"{timeout_ms:g}"]
    if max_s is not None:
        argv += ["--run-time", f"{max(1, math.ceil(max_s))}s"]
    return [*argv, *extra]


def worker_argv(master_host: str, master_port: int) -> list[str]:
    """A Locust worker of the master at ``master_host:master_port``: everything else (the server,
    its share of the trace, the images and the requests' settings) comes from the master."""
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--worker",
        "--master-host",
        master_host,
        "--master-port",
        str(master_port),
        "--exit-code-on-error",
        "0",
    ]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }


class _WorkerError(Exception):
    def __init__(self, number: int, code: int) -> None:
        super().__init__(number, code)
        self.number, self.code = number, code


def _wait_watching(
    proc: subprocess.Popen[bytes], workers: Sequence[subprocess.Popen[bytes]], wait_s: float
) -> int:
    """The master's exit code; :class:`_WorkerError` as soon as a worker fails before it ends
    (a worker that ends well has been told to quit by the master)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return proc.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
        for number, worker in enumerate(workers):
            code = worker.poll()
            if code is not None and code != 0:
                raise _WorkerError(number, code)


def _run_locust(
    argv: Sequence[str],
    out_dir: Path,
    *,
    wait_s: float,
    echo: bool,
    workers: Sequence[Sequence[str]] = (),
) -> LoadtestSummary:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / SUMMARY_NAME
    summary_path.unlink(missing_ok=True)  # a stale summary must never pass for this run's
    log_path = out_dir / LOG_NAME
    env = _env()
    if workers:
        return _run_distributed(argv, workers, out_dir, wait_s=wait_s, echo=echo, env=env)
    with log_path.open("wb") as log:
        # Our own session, so that _stop reaches whatever Locust started; echo shows Locust's
        # output live (make loadtest), otherwise it goes to the log for the error message.
        proc = subprocess.Popen(
            list(argv),
            stdout=None if echo else log,
            stderr=None if echo else subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=env,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise LoadgenError(
                f"locust did not finish within {wait_s:.0f} s and was stopped; "
                f"its output:\n{'(above)' if echo else _log_tail(log_path)}"
            ) from None
        finally:
            _stop(proc)
    if code != 0 or not summary_path.exists():
        where = "(above)" if echo else f"({log_path}, last lines):\n{_log_tail(log_path)}"
        raise LoadgenError(f"locust failed (exit code {code}) without a summary; its output {where}")
    return LoadtestSummary.from_json(summary_path, csv_prefix=out_dir / CSV_PREFIX_NAME, log_path=log_path)


def _run_distributed(
    argv: Sequence[str],
    workers: Sequence[Sequence[str]],
    out_dir: Path,
    *,
    wait_s: float,
    echo: bool,
    env: dict[str, str],
) -> LoadtestSummary:
    """The master (``argv``: its output shown or in ``locust.log``) and its workers on this machine
    (each in ``locust_worker_K.log``); the master's summary."""
    summary_path, log_path = out_dir / SUMMARY_NAME, out_dir / LOG_NAME
    worker_logs = [out_dir / WORKER_LOG_NAME.format(number) for number in range(len(workers))]
    started: list[subprocess.Popen[bytes]] = []
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            stdout=None if echo else log,
            stderr=None if echo else subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=env,
            start_new_session=True,
        )
        try:
            for worker, worker_log in zip(workers, worker_logs, strict=True):
                with worker_log.open("wb") as wlog:
                    started.append(
                        subprocess.Popen(
                            list(worker),
                            stdout=wlog,
                            stderr=subprocess.STDOUT,
                            cwd=REPO_ROOT,
                            env=env,
                            start_new_session=True,
                        )
                    )
            code = _wait_watching(proc, started, wait_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise LoadgenError(
                f"the Locust master did not finish within {wait_s:.0f} s and was stopped; "
                f"its output:\n{'(above)' if echo else _log_tail(log_path)}"
            ) from None
        except _WorkerError as failed:
            _stop(proc)
            path = worker_logs[failed.number]
            raise LoadgenError(
                f"Locust worker {failed.number} failed (exit code {failed.code}); "
                f"its output ({path}, last lines):\n{_log_tail(path)}"
            ) from None
        finally:
            _stop(proc)
            for worker_proc in started:
                _stop(worker_proc)  # told to quit by the master, it is usually gone already
    if code != 0 or not summary_path.exists():
        where = "(above)" if echo else f"({log_path}, last lines):\n{_log_tail(log_path)}"
        raise LoadgenError(
            f"the Locust master failed (exit code {code}) without a summary; its output {where}\n"
            f"(the workers' output: {', '.join(str(p) for p in worker_logs)})"
        )
    return LoadtestSummary.from_json(summary_path, csv_prefix=out_dir / CSV_PREFIX_NAME, log_path=log_path)


def run_worker(master_host: str, master_port: int) -> None:
    """``greenserve loadtest --worker``: one Locust worker of the master at ``master_host:master_port``,
    its output shown, until the master ends the test (or Ctrl-C)."""
    proc = subprocess.Popen(
        worker_argv(master_host, master_port), cwd=REPO_ROOT, env=_env(), start_new_session=True
    )
    try:
        code = proc.wait()
    finally:
        _stop(proc)
    if code != 0:
        raise LoadgenError(f"the Locust worker ended with exit code {code}; its output is above")


def run_trace(
    base_url: str,
    trace_path: Path,
    out_dir: Path,
    *,
    images: str | None,
    timeout_ms: float | None = None,
    top_k: int = 1,
    max_s: float | None = None,
    echo: bool = False,
    distribution: Distribution | None = None,
) -> LoadtestSummary:
    """Replay ``trace_path`` open-loop against ``base_url`` with Locust (a subprocess); the summary.

    Each request starts at its trace time however slow the answers are; the run ends when every
    request has answered, or at ``max_s`` (those not answered then are ``unfinished``, those not
    sent ``not_sent``, both counted as errors). Failed requests are results, not an exception;
    :class:`LoadgenError` means the run itself failed (bad trace or images, unreachable server,
    Locust crashed), with the tail of Locust's output.

    Given a ``distribution``, Locust runs as a master with ``distribution.workers`` worker
    processes here (and waits for ``expect_workers`` in all); the arrivals are dealt among the
    workers and the master writes the same files.
    """
    trace = read_trace(trace_path)  # fail here, with the trace's own message, before starting Locust
    argv = locust_argv(
        base_url,
        out_dir,
        images=images,
        top_k=top_k,
        timeout_ms=timeout_ms,
        max_s=max_s,
        extra=["--trace", str(trace_path)],
    )
    run_s = max_s if max_s is not None else trace.duration_s + DEFAULT_DRAIN_TIMEOUT_S
    if distribution is None:
        return _run_locust(argv, out_dir, wait_s=run_s + STARTUP_MARGIN_S, echo=echo)
    # The workers' start-up, the clock's lead, the records' and the statistics' way back.
    extra_s = distribution.wait_s + START_LEAD_S + COLLECT_GRACE_S + STATS_CATCH_UP_S
    worker = worker_argv(distribution.connect_host, distribution.port)
    return _run_locust(
        [*argv, *distribution.master_args()],
        out_dir,
        wait_s=run_s + extra_s + STARTUP_MARGIN_S,
        echo=echo,
        workers=[worker] * distribution.workers,
    )


def run_closed(
    base_url: str,
    out_dir: Path,
    *,
    images: str | None = None,
    users: int = 1,
    spawn_rate: float = 1.0,
    run_time_s: float | None = None,
    stages: str | None = None,
    stage_mode: StageMode = "step",
    think_ms: float = 0.0,
    timeout_ms: float | None = None,
    top_k: int = 1,
    echo: bool = False,
) -> LoadtestSummary:
    """Closed loop: ``users`` users (or the ``stages``), each sending its next request
    ``think_ms`` after its previous answer; latency is from each request's start.

    Either ``run_time_s`` or ``stages`` must bound the run.
    """
    if stages is None and run_time_s is None:
        raise LoadgenError("a closed-loop run needs run_time_s or stages to end")
    extra = ["--users", str(users), "--spawn-rate", f"{spawn_rate:g}", "--think-ms", f"{think_ms:g}"]
    if stages is not None:
        extra += ["--stages", stages, "--stage-mode", stage_mode]
    run_s = sum(s.duration_s for s in parse_stages(stages)) if stages is not None else 0.0
    if run_time_s is not None:
        run_s = run_time_s if stages is None else min(run_s, run_time_s)
    argv = locust_argv(
        base_url, out_dir, images=images, top_k=top_k, timeout_ms=timeout_ms, max_s=run_time_s, extra=extra
    )
    return _run_locust(argv, out_dir, wait_s=run_s + STARTUP_MARGIN_S, echo=echo)
