"""A load test's settings: the file names and defaults a run shares with the locustfile, and
:class:`LoadtestSettings`, what ``make loadtest`` / ``greenserve loadtest`` is asked to do (its flags
are generated from it, :mod:`studies.kit.flags`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from loadgen.errors import LoadgenError
from loadgen.loadtest.distributed import DEFAULT_MASTER_BIND_HOST, DEFAULT_MASTER_PORT, Distribution
from loadgen.loadtest.stages import STAGE_MODES, StageMode, parse_stages
from studies.kit.flags import DEFAULT_RESULTS

SCHEMA = "greenserve-loadtest/1"
REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parents[1] / "locustfile.py"

#: A request that started more than this after its scheduled time counts as late.
DEFAULT_LAG_THRESHOLD_MS = 10.0
#: After the last arrival of a trace, how long answers are awaited before the run stops.
DEFAULT_DRAIN_TIMEOUT_S = 60.0
#: Locust's start-up and shutdown, on top of the run itself, before a subprocess counts as hung.
STARTUP_MARGIN_S = 120.0

SUMMARY_NAME = "summary.json"
REQUEST_LOG_NAME = "requests.csv"
CSV_PREFIX_NAME = "locust"
LOG_NAME = "locust.log"
#: The trace ``make loadtest`` generates when it is given none, next to the results.
TRACE_NAME = "trace.jsonl"
#: A distributed run's worker on this machine: its output (``{}``: 0, 1, …).
WORKER_LOG_NAME = "locust_worker_{}.log"


def _help(text: str, *aliases: str) -> dict[str, object]:
    return {"help": text, "aliases": aliases}


@dataclass(frozen=True)
class LoadtestSettings:
    """One ``make loadtest`` run. Open loop (the default) replays ``trace``, or generates one of
    ``rate`` req/s ± ``jitter`` for ``duration_s``; given ``users`` or ``stages`` it is closed loop."""

    host: str = field(default="http://127.0.0.1:8000", metadata=_help("The server."))
    out: Path = field(default=DEFAULT_RESULTS / "loadtest", metadata=_help("Output directory."))
    images: str | None = field(
        default=None, metadata=_help("digits, photos or a directory; none: what suits the served model.")
    )
    top_k: int = field(default=1, metadata=_help("top_k of each request."))
    timeout_ms: float | None = field(default=None, metadata=_help("X-Request-Timeout-Ms of each request."))
    # Open loop.
    trace: Path | None = field(default=None, metadata=_help("Open loop: replay this trace (.jsonl or .csv)."))
    rate: float = field(default=16.0, metadata=_help("Open loop, generated trace: req/s."))
    jitter: float = field(default=0.2, metadata=_help("Open loop, generated trace: ± fraction of the gap."))
    duration_s: float = field(default=30.0, metadata=_help("Open loop, generated trace: seconds."))
    seed: int = field(default=0, metadata=_help("Open loop, generated trace: seed."))
    max_s: float | None = field(
        default=None, metadata=_help("Open loop: stop after this many seconds, answered or not.")
    )
    # Closed loop.
    users: int | None = field(
        default=None, metadata=_help("Closed loop: concurrent users, each waiting for its answer.")
    )
    spawn_rate: float = field(default=1.0, metadata=_help("Closed loop: users started per second."))
    run_time_s: float = field(default=30.0, metadata=_help("Closed loop: run time (s), without --stages."))
    stages: str | None = field(
        default=None, metadata=_help('Closed loop: users per stage, e.g. "10s:5,20s:20,10s:5".')
    )
    stage_mode: StageMode = field(default="step", metadata=_help("Closed loop: step or ramp."))
    think_ms: float = field(default=0.0, metadata=_help("Closed loop: pause between a user's requests."))
    # Distributed (Locust's master and workers): open loop only.
    workers: int | None = field(
        default=None,
        metadata=_help(
            "Distributed: Locust as a master with this many worker processes on this machine, "
            "the trace's arrivals dealt among them."
        ),
    )
    expect_workers: int | None = field(
        default=None,
        metadata=_help(
            "Distributed: workers to wait for before the trace starts (default: --workers; "
            "more when workers on other machines join)."
        ),
    )
    master_bind_host: str = field(
        default=DEFAULT_MASTER_BIND_HOST,
        metadata=_help(
            "Distributed: where the master listens for workers (an interface's address lets others in)."
        ),
    )
    master_port: int = field(
        default=DEFAULT_MASTER_PORT, metadata=_help("The master's port for its workers.")
    )
    worker: bool = field(
        default=False,
        metadata=_help(
            "Be one Locust worker of the master at --master-host:--master-port (it sends the rest)."
        ),
    )
    master_host: str = field(default="127.0.0.1", metadata=_help("With --worker: the master's address."))

    def __post_init__(self) -> None:
        if self.stage_mode not in STAGE_MODES:
            modes = ", ".join(STAGE_MODES)
            raise LoadgenError(f"--stage-mode must be one of {modes}, got {self.stage_mode!r}")
        if self.closed and self.trace is not None:
            raise LoadgenError("--trace replays open-loop; leave out --users/--stages, or the trace")
        if self.stages is not None:
            parse_stages(self.stages)  # a malformed spec is refused here, before Locust starts
        for name in ("spawn_rate", "run_time_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise LoadgenError(f"--{name.replace('_', '-')} must be a number > 0, got {value!r}")
        if self.users is not None and self.users < 1:
            raise LoadgenError(f"--users must be ≥ 1, got {self.users}")
        if not 0 < self.master_port < 65536:
            raise LoadgenError(f"--master-port must be in 1..65535, got {self.master_port}")
        if self.worker:
            if self.workers is not None or self.expect_workers is not None:
                raise LoadgenError(
                    "--worker joins a master; --workers/--expect-workers start one: give one of them"
                )
            if self.closed or self.trace is not None:
                raise LoadgenError(
                    "a --worker takes the trace and the settings from its master: leave them out"
                )
        if self.distribution is not None and self.closed:
            raise LoadgenError(
                "--workers deals an open-loop trace among Locust workers; closed loop (--users/--stages) "
                "runs in one process"
            )

    @property
    def distribution(self) -> Distribution | None:
        """A master and its workers (given ``workers`` or ``expect_workers``); ``None``: one process."""
        if self.workers is None and self.expect_workers is None:
            return None
        workers = self.workers or 0
        expect = self.expect_workers if self.expect_workers is not None else workers
        return Distribution(workers, expect, self.master_bind_host, self.master_port)

    @property
    def closed(self) -> bool:
        """Closed loop: given ``users`` or ``stages``."""
        return self.users is not None or self.stages is not None
