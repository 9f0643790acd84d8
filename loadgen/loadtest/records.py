"""One run's records: a row per request (:class:`RequestRecord`, ``requests.csv``) and how far the
generator fell behind its schedule (:class:`LagStats`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadgen.figures import percentiles_ms
from studies.kit.files import write_text_atomic

#: Statuses that are not HTTP codes: the request was never sent (the run stopped first), or was
#: sent but had no answer when the run stopped; in a distributed run, the worker it was dealt to
#: never reported it (sent or not, its fate is unknown).
NOT_SENT = "not_sent"
UNFINISHED = "unfinished"
LOST = "lost"


@dataclass
class RequestRecord:
    """One request, filled in as it goes. Times are seconds from the start of the run.

    ``scheduled_s`` is the trace's arrival time (``None`` in closed loop, where a request is
    sent when its user is ready); ``status`` is the HTTP code, the exception's class name for a
    transport failure, or :data:`NOT_SENT` / :data:`UNFINISHED` / :data:`LOST`.
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
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
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
    return write_text_atomic(path, buffer.getvalue())


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
