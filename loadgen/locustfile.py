"""Locust load for greenserve's ``POST /classify``: closed-loop users, staged load, or open-loop trace replay.

Run it with Locust itself, headless or with its web UI, or through :mod:`loadgen.loadtest` (the
sweep, ``make loadtest``), which runs it headless in a subprocess::

    locust -f loadgen/locustfile.py --headless -H http://127.0.0.1:8000 -u 8 -r 2 -t 60s --csv out/lt
    locust -f loadgen/locustfile.py --headless -H http://127.0.0.1:8000 --stages "10s:5,20s:20,10s:5"
    locust -f loadgen/locustfile.py --headless -H http://127.0.0.1:8000 --trace t.jsonl --summary-json s.json

* **Closed loop** (:class:`ClassifyUser`): each user sends a request, waits for its answer, pauses
  ``--think-ms``, sends the next. The load adapts to the server, so latency is measured from each
  request's actual start.
* **Stages** (``--stages``): closed-loop users whose number follows a table of stages.
* **Open loop** (``--trace``, :class:`TraceReplayUser`): each request starts at its trace time
  however slow the answers are, so a slow server cannot slow the load down (no coordinated
  omission); latency is measured from the scheduled time.

Locust uses a :class:`~locust.LoadTestShape` found in the locustfile for *every* run, and then
ignores ``-u``, ``-r`` and ``-t`` unless the shape sets ``use_common_options`` (Locust's documented
switch, custom-load-shape.html#use-common-options). :class:`GreenserveShape` sets it, and without
``--stages`` or ``--trace`` its tick is exactly ``-u`` users at ``-r`` per second until ``-t``: a
plain run behaves as if there were no shape.

At the start and the end of a test the server's ``/metrics`` is scraped; the summary
(``--summary-json``, the figures of :mod:`loadgen.figures`) joins the client's view (status,
latency, lag) with the server's (joules per request and their source, mean batch size,
rejections). The pure parts live in :mod:`loadgen.loadtest`.

**Distributed** (Locust's ``--master`` with ``--worker`` processes, or ``--processes N``): a trace
only. The master deals the arrivals among its workers and sends each its share, then merges the
records they send back and writes the same files as one process would
(:mod:`loadgen.loadtest.distributed`). Closed-loop users run in one process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import gevent  # type: ignore[import-untyped]
import httpx
from gevent.event import Event  # type: ignore[import-untyped]
from gevent.pool import Pool  # type: ignore[import-untyped]
from locust import FastHttpUser, LoadTestShape, User, events, task
from locust.argument_parser import LocustArgumentParser
from locust.contrib.fasthttp import FastHttpSession
from locust.env import Environment
from locust.event import EventHook
from locust.exception import StopUser
from locust.runners import STATE_MISSING, LocalRunner, MasterRunner, WorkerRunner

from loadgen.errors import LoadgenError
from loadgen.images import ImageSourceError, Payload, default_sample_for, load_payloads
from loadgen.loadtest.distributed import (
    COLLECT_GRACE_S,
    ERROR_MESSAGE,
    GO_MESSAGE,
    READY_MESSAGE,
    READY_TIMEOUT_S,
    RECORDS_MESSAGE,
    SHARE_MESSAGE,
    START_LEAD_S,
    STATS_CATCH_UP_S,
    Collector,
    Share,
    chunks,
)
from loadgen.loadtest.records import NOT_SENT, UNFINISHED, RequestRecord, write_request_log
from loadgen.loadtest.report import format_report
from loadgen.loadtest.server_delta import server_delta
from loadgen.loadtest.settings import DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_LAG_THRESHOLD_MS
from loadgen.loadtest.stages import STAGE_MODES, Stage, parse_stages, stage_target
from loadgen.loadtest.summary import build_summary, write_summary
from loadgen.metrics import MetricKey, parse_metrics
from loadgen.trace import Trace, read_trace

logger = logging.getLogger("greenserve.locustfile")

#: Open loop: requests in flight at once (the gevent pool and the HTTP connection pool).
DEFAULT_MAX_IN_FLIGHT = 1000
#: Server look-ups (/v1/model, /metrics) outside the measured requests.
SCRAPE_TIMEOUT_S = 10.0


def _add_arguments(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group(
        "greenserve", "Options of greenserve's locustfile (loadgen/locustfile.py)."
    )
    group.add_argument(
        "--images",
        default=None,
        help="Images to send: digits, photos, or a directory. Default: what suits the served model.",
    )
    group.add_argument(
        "--image-count", type=int, default=64, help="How many sample images to generate (default 64)."
    )
    group.add_argument(
        "--trace", default=None, help="Open loop: replay this trace (.jsonl or .csv) and stop."
    )
    group.add_argument(
        "--stages",
        default=None,
        help='Closed loop: users per stage, DURATION:USERS[@RATE], e.g. "10s:5,20s:20,10s:5".',
    )
    group.add_argument(
        "--stage-mode", choices=STAGE_MODES, default="step", help="step or ramp (default step)."
    )
    group.add_argument(
        "--think-ms", type=float, default=0.0, help="Closed loop: pause after each answer (default 0)."
    )
    group.add_argument(
        "--top-k", type=int, default=1, help="top_k query parameter of each request (default 1)."
    )
    group.add_argument("--timeout-ms", type=float, default=None, help="X-Request-Timeout-Ms of each request.")
    group.add_argument("--summary-json", default=None, help="Write the run's summary (JSON) here.")
    group.add_argument("--request-log", default=None, help="Write one CSV row per request here.")
    group.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help=f"Open loop: most requests in flight (default {DEFAULT_MAX_IN_FLIGHT}); more start late.",
    )
    group.add_argument(
        "--drain-timeout-s",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        help="Open loop: how long to wait for answers after the last arrival "
        f"(default {DEFAULT_DRAIN_TIMEOUT_S:g}).",
    )
    group.add_argument(
        "--lag-threshold-ms",
        type=float,
        default=DEFAULT_LAG_THRESHOLD_MS,
        help="Open loop: a request started later than this after its schedule is late "
        f"(default {DEFAULT_LAG_THRESHOLD_MS:g}).",
    )


def _listen(hook: EventHook, handler: Callable[..., None]) -> None:
    hook.add_listener(handler)  # type: ignore[no-untyped-call]  # locust's EventHook is untyped


_listen(events.init_command_line_parser, _add_arguments)


def _fail(message: str) -> NoReturn:
    """A mistake in the options or the inputs: one clear line and exit code 2, before any load.

    ``SystemExit`` passes through Locust's event hooks, which log and swallow other exceptions.
    """
    logger.error("%s", message)
    sys.exit(2)


@dataclass
class LoadTestRun:
    """The state of this Locust process's test: options, images, plan, records. One instance, :data:`RUN`."""

    environment: Environment | None = None
    options: argparse.Namespace = field(default_factory=argparse.Namespace)
    settings: dict[str, Any] = field(default_factory=dict)
    payloads: list[Payload] = field(default_factory=list)
    trace: Trace | None = None
    stages: tuple[Stage, ...] | None = None
    records: list[RequestRecord] = field(default_factory=list)
    plan: list[Payload] = field(default_factory=list)  # open loop: the payload of each arrival
    t0: float = 0.0
    t0_unix: float = 0.0  # the same instant on the wall clock (to line records up with server logs)
    started_at: float = 0.0
    metrics_before: dict[MetricKey, float] | None = None
    scrape_error: str | None = None
    replay_done: bool = False
    finished: bool = False
    images: str = ""  # the source the payloads came from
    _next: itertools.count[int] = field(default_factory=itertools.count)
    # Distributed: this process's part, the master's merge of its workers' records (and a worker's
    # error, which fails the run), a worker's share.
    role: Literal["local", "master", "worker"] = "local"
    collector: Collector | None = None
    ready_deadline: float = 0.0  # monotonic: every worker ready by then
    collect_deadline: float | None = None  # monotonic, from go: every share back by then
    stats_wait_since: float | None = None
    worker_error: str | None = None
    share: Share | None = None
    share_taken: bool = False
    share_ready: Any = None  # gevent Events: the master's share is here (and loaded); go came
    go: Any = None

    # --- set-up ---------------------------------------------------------------------------------

    def configure(self, environment: Environment) -> None:
        """Check the options and inputs, pick the images, plan the trace; :class:`LoadgenError` if not."""
        self.environment = environment
        # One line per scrape of /metrics would drown Locust's own output.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        options = environment.parsed_options
        if options is None:
            raise LoadgenError("no parsed options (the locustfile must be run by Locust's command line)")
        self.options = options
        host = environment.host
        if not host:
            raise LoadgenError("no server: give --host, e.g. --host http://127.0.0.1:8000")
        if options.trace and options.stages:
            raise LoadgenError("--trace replays open-loop and --stages shapes closed-loop users: give one")
        if not 1 <= options.top_k <= 100:
            raise LoadgenError(f"--top-k must be in 1..100 (the server's limit), got {options.top_k}")
        if options.image_count < 1 or options.max_in_flight < 1:
            raise LoadgenError("--image-count and --max-in-flight must be ≥ 1")
        if options.timeout_ms is not None and not (
            math.isfinite(options.timeout_ms) and options.timeout_ms > 0
        ):
            raise LoadgenError(f"--timeout-ms must be a number > 0, got {options.timeout_ms:g}")
        self.stages = parse_stages(options.stages) if options.stages else None
        self.trace = read_trace(Path(options.trace)) if options.trace else None
        # Given images are checked against the trace before the server is asked anything.
        if options.images:
            self._load_images(options.images)
        model = self._get_json(host, "/v1/model")
        model_name = str(model.get("name") or model.get("model") or "")
        if not options.images:
            self._load_images(default_sample_for(model_name))
        TraceReplayUser.concurrency = options.max_in_flight
        self.settings = {
            "host": host,
            "model": model_name,
            "weights": model.get("weights"),
            "device": model.get("device"),
            "batching": self._get_json(host, "/v1/batching"),
            "images": self.images,
            "image_count": len(self.payloads),
            "trace": options.trace,
            "trace_arrivals": len(self.trace) if self.trace else None,
            "trace_duration_s": self.trace.duration_s if self.trace else None,
            "stages": options.stages,
            "stage_mode": options.stage_mode if options.stages else None,
            "users": None if self.trace or self.stages else options.num_users,
            "spawn_rate": None if self.trace or self.stages else options.spawn_rate,
            "run_time_s": options.run_time,
            "think_ms": None if self.trace else options.think_ms,
            "top_k": options.top_k,
            "timeout_ms": options.timeout_ms,
            "max_in_flight": options.max_in_flight if self.trace else None,
            "drain_timeout_s": options.drain_timeout_s if self.trace else None,
        }

    def _load_images(self, source: str) -> None:
        try:
            self.payloads = load_payloads(source, self.options.image_count)
        except ImageSourceError as exc:
            raise LoadgenError(f"--images {source}: {exc}") from None
        self.images = source
        if self.trace is None:
            return
        by_id = {p.image_id: p for p in self.payloads}
        ids = self.trace.image_ids or (None,) * len(self.trace)
        missing = sorted({i for i in ids if i is not None and i not in by_id})
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            known = f"{self.payloads[0].image_id} … {self.payloads[-1].image_id}"
            raise LoadgenError(
                f"trace {self.options.trace}: image_id {shown} not in the images {source!r} "
                f"({len(self.payloads)} images: {known}); fix the trace or choose --images/--image-count"
            )
        self.plan = [
            by_id[i] if i is not None else self.payloads[n % len(self.payloads)] for n, i in enumerate(ids)
        ]

    @staticmethod
    def _get_json(host: str, path: str) -> dict[str, Any]:
        try:
            with httpx.Client(base_url=host, timeout=SCRAPE_TIMEOUT_S, trust_env=False) as client:
                response = client.get(path)
                response.raise_for_status()
                body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise LoadgenError(f"cannot read {host}{path} (is greenserve running there?): {exc}") from None
        if not isinstance(body, dict):
            raise LoadgenError(f"{host}{path}: expected a JSON object, got {body!r:.80}")
        return body

    def _scrape(self) -> dict[MetricKey, float] | None:
        assert self.environment is not None and self.environment.host
        try:
            with httpx.Client(
                base_url=self.environment.host, timeout=SCRAPE_TIMEOUT_S, trust_env=False
            ) as client:
                response = client.get("/metrics")
                response.raise_for_status()
                return parse_metrics(response.text)
        except (httpx.HTTPError, ValueError) as exc:
            self.scrape_error = f"cannot scrape {self.environment.host}/metrics: {exc}; no server figures"
            logger.warning("%s", self.scrape_error)
            return None

    # --- the load shape -------------------------------------------------------------------------

    def tick(self, run_time_s: float) -> tuple[int, float, list[type[User]]] | None:
        """What :class:`GreenserveShape` returns: users, spawn rate and user class; ``None`` ends the test."""
        options = self.options
        if self.role == "master":
            return self._master_tick()
        limit_s = options.run_time
        if limit_s and run_time_s >= limit_s:
            return None
        if self.trace is not None:
            return None if self.replay_done else (1, 1.0, [TraceReplayUser])
        if self.stages is not None:
            target = stage_target(self.stages, options.stage_mode, run_time_s)
            return None if target is None else (target[0], target[1], [ClassifyUser])
        return (options.num_users or 1, float(options.spawn_rate or 1), [ClassifyUser])

    # --- the run --------------------------------------------------------------------------------

    def start(self) -> None:
        if self.role == "worker":
            return  # a worker's test starts with its share (_take_share)
        self.replay_done = self.finished = False
        self.scrape_error = None
        if self.trace is None and self.stages is None:
            # Locust fills in -u/-r only now (headless defaults, or the web UI's form).
            self.settings.update(users=self.options.num_users, spawn_rate=self.options.spawn_rate)
        self._next = itertools.count()
        self.metrics_before = self._scrape()
        self.started_at = self.t0 = time.monotonic()
        self.t0_unix = time.time()
        if self.trace is None:
            self.records = []
        else:
            self.records = [
                RequestRecord(index=n, image_id=payload.image_id, scheduled_s=t)
                for n, (t, payload) in enumerate(zip(self.trace.times, self.plan, strict=True))
            ]
        if self.role == "master":
            self._deal()

    def next_closed(self) -> tuple[RequestRecord, Payload]:
        n = next(self._next)
        payload = self.payloads[n % len(self.payloads)]
        record = RequestRecord(index=n, image_id=payload.image_id)
        self.records.append(record)
        return record, payload

    def send(self, client: FastHttpSession, record: RequestRecord, payload: Payload) -> None:
        """One request through Locust's client (so Locust's statistics count it), recorded."""
        headers = {"Content-Type": payload.content_type}
        if self.options.timeout_ms is not None:
            headers["X-Request-Timeout-Ms"] = f"{self.options.timeout_ms:g}"
        record.start_s = time.monotonic() - self.t0
        record.status = UNFINISHED
        response = client.request(
            "POST",
            f"/classify?top_k={self.options.top_k}",
            name="/classify",
            data=payload.body,  # type: ignore[arg-type]  # bytes are sent as they are
            headers=headers,
        )
        record.end_s = time.monotonic() - self.t0
        code = response.status_code
        # A transport failure: status 0 and the exception on the (untyped) ``error`` attribute.
        record.status = str(code) if code else type(getattr(response, "error", None)).__name__
        if code == 200:
            try:
                body = json.loads(response.content or b"")
                record.batch_size = int(body["batch_size"])
                # Null when the server's meter failed: answered all the same, its energy unknown.
                record.energy_j = None if body["energy_j"] is None else float(body["energy_j"])
                record.energy_source = str(body["energy_source"])
                idle = body.get("energy_idle_included")
                record.energy_idle_included = idle if isinstance(idle, bool) else None
                record.queue_ms = float(body["queue_ms"])
                record.compute_ms = float(body["compute_ms"])
            except (ValueError, KeyError, TypeError):
                record.status = "invalid_response"

    def replay(
        self, client: FastHttpSession, *, t0: float | None = None, stop_at: float | None = None
    ) -> None:
        """Start each arrival at its trace time, whatever is still in flight; then wait for the answers.

        One dispatcher sleeps until each arrival and spawns a greenlet for it, so a slow answer
        never delays the next request. The pool only bounds requests in flight
        (``--max-in-flight``); a full pool delays starts, which then show as lag.

        A worker gives the master's origin ``t0`` (monotonic) and, with ``--max-s``, ``stop_at``:
        nothing is sent, nor awaited, from then on.
        """
        pool = Pool(size=self.options.max_in_flight)
        if t0 is None:
            self.t0 = time.monotonic()
            self.t0_unix = time.time()
        else:
            self.t0 = t0
        sent_all = True
        try:
            for record, payload in zip(self.records, self.plan, strict=True):
                assert record.scheduled_s is not None
                due = self.t0 + record.scheduled_s
                if stop_at is not None and due >= stop_at:
                    sent_all = False
                    break
                delay_s = due - time.monotonic()
                if delay_s > 0:
                    gevent.sleep(delay_s)
                pool.spawn(self.send, client, record, payload)
            wait_s = self.options.drain_timeout_s
            if stop_at is not None:
                wait_s = max(0.0, min(wait_s, stop_at - time.monotonic()))
            self.finished = bool(pool.join(timeout=wait_s)) and sent_all
            if len(pool):
                logger.warning(
                    "%d requests still unanswered %g s after the last arrival; stopping", len(pool), wait_s
                )
        finally:
            self.replay_done = True
            # A worker reports its records right after: its cut requests must be over by then.
            pool.kill(block=t0 is not None, timeout=5)

    def stop(self) -> None:
        """Scrape /metrics again, then write the summary and the request log, and print the report.

        A master first puts its workers' records together; a worker writes nothing."""
        if self.role == "worker":
            return
        distributed: dict[str, Any] | None = None
        merge_warnings: list[str] = []
        if self.collector is not None:
            if self.worker_error is not None:
                assert self.environment is not None
                self.environment.process_exit_code = 2  # the run failed: no results files
                logger.error("no results: %s", self.worker_error)
                return
            merge_warnings = self.collector.close()
            distributed = self.collector.as_dict()
            self.finished = self.collector.finished
        duration_s = time.monotonic() - self.started_at
        metrics_after = self._scrape() if self.metrics_before is not None else None
        server = (
            server_delta(self.metrics_before, metrics_after)
            if self.metrics_before is not None and metrics_after is not None
            else None
        )
        records = self.records
        cut = 0
        if self.trace is None:
            # Closed loop ends by cutting whatever is in flight: the end of the run, not an error.
            cut = sum(1 for r in records if r.status in (UNFINISHED, NOT_SENT))
            records = [r for r in records if r.status not in (UNFINISHED, NOT_SENT)]
        options = self.options
        summary = build_summary(
            records,
            mode="trace" if self.trace is not None else "closed",
            server=server,
            lag_threshold_ms=options.lag_threshold_ms,
            finished=self.finished if self.trace is not None else True,
            duration_s=duration_s,
            settings=self.settings,
            files={
                "summary_json": options.summary_json,
                "request_log": options.request_log,
                "csv_prefix": options.csv_prefix,
            },
            server_error=self.scrape_error,
            cut_at_stop=cut,
            t0_unix=self.t0_unix,
            distributed=distributed,
            extra_warnings=merge_warnings,
        )
        if summary["lag"] and summary["lag"]["warning"]:
            logger.warning("%s", summary["lag"]["warning"])
        if options.request_log:
            write_request_log(records, Path(options.request_log))
        if options.summary_json:
            write_summary(summary, Path(options.summary_json))
        print("\n" + format_report(summary), flush=True)
        # The web UI can start another test; its shape must not see this one as done.
        self.replay_done = False

    # --- distributed: the master ----------------------------------------------------------------

    def lead_workers(self, runner: MasterRunner) -> None:
        """This process is Locust's master: it deals the trace and merges what comes back."""
        self.role = "master"
        runner.register_message(READY_MESSAGE, self._on_ready)
        runner.register_message(RECORDS_MESSAGE, self._on_records)
        runner.register_message(ERROR_MESSAGE, self._on_worker_error)

    def _deal(self) -> None:
        """At the test's start: each connected worker gets its share (the origin comes with go)."""
        assert self.environment is not None and self.trace is not None
        runner = self.environment.runner
        assert isinstance(runner, MasterRunner)
        # Locust's worker index: the order in which the workers connected.
        index: Callable[[str], int] = runner.get_worker_index
        workers = [
            (c.id, index(c.id))
            for c in runner.clients.ready + runner.clients.running + runner.clients.spawning
        ]
        self.collector = Collector.deal(self.records, workers)
        self.worker_error = None
        self.stats_wait_since = self.collect_deadline = None
        self.ready_deadline = time.monotonic() + READY_TIMEOUT_S
        options = self.options
        for worker, status in self.collector.shares.items():
            share = Share(
                share=status.share,
                shares=len(self.collector.shares),
                arrivals=self.collector.arrivals(worker),
                stop_after_s=float(options.run_time) if options.run_time else None,
                images=self.images,
                image_count=options.image_count,
                top_k=options.top_k,
                timeout_ms=options.timeout_ms,
                max_in_flight=options.max_in_flight,
                drain_timeout_s=options.drain_timeout_s,
            )
            runner.send_message(SHARE_MESSAGE, share.to_wire(), client_id=worker)
        logger.info(
            "trace of %d arrivals dealt among %d workers (share k: arrivals k, k+%d, …)",
            len(self.records),
            len(self.collector.shares),
            len(self.collector.shares),
        )

    def _on_ready(self, environment: Environment, msg: Any, **_kwargs: Any) -> None:
        """A worker's replay user waits with its share; once all do, ``go``: the trace's origin."""
        assert self.trace is not None
        if self.collector is None or self.collect_deadline is not None:
            return  # no test, or go was sent already
        if not self.collector.ready(msg.node_id):
            return
        # One origin for every worker, a little ahead, on the wall clock they share.
        self.t0 = time.monotonic() + START_LEAD_S
        self.t0_unix = time.time() + START_LEAD_S
        options = self.options
        last_due_s = options.run_time or self.trace.duration_s + options.drain_timeout_s
        self.collect_deadline = self.t0 + last_due_s + COLLECT_GRACE_S
        assert environment.runner is not None
        for worker in self.collector.shares:
            environment.runner.send_message(GO_MESSAGE, {"t0_unix": self.t0_unix}, client_id=worker)
        logger.info("every worker ready: the trace starts in %g s", START_LEAD_S)

    def _master_tick(self) -> tuple[int, float, list[type[User]]] | None:
        """One replay user per worker until every share is back and Locust's statistics count its
        answers; ``None`` (the end) then, or when a worker failed, or past the collection deadline."""
        assert self.environment is not None
        runner = self.environment.runner
        assert isinstance(runner, MasterRunner)
        collector = self.collector
        workers = len(collector.shares) if collector is not None else max(1, runner.worker_count)
        users: tuple[int, float, list[type[User]]] = (workers, float(workers), [TraceReplayUser])
        if self.worker_error is not None:
            return None
        if collector is None:
            return users  # the first tick comes before the test starts
        gone = [
            w for w in collector.shares if w not in runner.clients or runner.clients[w].state == STATE_MISSING
        ]
        now = time.monotonic()
        if self.collect_deadline is None:  # before go: every worker must get ready
            if gone or now > self.ready_deadline:
                self.worker_error = (
                    f"worker {', '.join(gone)} left before the trace started"
                    if gone
                    else f"not every worker was ready within {READY_TIMEOUT_S:g} s"
                )
                logger.error("%s", self.worker_error)
                return None
            return users
        for worker in gone:
            collector.leave(worker)
        if not collector.done:
            if now > self.collect_deadline:
                logger.warning(
                    "workers' records still missing %g s after the last answer was due", COLLECT_GRACE_S
                )
                return None
            return users
        if self.stats_wait_since is None:
            self.stats_wait_since = now
        counted = runner.stats.total.num_requests
        if counted >= collector.answered() or now - self.stats_wait_since >= STATS_CATCH_UP_S:
            return None
        return users

    def _on_records(self, environment: Environment, msg: Any, **_kwargs: Any) -> None:
        if self.collector is None:
            return
        data = msg.data
        self.collector.add(
            msg.node_id, data["records"], last=bool(data["last"]), finished=bool(data["finished"])
        )

    def _on_worker_error(self, environment: Environment, msg: Any, **_kwargs: Any) -> None:
        self.worker_error = f"{msg.node_id}: {msg.data['error']}"
        logger.error("worker %s", self.worker_error)

    # --- distributed: a worker ------------------------------------------------------------------

    def join_master(self, environment: Environment) -> None:
        """This process is one of Locust's workers: it waits for its share of the trace."""
        self.environment = environment
        self.role = "worker"
        logging.getLogger("httpx").setLevel(logging.WARNING)
        if environment.parsed_options is not None:
            self.options = environment.parsed_options
        self.share_ready, self.go = Event(), Event()
        assert environment.runner is not None
        environment.runner.register_message(SHARE_MESSAGE, self._on_share)
        environment.runner.register_message(GO_MESSAGE, self._on_go)

    def _on_share(self, environment: Environment, msg: Any, **_kwargs: Any) -> None:
        """The master's share, before Locust's spawn message: kept for the replay user (the
        connection pool's size must be known before it starts)."""
        try:
            share = Share.from_wire(msg.data)
        except (KeyError, TypeError, ValueError) as exc:
            self._refuse(f"a malformed share from the master ({exc})")
            return
        options = self.options
        for name in ("image_count", "top_k", "timeout_ms", "max_in_flight", "drain_timeout_s"):
            setattr(options, name, getattr(share, name))
        TraceReplayUser.concurrency = share.max_in_flight
        self.replay_done = self.finished = self.share_taken = False
        self.go.clear()
        self.share = share
        self.share_ready.set()

    def _refuse(self, error: str) -> None:
        """This worker cannot replay its share: the master fails the run before any request."""
        assert self.environment is not None and self.environment.runner is not None
        logger.error("cannot replay this worker's share: %s", error)
        self.environment.runner.send_message(ERROR_MESSAGE, {"error": error})

    def _on_go(self, environment: Environment, msg: Any, **_kwargs: Any) -> None:
        self.t0_unix = float(msg.data["t0_unix"])
        self.go.set()

    def _prepare(self, share: Share) -> None:
        """This worker's records and payloads (the images it loads itself); :class:`LoadgenError` if not."""
        if share.images != self.images or len(self.payloads) != share.image_count:
            self._load_images(share.images)
        by_id = {p.image_id: p for p in self.payloads}
        missing = sorted({image for _, _, image in share.arrivals if image not in by_id})
        if missing:
            raise LoadgenError(
                f"image_id {', '.join(missing[:5])} not in this worker's images {share.images!r}"
            )
        self.records = [
            RequestRecord(index=i, image_id=image, scheduled_s=t) for i, t, image in share.arrivals
        ]
        self.plan = [by_id[image] for _, _, image in share.arrivals]

    def replay_share(self, client: FastHttpSession) -> None:
        """Ready, then this worker's share at the master's times; then its records go to the master."""
        if not self.share_ready.wait(timeout=READY_TIMEOUT_S):
            logger.error("no share of the trace came from the master")
            return
        share = self.share
        if share is None or self.share_taken:
            return  # one user replays a share; another one on this worker has nothing to do
        self.share_taken = True
        try:
            self._prepare(share)
        except LoadgenError as exc:
            self._refuse(str(exc))
            return
        assert self.environment is not None and self.environment.runner is not None
        self.environment.runner.send_message(READY_MESSAGE, {"share": share.share})
        if not self.go.wait(timeout=READY_TIMEOUT_S):
            logger.error("the master never started the trace")
            return
        t0 = time.monotonic() + (self.t0_unix - time.time())
        stop_at = None if share.stop_after_s is None else t0 + share.stop_after_s
        self.replay(client, t0=t0, stop_at=stop_at)
        parts = list(chunks(self.records))
        for n, rows in enumerate(parts):
            last = n == len(parts) - 1
            data = {"share": share.share, "records": rows, "last": last, "finished": self.finished}
            self.environment.runner.send_message(RECORDS_MESSAGE, data)
        logger.info(
            "share %d of %d: %d records sent to the master", share.share, share.shares, len(self.records)
        )


RUN = LoadTestRun()


def _on_init(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        RUN.join_master(environment)  # everything else comes from the master
        return
    if not isinstance(runner, LocalRunner | MasterRunner):
        _fail(f"greenserve's locustfile cannot run under {type(runner).__name__}")
    options = environment.parsed_options
    if isinstance(runner, MasterRunner) and not (options is not None and options.trace):
        _fail(
            "Locust's distributed mode (--master, --processes) replays a trace (--trace) here; "
            "closed-loop users (-u, --stages) run in one process, which records every request"
        )
    try:
        RUN.configure(environment)
    except LoadgenError as exc:
        _fail(str(exc))
    if isinstance(runner, MasterRunner):
        RUN.lead_workers(runner)


def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    RUN.start()


def _on_test_stop(environment: Environment, **_kwargs: Any) -> None:
    RUN.stop()


_listen(events.init, _on_init)
_listen(events.test_start, _on_test_start)
_listen(events.test_stop, _on_test_stop)


class GreenserveShape(LoadTestShape):
    """Stages, trace replay, or plain ``-u``/``-r``/``-t``: see the module's docstring."""

    use_common_options = True

    def tick(self) -> tuple[int, float, list[type[User]]] | None:
        return RUN.tick(self.get_run_time())  # type: ignore[no-untyped-call]


class ClassifyUser(FastHttpUser):
    """Closed loop: one request at a time, the next ``--think-ms`` after the answer."""

    def wait_time(self) -> float:
        return float(RUN.options.think_ms) / 1000.0

    @task
    def classify(self) -> None:
        record, payload = RUN.next_closed()
        RUN.send(self.client, record, payload)


class TraceReplayUser(FastHttpUser):
    """Open loop: the one user that replays the whole trace (in a distributed run, one per worker,
    each its worker's share), then stops (and the shape ends the test)."""

    concurrency = DEFAULT_MAX_IN_FLIGHT  # the shared connection pool; set from --max-in-flight

    @task
    def replay(self) -> None:
        if RUN.role == "worker":
            RUN.replay_share(self.client)  # this worker's share of the trace
        else:
            RUN.replay(self.client)
        raise StopUser()
