"""Load tests with Locust: run :mod:`loadgen.locustfile` headless, and what one run measured.

Two halves. The *pure* half (stages, request records, the summary) is imported by the locustfile
inside Locust's process and by the tests. The *runner* half (:func:`run_trace`,
:func:`run_closed`, :func:`main`) starts Locust as a subprocess: Locust monkey-patches the
standard library with gevent when it is imported, so it must never be imported by a caller such
as the sweep, a test or this module.

A run writes, in its output directory: ``summary.json`` (schema :data:`SCHEMA`, described in
``docs/loadtest.md``), ``requests.csv`` (one row per request), Locust's own CSVs
(``locust_stats.csv``, ``locust_failures.csv``, ``locust_exceptions.csv``) and ``locust.log``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from loadgen.errors import LoadgenError
from loadgen.figures import OPTIONAL_FIGURES, RunFigures, amortised_label, attributed_label, percentiles_ms
from loadgen.metrics import MetricKey, metric
from loadgen.trace import read_trace, uniform_jitter, write_trace

SCHEMA = "greenserve-loadtest/1"
REPO_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")

#: A request that started more than this after its scheduled time counts as late.
DEFAULT_LAG_THRESHOLD_MS = 10.0
#: After the last arrival of a trace, how long answers are awaited before the run stops.
DEFAULT_DRAIN_TIMEOUT_S = 60.0
#: Locust's start-up and shutdown, on top of the run itself, before a subprocess counts as hung.
STARTUP_MARGIN_S = 120.0

#: Statuses that are not HTTP codes: the request was never sent (the run stopped first), or was
#: sent but had no answer when the run stopped.
NOT_SENT = "not_sent"
UNFINISHED = "unfinished"

SUMMARY_NAME = "summary.json"
REQUEST_LOG_NAME = "requests.csv"
CSV_PREFIX_NAME = "locust"
LOG_NAME = "locust.log"

StageMode = Literal["step", "ramp"]
STAGE_MODES: tuple[StageMode, ...] = ("step", "ramp")
#: Above this spawn rate Locust warns that it may misbehave; steps spawn no faster.
MAX_SPAWN_RATE = 100.0


# --- stages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """``users`` for ``duration_s``; ``spawn_rate`` (users/s) when the spec gave one."""

    duration_s: float
    users: int
    spawn_rate: float | None = None


_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str) -> float:
    """``500ms``, ``10s``, ``1.5m``, ``2h`` or a bare number of seconds → seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise LoadgenError(f"bad duration {text!r}: expected e.g. 500ms, 10s, 1.5m, 2h or seconds")
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def parse_stages(spec: str) -> tuple[Stage, ...]:
    """``"10s:5,20s:20@2,10s:5"`` → stages: ``DURATION:USERS[@SPAWN_RATE]``, comma-separated."""
    stages: list[Stage] = []
    for number, part in enumerate(spec.split(","), start=1):
        where = f"--stages {spec!r}, stage {number}"
        duration_text, sep, rest = part.strip().partition(":")
        if not sep:
            raise LoadgenError(f"{where}: expected DURATION:USERS[@SPAWN_RATE], e.g. 10s:5, got {part!r}")
        try:
            duration_s = parse_duration_s(duration_text)
        except LoadgenError as exc:
            raise LoadgenError(f"{where}: {exc}") from None
        users_text, at, rate_text = rest.partition("@")
        try:
            users = int(users_text)
            rate = float(rate_text) if at else None
        except ValueError:
            raise LoadgenError(
                f"{where}: users must be an integer and spawn rate a number, got {rest!r}"
            ) from None
        if duration_s <= 0 or users < 0 or (rate is not None and not (math.isfinite(rate) and rate > 0)):
            raise LoadgenError(f"{where}: need a duration > 0, users ≥ 0 and spawn rate > 0, got {part!r}")
        stages.append(Stage(duration_s, users, rate))
    return tuple(stages)


def stage_target(
    stages: Sequence[Stage], mode: StageMode, run_time_s: float, tick_s: float = 1.0
) -> tuple[int, float] | None:
    """Users and spawn rate at ``run_time_s`` into the stages; ``None`` once they are over.

    ``step`` holds each stage's users for its whole duration, spawned at the stage's rate (else
    as fast as Locust allows). ``ramp`` goes linearly from the previous stage's users (0 before
    the first) to this stage's over its duration, as k6's stages do. Locust asks about once per
    ``tick_s``, so a ramp answers with the count due at the *next* tick and a spawn rate that
    gets there by then: the users follow the line instead of lagging a tick behind it.
    """
    start_s = 0.0
    previous = 0
    for stage in stages:
        end_s = start_s + stage.duration_s
        if run_time_s < end_s:
            if mode == "step":
                rate = stage.spawn_rate or min(float(max(stage.users, 1)), MAX_SPAWN_RATE)
                return stage.users, rate
            fraction = (min(run_time_s + tick_s, end_s) - start_s) / stage.duration_s
            users = round(previous + (stage.users - previous) * fraction)
            slope = abs(stage.users - previous) / stage.duration_s
            return users, stage.spawn_rate or min(max(1.0, slope), MAX_SPAWN_RATE)
        start_s = end_s
        previous = stage.users
    return None


# --- one run's records -------------------------------------------------------------------------


@dataclass
class RequestRecord:
    """One request, filled in as it goes. Times are seconds from the start of the run.

    ``scheduled_s`` is the trace's arrival time (``None`` in closed loop, where a request is
    sent when its user is ready); ``status`` is the HTTP code, the exception's class name for a
    transport failure, or :data:`NOT_SENT` / :data:`UNFINISHED`.
    """

    index: int
    image_id: str
    scheduled_s: float | None = None
    start_s: float | None = None
    end_s: float | None = None
    status: str = NOT_SENT
    batch_size: int | None = None
    energy_j: float | None = None  # None: answered 200, but its energy unknown (a failing meter)
    energy_source: str | None = None
    queue_ms: float | None = None  # the server's own figures for this request
    compute_ms: float | None = None
    energy_idle_included: bool | None = None

    @property
    def lag_s(self) -> float | None:
        """How late the request started against its schedule."""
        if self.scheduled_s is None or self.start_s is None:
            return None
        return self.start_s - self.scheduled_s

    @property
    def latency_s(self) -> float | None:
        """From the scheduled start when there is one (no coordinated omission), else from the start."""
        origin = self.scheduled_s if self.scheduled_s is not None else self.start_s
        if origin is None or self.end_s is None:
            return None
        return self.end_s - origin


REQUEST_LOG_COLUMNS = (
    "index",
    "image_id",
    "scheduled_s",
    "start_s",
    "end_s",
    "lag_ms",
    "latency_ms",
    "status",
    "batch_size",
    "energy_j",
    "energy_source",
    "queue_ms",
    "compute_ms",
    "energy_idle_included",
)


def _cell(value: float | int | str | None, scale: float = 1.0) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value * scale:.6f}"
    return str(value)


def write_request_log(records: Iterable[RequestRecord], path: Path) -> Path:
    """One CSV row per request (:data:`REQUEST_LOG_COLUMNS`); times in s, lag and latency in ms."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(REQUEST_LOG_COLUMNS)
        for r in records:
            writer.writerow(
                [
                    r.index,
                    r.image_id,
                    _cell(r.scheduled_s),
                    _cell(r.start_s),
                    _cell(r.end_s),
                    _cell(r.lag_s, 1000.0),
                    _cell(r.latency_s, 1000.0),
                    r.status,
                    _cell(r.batch_size),
                    _cell(r.energy_j),
                    _cell(r.energy_source),
                    _cell(r.queue_ms),
                    _cell(r.compute_ms),
                    "" if r.energy_idle_included is None else str(r.energy_idle_included).lower(),
                ]
            )
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class LagStats:
    """How far behind its schedule the generator started requests (open loop only)."""

    threshold_ms: float
    late: int  # started more than threshold_ms after their scheduled time
    started: int
    max_ms: float | None
    p50_ms: float | None
    p99_ms: float | None

    @property
    def warning(self) -> str | None:
        if not self.late:
            return None
        return (
            f"the load generator fell behind the trace: {self.late} of {self.started} requests started more "
            f"than {self.threshold_ms:g} ms late (max {self.max_ms or 0:.1f} ms); latencies are still "
            "measured from the schedule, but the server saw a smoother load than the trace"
        )


def lag_stats(records: Sequence[RequestRecord], threshold_ms: float) -> LagStats:
    lags = [lag for r in records if (lag := r.lag_s) is not None]
    p50, _, p99 = percentiles_ms(lags)
    return LagStats(
        threshold_ms=threshold_ms,
        late=sum(1 for lag in lags if lag * 1000.0 > threshold_ms),
        started=len(lags),
        max_ms=max(lags) * 1000.0 if lags else None,
        p50_ms=p50,
        p99_ms=p99,
    )


# --- the server's side: /metrics before and after ---------------------------------------------


@dataclass(frozen=True)
class ServerDelta:
    """What greenserve's counters say happened between the two scrapes.

    ``j_per_request`` is Δ batch energy ÷ Δ ``requests_total{status="200"}``, the metrics
    contract's definition: the energy *attributed* to the requests answered 200, idle excluded
    (``j_per_request_label``). ``amortised_j_per_request`` is Δ device energy (every device once,
    by its ``device`` label; idle included where the meter includes it) ÷ the same requests: the
    operator's bill (``amortised_label``). ``mean_batch_size`` is Δsum ÷ Δcount of the
    ``batch_size`` histogram, ``mean_batch_ms`` and ``mean_queue_wait_ms`` likewise of the
    batch-duration and queue-wait ones (what a simulator's profile is compared with).
    ``energy_read_errors`` counts failed meter reads and stalls during the run, by source: requests
    answered meanwhile have no energy, so a J/request is then too low.
    Other clients of the same server during the run are counted too.
    """

    requests_by_status: dict[str, int]
    rejected_by_reason: dict[str, int]
    batch_energy_j: dict[str, float]
    batches: int
    mean_batch_size: float | None
    j_per_request: float | None
    energy_source: str | None
    mean_batch_ms: float | None = None
    mean_queue_wait_ms: float | None = None
    j_per_request_label: str | None = None
    device_energy_j: dict[str, float] = field(default_factory=dict)
    amortised_j_per_request: float | None = None
    amortised_energy_source: str | None = None
    amortised_label: str | None = None
    energy_read_errors: dict[str, int] = field(default_factory=dict)


def _device_energy(
    before: Mapping[MetricKey, float], after: Mapping[MetricKey, float]
) -> tuple[dict[str, float], list[str]]:
    """Δ ``greenserve_device_energy_joules_total`` per device label, each device counted once (the
    largest delta where a label appears under several sources), and the sources seen."""
    name = "greenserve_device_energy_joules_total"
    old: dict[tuple[str, str], float] = {}
    for (sample, labels), value in before.items():
        if sample == name:
            have = dict(labels)
            old[(have.get("source", ""), have.get("device", ""))] = value
    by_device: dict[str, float] = {}
    sources: set[str] = set()
    for (sample, labels), value in after.items():
        if sample != name:
            continue
        have = dict(labels)
        source, device = have.get("source", ""), have.get("device", "")
        delta = value - old.get((source, device), 0.0)
        sources.add(source)
        by_device[device] = max(by_device.get(device, 0.0), delta)
    return dict(sorted(by_device.items())), sorted(sources)


def _by_label(samples: Mapping[MetricKey, float], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            key = dict(labels).get(label)
            if key is not None:
                out[key] = out.get(key, 0.0) + value
    return out


def _delta_by_label(
    before: Mapping[MetricKey, float], after: Mapping[MetricKey, float], name: str, label: str
) -> dict[str, float]:
    old, new = _by_label(before, name, label), _by_label(after, name, label)
    return {key: new[key] - old.get(key, 0.0) for key in sorted(new)}


def server_delta(before: Mapping[MetricKey, float], after: Mapping[MetricKey, float]) -> ServerDelta:
    statuses = _delta_by_label(before, after, "greenserve_requests_total", "status")
    reasons = _delta_by_label(before, after, "greenserve_rejected_total", "reason")
    energy = _delta_by_label(before, after, "greenserve_batch_energy_joules_total", "source")
    batches = metric(dict(after), "greenserve_batch_size_count") - metric(
        dict(before), "greenserve_batch_size_count"
    )
    batched = metric(dict(after), "greenserve_batch_size_sum") - metric(
        dict(before), "greenserve_batch_size_sum"
    )
    ok = statuses.get("200", 0.0)
    devices, device_sources = _device_energy(before, after)
    errors = _delta_by_label(before, after, "greenserve_energy_read_errors_total", "source")
    # One meter per server; the label is the source whatever it measured this time.
    source = "+".join(energy) if energy else None
    amortised_source = "+".join(device_sources) if device_sources else None

    def mean_ms(histogram: str) -> float | None:
        count = metric(dict(after), f"{histogram}_count") - metric(dict(before), f"{histogram}_count")
        total = metric(dict(after), f"{histogram}_sum") - metric(dict(before), f"{histogram}_sum")
        return total / count * 1000.0 if count > 0 else None

    return ServerDelta(
        requests_by_status={k: round(v) for k, v in statuses.items() if round(v)},
        rejected_by_reason={k: round(v) for k, v in reasons.items() if round(v)},
        batch_energy_j=energy,
        batches=round(batches),
        mean_batch_size=batched / batches if batches > 0 else None,
        j_per_request=sum(energy.values()) / ok if ok > 0 and energy else None,
        energy_source=source,
        mean_batch_ms=mean_ms("greenserve_batch_duration_seconds"),
        mean_queue_wait_ms=mean_ms("greenserve_queue_wait_seconds"),
        j_per_request_label=attributed_label(source) if source else None,
        device_energy_j=devices,
        amortised_j_per_request=sum(devices.values()) / ok if ok > 0 and devices else None,
        amortised_energy_source=amortised_source,
        amortised_label=amortised_label(amortised_source) if amortised_source else None,
        energy_read_errors={k: round(v) for k, v in errors.items() if round(v)},
    )


# --- the summary -------------------------------------------------------------------------------


def status_counts(records: Iterable[RequestRecord]) -> dict[str, int]:
    counts = Counter(r.status for r in records)
    return dict(sorted(counts.items()))


def run_figures(records: Sequence[RequestRecord], server: ServerDelta | None) -> RunFigures:
    """The sweep's figures: latency of the 200 answers, from the schedule in open loop."""
    ok = [r for r in records if r.status == "200"]
    latencies = [lat for r in ok if (lat := r.latency_s) is not None]
    p50, p90, p99 = percentiles_ms(latencies)
    origins = [
        o for r in records if (o := r.scheduled_s if r.scheduled_s is not None else r.start_s) is not None
    ]
    ends = [r.end_s for r in records if r.end_s is not None]
    span_s = max(ends) - min(origins) if ends and origins else 0.0
    counts = status_counts(records)
    queue_full, deadline = counts.get("429", 0), counts.get("504", 0)
    return RunFigures(
        requests=len(records),
        completed=len(ok),
        throughput_rps=len(ok) / span_s if span_s > 0 else 0.0,
        latency_p50_ms=p50,
        latency_p90_ms=p90,
        latency_p99_ms=p99,
        mean_batch_size=server.mean_batch_size if server else None,
        j_per_request=server.j_per_request if server else None,
        energy_source=server.energy_source if server else None,
        rejected_queue_full=queue_full,
        rejected_deadline=deadline,
        errors=len(records) - len(ok) - queue_full - deadline,
        j_per_request_label=server.j_per_request_label if server else None,
        amortised_j_per_request=server.amortised_j_per_request if server else None,
        amortised_energy_source=server.amortised_energy_source if server else None,
        amortised_label=server.amortised_label if server else None,
    )


def build_summary(
    records: Sequence[RequestRecord],
    *,
    mode: Literal["trace", "closed"],
    server: ServerDelta | None,
    lag_threshold_ms: float,
    finished: bool,
    duration_s: float,
    settings: Mapping[str, Any],
    files: Mapping[str, str | None],
    server_error: str | None = None,
    cut_at_stop: int = 0,
    t0_unix: float | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` object (schema :data:`SCHEMA`; documented in ``docs/loadtest.md``)."""
    figures = run_figures(records, server)
    latencies = [lat for r in records if r.status == "200" and (lat := r.latency_s) is not None]
    lag = lag_stats(records, lag_threshold_ms) if mode == "trace" else None
    warnings = [w for w in (lag.warning if lag else None, server_error) if w]
    if server is not None and server.energy_read_errors:
        failing = ", ".join(f"{source} × {n}" for source, n in server.energy_read_errors.items())
        warnings.append(
            f"energy meter read errors or stalls during the run ({failing}): requests answered meanwhile "
            "have no energy, so the J/request figures are too low"
        )
    unknown = [r for r in records if r.status == "200" and r.energy_j is None and r.energy_source]
    if unknown:
        warnings.append(
            f"{len(unknown)} requests answered 200 without an energy figure (energy_j null: "
            f"{unknown[0].energy_source})"
        )
    if not finished:
        warnings.append("the run stopped before every request was answered (time limit or interruption)")
    return {
        "schema": SCHEMA,
        "mode": mode,
        "finished": finished,
        "duration_s": duration_s,
        "t0_unix": t0_unix,
        "settings": dict(settings),
        "requests": {
            "total": len(records),
            "sent": sum(1 for r in records if r.start_s is not None),
            "answered": sum(1 for r in records if r.status not in (NOT_SENT, UNFINISHED)),
            "by_status": status_counts(records),
            "cut_at_stop": cut_at_stop,
        },
        "latency_ms": {
            "from": "scheduled" if mode == "trace" else "start",
            "p50": figures.latency_p50_ms,
            "p90": figures.latency_p90_ms,
            "p99": figures.latency_p99_ms,
            "mean": sum(latencies) / len(latencies) * 1000.0 if latencies else None,
            "max": max(latencies) * 1000.0 if latencies else None,
        },
        "throughput_rps": figures.throughput_rps,
        "lag": None if lag is None else {**dataclasses.asdict(lag), "warning": lag.warning},
        "server": None if server is None else dataclasses.asdict(server),
        "figures": dataclasses.asdict(figures),
        "warnings": warnings,
        "files": dict(files),
    }


def write_summary(summary: Mapping[str, Any], path: Path) -> Path:
    """``summary`` as indented JSON, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def format_report(summary: Mapping[str, Any]) -> str:
    """A few lines for a terminal: statuses, latency, throughput, energy, lag, warnings."""
    requests, latency, figures = summary["requests"], summary["latency_ms"], summary["figures"]
    statuses = ", ".join(f"{status} × {count}" for status, count in requests["by_status"].items())
    origin = "the schedule" if latency["from"] == "scheduled" else "each request's start"
    lines = [
        f"greenserve load test ({summary['mode']}): "
        f"{requests['total']} requests in {summary['duration_s']:.1f} s",
        f"  status       {statuses or 'none'}",
        f"  latency      p50 {_ms(latency['p50'])}, p90 {_ms(latency['p90'])}, p99 {_ms(latency['p99'])} "
        f"(200 answers, from {origin})",
        f"  throughput   {figures['throughput_rps']:.2f} req/s answered 200",
    ]
    server = summary["server"]
    if server is not None:
        jpr = server["j_per_request"]
        batch = server["mean_batch_size"]
        label = server.get("j_per_request_label") or "attributed"
        lines.append(
            "  server       "
            + (
                f"{jpr:.4g} J/request ({server['energy_source']}, {label})"
                if jpr is not None
                else "no J/request (no 200s)"
            )
            + (f", mean batch {batch:.2f} over {server['batches']} batches" if batch is not None else "")
        )
        amortised = server.get("amortised_j_per_request")
        if amortised is not None:
            lines.append(
                f"  device       {amortised:.4g} J/request ({server.get('amortised_energy_source')}, "
                f"{server.get('amortised_label') or 'amortised'})"
            )
    lag = summary["lag"]
    if lag is not None and lag["max_ms"] is not None:
        lines.append(
            f"  lag          {lag['late']} of {lag['started']} started > {lag['threshold_ms']:g} ms late "
            f"(max {lag['max_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms)"
        )
    lines.extend(f"  WARNING      {w}" for w in summary["warnings"])
    return "\n".join(lines)


@dataclass(frozen=True)
class LoadtestSummary:
    """A finished run as the caller sees it: the figures, the lag, the statuses and the files."""

    mode: str
    finished: bool
    figures: RunFigures
    requests_by_status: dict[str, int]
    late_requests: int
    max_lag_ms: float | None
    lag_warning: str | None
    j_per_request: float | None
    energy_source: str | None
    warnings: tuple[str, ...]
    summary_path: Path
    request_log_path: Path | None
    csv_prefix: Path | None
    log_path: Path | None
    raw: dict[str, Any]

    @classmethod
    def from_json(
        cls, path: Path, *, csv_prefix: Path | None = None, log_path: Path | None = None
    ) -> LoadtestSummary:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LoadgenError(f"{path}: cannot read the load test's summary: {exc}") from None
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
            raise LoadgenError(f"{path}: not a {SCHEMA} summary")
        lag = raw["lag"] or {}
        figures = RunFigures(
            **{
                name: raw["figures"].get(name) if name in OPTIONAL_FIGURES else raw["figures"][name]
                for name in RunFigures.field_names()
            }
        )
        request_log = raw["files"].get("request_log")
        return cls(
            mode=raw["mode"],
            finished=raw["finished"],
            figures=figures,
            requests_by_status=dict(raw["requests"]["by_status"]),
            late_requests=int(lag.get("late", 0)),
            max_lag_ms=lag.get("max_ms"),
            lag_warning=lag.get("warning"),
            j_per_request=figures.j_per_request,
            energy_source=figures.energy_source,
            warnings=tuple(raw["warnings"]),
            summary_path=path,
            request_log_path=Path(request_log) if request_log else None,
            csv_prefix=csv_prefix,
            log_path=log_path,
            raw=raw,
        )


# --- running Locust ----------------------------------------------------------------------------


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


def _run_locust(argv: Sequence[str], out_dir: Path, *, wait_s: float, echo: bool) -> LoadtestSummary:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / SUMMARY_NAME
    summary_path.unlink(missing_ok=True)  # a stale summary must never pass for this run's
    log_path = out_dir / LOG_NAME
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
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
) -> LoadtestSummary:
    """Replay ``trace_path`` open-loop against ``base_url`` with Locust (a subprocess); the summary.

    Each request starts at its trace time however slow the answers are; the run ends when every
    request has answered, or at ``max_s`` (those not answered then are ``unfinished``, those not
    sent ``not_sent``, both counted as errors). Failed requests are results, not an exception;
    :class:`LoadgenError` means the run itself failed (bad trace or images, unreachable server,
    Locust crashed), with the tail of Locust's output.
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
    return _run_locust(argv, out_dir, wait_s=run_s + STARTUP_MARGIN_S, echo=echo)


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


# --- make loadtest -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greenserve loadtest",
        description=(
            "Load test a running greenserve with Locust (headless). Default: an open-loop trace of "
            "16 req/s ± 20 %% for 30 s. Results (summary.json, requests.csv, Locust's CSVs) go to --out."
        ),
    )
    parser.add_argument("--host", default="http://127.0.0.1:8000", help="The server (default: %(default)s).")
    parser.add_argument(
        "--out", type=Path, default=Path("results/loadtest"), help="Output directory (default: %(default)s)."
    )
    parser.add_argument(
        "--images", default=None, help="digits, photos or a directory (default: suits the served model)."
    )
    parser.add_argument("--top-k", type=int, default=1, help="top_k of each request (default: %(default)s).")
    parser.add_argument(
        "--timeout-ms", type=float, default=None, help="X-Request-Timeout-Ms of each request."
    )
    mode = parser.add_argument_group("open loop (the default)")
    mode.add_argument("--trace", type=Path, default=None, help="Replay this trace (.jsonl or .csv).")
    mode.add_argument(
        "--rate", type=float, default=16.0, help="Generated trace: req/s (default: %(default)s)."
    )
    mode.add_argument(
        "--jitter",
        type=float,
        default=0.2,
        help="Generated trace: ± fraction of the gap (default: %(default)s).",
    )
    mode.add_argument(
        "--duration-s", type=float, default=30.0, help="Generated trace: seconds (default: %(default)s)."
    )
    mode.add_argument("--seed", type=int, default=0, help="Generated trace: seed (default: %(default)s).")
    mode.add_argument(
        "--max-s", type=float, default=None, help="Stop after this many seconds, answered or not."
    )
    closed = parser.add_argument_group("closed loop (given --users or --stages)")
    closed.add_argument(
        "--users", type=int, default=None, help="Concurrent users, each waiting for its answer."
    )
    closed.add_argument(
        "--spawn-rate", type=float, default=1.0, help="Users started per second (default: %(default)s)."
    )
    closed.add_argument(
        "--run-time-s", type=float, default=30.0, help="Closed-loop run time (default: %(default)s)."
    )
    closed.add_argument("--stages", default=None, help='Users per stage, e.g. "10s:5,20s:20,10s:5".')
    closed.add_argument(
        "--stage-mode", choices=STAGE_MODES, default="step", help="step or ramp (default: %(default)s)."
    )
    closed.add_argument(
        "--think-ms", type=float, default=0.0, help="Pause between a user's requests (default: 0)."
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``make loadtest``: one run against a running server, Locust's output shown as it goes."""
    args = build_parser().parse_args(argv)
    out: Path = args.out
    try:
        if args.users is not None or args.stages is not None:
            if args.trace is not None:
                raise LoadgenError("--trace replays open-loop; leave out --users/--stages, or the trace")
            summary = run_closed(
                args.host,
                out,
                images=args.images,
                users=args.users or 1,
                spawn_rate=args.spawn_rate,
                run_time_s=None if args.stages is not None else args.run_time_s,
                stages=args.stages,
                stage_mode=args.stage_mode,
                think_ms=args.think_ms,
                timeout_ms=args.timeout_ms,
                top_k=args.top_k,
                echo=True,
            )
        else:
            trace_path: Path = args.trace or write_trace(
                uniform_jitter(args.rate, args.jitter, args.duration_s, seed=args.seed), out / "trace.jsonl"
            )
            summary = run_trace(
                args.host,
                trace_path,
                out,
                images=args.images,
                timeout_ms=args.timeout_ms,
                top_k=args.top_k,
                max_s=args.max_s,
                echo=True,
            )
    except LoadgenError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    # Locust has printed the report (format_report) above its own tables; say where the files are.
    print(f"\nResults: {summary.summary_path}, {summary.request_log_path}, {out / CSV_PREFIX_NAME}_stats.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
