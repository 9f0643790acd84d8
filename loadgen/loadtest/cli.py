"""``make loadtest`` / ``greenserve loadtest``: one run against a running server, Locust's output
shown as it goes. The flags are generated from :class:`~loadgen.loadtest.settings.LoadtestSettings`.

With ``--workers N`` Locust runs as a master and N worker processes here (``--expect-workers`` for
more from other machines); ``--worker`` is one such worker of a master elsewhere
(:mod:`loadgen.loadtest.distributed`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

from loadgen.loadtest.run import run_closed, run_trace, run_worker
from loadgen.loadtest.settings import CSV_PREFIX_NAME, TRACE_NAME, LoadtestSettings
from loadgen.loadtest.stages import parse_stages
from loadgen.trace import Trace, read_trace, uniform_jitter, write_trace
from studies.kit.errors import LabError
from studies.kit.flags import add_dataclass_flags, dataclass_from_args
from studies.kit.progress import announce


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greenserve loadtest",
        description=(
            "Load test a running greenserve with Locust (headless). Default: an open-loop trace of "
            "16 req/s ± 20 % for 30 s. Results (summary.json, requests.csv, Locust's CSVs) go to --out. "
            "Given --users or --stages, a closed loop instead. Given --workers N, Locust runs as a master "
            "and N workers, the trace's arrivals dealt among them; --worker joins a master elsewhere."
        ),
    )
    add_dataclass_flags(parser, LoadtestSettings)
    return parser


def plan(settings: LoadtestSettings, trace: Trace | None) -> str:
    """Say what the run will do and about how long it takes (:func:`studies.kit.progress.announce`)."""
    if trace is None:  # closed loop
        stages = parse_stages(settings.stages) if settings.stages is not None else ()
        run_s = sum(s.duration_s for s in stages) if stages else settings.run_time_s
        users = f"stages {settings.stages} ({settings.stage_mode})" if stages else f"{settings.users} users"
        what = f"closed loop, {users} against {settings.host}"
        return announce("loadtest", what, units=max(1, len(stages)), estimate_s=run_s)
    run_s = trace.duration_s if settings.max_s is None else min(trace.duration_s, settings.max_s)
    what = f"open loop, {len(trace)} arrivals over {trace.duration_s:.3g} s against {settings.host}"
    distribution = settings.distribution
    if distribution is not None:
        what += (
            f" dealt among {distribution.expect_workers} Locust workers "
            f"(master on {distribution.bind_host}:{distribution.port})"
        )
    return announce("loadtest", f"{what} (then the answers are awaited)", units=len(trace), estimate_s=run_s)


class _BothLoops(TypedDict):
    """What the closed and the open loop take alike."""

    images: str | None
    timeout_ms: float | None
    top_k: int
    echo: bool


def _run(settings: LoadtestSettings) -> Path | None:
    """The run; the summary's path (a worker writes none)."""
    if settings.worker:
        what = f"a Locust worker of the master at {settings.master_host}:{settings.master_port}"
        logging.getLogger(__name__).info("loadtest: %s, until the master ends the test", what)
        run_worker(settings.master_host, settings.master_port)
        return None
    # Locust's output is shown live (echo): make loadtest is watched.
    common = _BothLoops(
        images=settings.images, timeout_ms=settings.timeout_ms, top_k=settings.top_k, echo=True
    )
    if settings.closed:
        plan(settings, None)
        summary = run_closed(
            settings.host,
            settings.out,
            users=settings.users or 1,
            spawn_rate=settings.spawn_rate,
            run_time_s=None if settings.stages is not None else settings.run_time_s,
            stages=settings.stages,
            stage_mode=settings.stage_mode,
            think_ms=settings.think_ms,
            **common,
        )
    else:
        generated = uniform_jitter(settings.rate, settings.jitter, settings.duration_s, seed=settings.seed)
        trace_path = settings.trace or write_trace(generated, settings.out / TRACE_NAME)
        plan(settings, read_trace(trace_path))
        distribution = settings.distribution
        if distribution is not None and distribution.remote_workers:
            logging.getLogger(__name__).info(
                "loadtest: waiting for %d workers from other machines; on each, run: %s",
                distribution.remote_workers,
                distribution.remote_command(),
            )
        summary = run_trace(
            settings.host,
            trace_path,
            settings.out,
            max_s=settings.max_s,
            distribution=distribution,
            **common,
        )
    # Locust has printed the report (format_report) above its own tables; say where the files are.
    print(
        f"\nResults: {summary.summary_path}, {summary.request_log_path}, "
        f"{settings.out / CSV_PREFIX_NAME}_stats.csv"
    )
    return summary.summary_path


def main(argv: Sequence[str] | None = None) -> int:
    """``make loadtest``: one run against a running server; a user error is one line and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        _run(dataclass_from_args(LoadtestSettings, args))
    except LabError as exc:  # LoadgenError, or the kit's own
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    return 0
