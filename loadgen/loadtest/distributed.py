"""Distributed load with Locust's own distributed mode: a master and N workers replay one trace.

The pure half, imported by the locustfile inside Locust's processes, by the runner (the command
lines, :class:`Distribution`) and by the tests; nothing here imports Locust.

* **Shares.** When the test starts, the master deals the trace's arrivals among the workers
  connected then, in the order they connected (Locust's worker index): share ``k`` of ``N`` is
  arrivals ``k, k+N, k+2N, …`` (:func:`share_indices`), so every worker sends an even slice of
  every part of the trace. It sends each worker its share (:class:`Share`: the arrivals' indices,
  times and image ids, and the requests' settings) in a Locust custom message
  (``runner.send_message``), before Locust's own spawn message; the worker needs no trace file.
* **One start, one clock.** A worker's replay user loads its images and says it is ready; when
  every worker is, the master sends them all ``go`` with ``t0_unix``, :data:`START_LEAD_S` ahead,
  and every worker starts each of its arrivals at ``t0_unix + scheduled_s`` on its own clock
  (processes on one machine share it; machines need synchronised clocks, NTP). A worker that is
  not ready within :data:`READY_TIMEOUT_S` fails the run before any request.
* **Records.** A worker that has had all its answers (or reached ``--max-s``) sends its records
  back in chunks of :data:`RECORDS_PER_MESSAGE` (:func:`record_to_wire`); the master's
  :class:`Collector` puts each one in its place, checks that every arrival came back exactly once
  from the worker it was dealt to, and counts what a vanished worker never reported as
  :data:`~loadgen.loadtest.records.LOST`. The master alone writes ``requests.csv`` and
  ``summary.json``, the same files as a single process writes, from the merged records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadgen.errors import LoadgenError
from loadgen.loadtest.records import LOST, NOT_SENT, UNFINISHED, RequestRecord

#: Locust's default port for workers to reach the master.
DEFAULT_MASTER_PORT = 5557
#: The master listens on loopback unless told otherwise (Locust's own default is every interface).
DEFAULT_MASTER_BIND_HOST = "127.0.0.1"
#: The trace's clock starts this long after the master says ``go`` (every worker ready and waiting).
START_LEAD_S = 0.5
#: How long the master waits for every worker to be ready, and a worker for its share and ``go``.
READY_TIMEOUT_S = 60.0
#: After the last answer is due, how long the master still waits for a worker's records.
COLLECT_GRACE_S = 30.0
#: Workers send Locust's statistics every 3 s: how long the master waits for them to count every
#: answered request before it ends the test (so that Locust's CSVs are complete).
STATS_CATCH_UP_S = 10.0
#: Records per custom message from a worker.
RECORDS_PER_MESSAGE = 2000
#: How long ``--expect-workers`` waits for workers on this machine, and for workers elsewhere.
LOCAL_WORKERS_WAIT_S = 120.0
REMOTE_WORKERS_WAIT_S = 600.0

#: Locust custom message types.
SHARE_MESSAGE = "greenserve_share"  # master → worker: its share
READY_MESSAGE = "greenserve_ready"  # worker → master: share loaded, replay user waiting
GO_MESSAGE = "greenserve_go"  # master → workers: the trace's origin, t0_unix
RECORDS_MESSAGE = "greenserve_records"  # worker → master: records, in chunks
ERROR_MESSAGE = "greenserve_worker_error"  # worker → master: it cannot replay its share

_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRecord))
#: Bind addresses that mean every interface (a worker here then reaches the master on loopback).
_ANY_ADDRESS = ("*", "0.0.0.0", "")


def share_indices(arrivals: int, shares: int, share: int) -> range:
    """The arrivals dealt to share ``share`` of ``shares``: ``share, share + shares, …``."""
    if not 0 <= share < shares:
        raise ValueError(f"share {share} of {shares}")
    return range(share, arrivals, shares)


def record_to_wire(record: RequestRecord) -> list[Any]:
    """A record as a list of plain values (msgpack, Locust's message encoding), in field order."""
    return [getattr(record, name) for name in _RECORD_FIELDS]


def record_from_wire(row: Sequence[Any]) -> RequestRecord:
    if len(row) != len(_RECORD_FIELDS):
        raise ValueError(f"a record has {len(_RECORD_FIELDS)} fields, got {len(row)}")
    return RequestRecord(*row)


def chunks(records: Sequence[RequestRecord], size: int = RECORDS_PER_MESSAGE) -> Iterator[list[list[Any]]]:
    """The records on the wire, ``size`` at a time; at least one chunk (maybe empty) so that the
    last message always comes."""
    for start in range(0, max(len(records), 1), size):
        yield [record_to_wire(r) for r in records[start : start + size]]


@dataclass(frozen=True)
class Share:
    """What the master tells a worker: its arrivals and how to send them."""

    share: int
    shares: int
    #: (index in the trace, scheduled time in s, image id) of each of its arrivals, in time order.
    arrivals: tuple[tuple[int, float, str], ...]
    #: ``--max-s``: nothing is sent, nor awaited, ``stop_after_s`` after the trace's origin.
    stop_after_s: float | None
    images: str
    image_count: int
    top_k: int
    timeout_ms: float | None
    max_in_flight: int
    drain_timeout_s: float

    def to_wire(self) -> dict[str, Any]:
        wire = dataclasses.asdict(self)
        wire["arrivals"] = [list(a) for a in self.arrivals]
        return wire

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Share:
        fields = {**data, "arrivals": tuple((int(i), float(t), str(p)) for i, t, p in data["arrivals"])}
        return cls(**fields)


@dataclass
class ShareStatus:
    """One worker's share, as the master follows it."""

    share: int
    worker: str  # Locust's client id
    worker_index: int
    indices: range
    ready: bool = False  # its share loaded, its replay user waiting for go
    received: int = 0
    reported: bool = False  # its last chunk came
    finished: bool = False  # every one of its requests answered before any limit
    lost: bool = False  # the worker left before reporting

    def as_dict(self) -> dict[str, Any]:
        return {
            "share": self.share,
            "worker": self.worker,
            "worker_index": self.worker_index,
            "arrivals": len(self.indices),
            "received": self.received,
            "reported": self.reported,
            "finished": self.finished,
        }


@dataclass
class Collector:
    """The master's records of a distributed replay: one per arrival, the workers' filled in as
    they come back. ``records`` is the master's list (index ``i`` at position ``i``), changed in
    place; :meth:`close` marks whatever never came back :data:`LOST`."""

    records: list[RequestRecord]
    shares: dict[str, ShareStatus] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)

    @classmethod
    def deal(cls, records: list[RequestRecord], workers: Sequence[tuple[str, int]]) -> Collector:
        """Deal the arrivals among ``workers`` (client id, worker index), in worker-index order."""
        if not workers:
            raise LoadgenError("no Locust worker is connected: nothing can replay the trace")
        ordered = sorted(workers, key=lambda w: (w[1], w[0]))
        n = len(ordered)
        shares = {
            worker: ShareStatus(k, worker, index, share_indices(len(records), n, k))
            for k, (worker, index) in enumerate(ordered)
        }
        return cls(records, shares)

    def arrivals(self, worker: str) -> tuple[tuple[int, float, str], ...]:
        out = []
        for i in self.shares[worker].indices:
            scheduled = self.records[i].scheduled_s
            assert scheduled is not None  # a trace's records
            out.append((i, scheduled, self.records[i].image_id))
        return tuple(out)

    def ready(self, worker: str) -> bool:
        """``worker`` is ready; whether every worker now is."""
        status = self.shares.get(worker)
        if status is not None:
            status.ready = True
        return all(s.ready for s in self.shares.values())

    def add(self, worker: str, rows: Iterable[Sequence[Any]], *, last: bool, finished: bool) -> None:
        """Records from ``worker``; anything out of place goes to :attr:`problems`, not the records."""
        status = self.shares.get(worker)
        if status is None:
            self.problems.append(f"records from {worker}, a worker that was dealt no share, ignored")
            return
        for row in rows:
            try:
                record = record_from_wire(row)
            except (TypeError, ValueError) as exc:
                self.problems.append(f"worker {status.worker_index}: a malformed record ignored ({exc})")
                continue
            i = record.index
            if i not in status.indices:
                self.problems.append(
                    f"worker {status.worker_index} sent arrival {i}, not in its share: ignored"
                )
            elif i in self._seen:
                self.problems.append(
                    f"arrival {i} came back twice (worker {status.worker_index}): first kept"
                )
            elif (record.scheduled_s, record.image_id) != (
                self.records[i].scheduled_s,
                self.records[i].image_id,
            ):
                self.problems.append(f"worker {status.worker_index}: arrival {i} is not the trace's: ignored")
            else:
                self.records[i] = record
                self._seen.add(i)
                status.received += 1
        if last:
            status.reported = True
            status.finished = finished and status.received == len(status.indices)

    def leave(self, worker: str) -> None:
        """``worker`` is gone (it quit, or stopped sending heartbeats): do not wait for it."""
        status = self.shares.get(worker)
        if status is not None and not status.reported:
            status.lost = True

    @property
    def done(self) -> bool:
        """Every share reported, or its worker is gone."""
        return all(s.reported or s.lost for s in self.shares.values())

    @property
    def finished(self) -> bool:
        return all(s.reported and s.finished for s in self.shares.values())

    def close(self) -> list[str]:
        """Mark every arrival that never came back :data:`LOST`; the warnings for the summary."""
        warnings = list(self.problems)
        for status in self.shares.values():
            missing = [i for i in status.indices if i not in self._seen]
            for i in missing:
                self.records[i].status = LOST
            if missing:
                warnings.append(
                    f"worker {status.worker_index} ({status.worker}) never reported {len(missing)} of its "
                    f"{len(status.indices)} requests: they count as '{LOST}' (sent or not, unknown)"
                )
        return warnings

    def answered(self) -> int:
        """Requests that had an answer (what Locust's statistics count)."""
        return sum(1 for i in self._seen if self.records[i].status not in (NOT_SENT, UNFINISHED, LOST))

    def as_dict(self) -> dict[str, Any]:
        """The summary's ``distributed`` block."""
        return {
            "workers": len(self.shares),
            "shares": [s.as_dict() for s in sorted(self.shares.values(), key=lambda s: s.share)],
        }


@dataclass(frozen=True)
class Distribution:
    """A distributed run: ``workers`` Locust workers on this machine, and the master waits for
    ``expect_workers`` in all (more when workers on other machines join)."""

    workers: int
    expect_workers: int
    bind_host: str = DEFAULT_MASTER_BIND_HOST
    port: int = DEFAULT_MASTER_PORT

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise LoadgenError(f"--workers must be ≥ 0, got {self.workers}")
        if self.expect_workers < max(1, self.workers):
            raise LoadgenError(
                f"--expect-workers ({self.expect_workers}) must be ≥ 1 and ≥ --workers ({self.workers})"
            )
        if not 0 < self.port < 65536:
            raise LoadgenError(f"--master-port must be in 1..65535, got {self.port}")

    @property
    def remote_workers(self) -> int:
        return self.expect_workers - self.workers

    @property
    def connect_host(self) -> str:
        """Where a worker on this machine reaches the master."""
        return "127.0.0.1" if self.bind_host in _ANY_ADDRESS else self.bind_host

    @property
    def wait_s(self) -> float:
        """How long the master waits for its workers to connect."""
        return REMOTE_WORKERS_WAIT_S if self.remote_workers else LOCAL_WORKERS_WAIT_S

    def master_args(self) -> list[str]:
        """What turns the headless Locust command line into the master's."""
        return [
            "--master",
            "--master-bind-host",
            self.bind_host,
            "--master-bind-port",
            str(self.port),
            "--expect-workers",
            str(self.expect_workers),
            "--expect-workers-max-wait",
            f"{self.wait_s:g}",
        ]

    def remote_command(self) -> str:
        """What to run on another machine to add a worker."""
        host = "<this machine's address>" if self.bind_host in _ANY_ADDRESS else self.bind_host
        return f"greenserve loadtest --worker --master-host {host} --master-port {self.port}"
