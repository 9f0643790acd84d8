"""Attribution: turning devices' energy curves into the joules of pieces of work, each counted once.

The model (docs/energy.md has a worked example):

- **CPU-side work is charged by CPU time** (the ratio Kepler and Scaphandre use). Over the last
  second of its curve, the CPU meter's energy above idle divided by the CPU time of everything it
  measures (this process for ``estimate`` and ``synthetic``, every process for ``rapl``) is a price
  per CPU-second (:meth:`EnergySampler.joules_per_cpu_s`); a piece of work costs its own threads'
  CPU time at that price. Idle draw is never charged to work.
- **Accelerator work is charged by time.** A GPU batch costs the integral of the GPU's energy curve
  over its compute interval (static draw during that interval included, since the batch holds the
  device); batches that overlap share each overlapping stretch equally (:class:`OverlapLedger`).
- **Shared CPU threads** (torch's intra-op pool) are charged like the accelerator: their CPU time in
  each stretch is shared among the batches running in it.
- **Every joule is counted once.** The accountant keeps what it attributed per device; a device's
  energy minus that is its idle/unattributed energy, so over any interval
  ``device energy = Σ attributed + idle``.
- **Unknown is a value.** While a meter fails or stalls, work gets ``None`` joules and the reason;
  nothing raises.

This module knows nothing of serving: "stages" are strings the caller chooses.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from energy.cpuclock import ThreadGroupClock, current_thread_cpu_s
from energy.sampler import EnergySampler


@dataclass(frozen=True)
class StageEnergy:
    """Joules of one piece of work, per meter source; ``unknown`` says why they are not known."""

    stage: str
    by_source: dict[str, float] = field(default_factory=dict)
    unknown: str | None = None
    cpu_s: float = 0.0

    @property
    def joules(self) -> float | None:
        return None if self.unknown is not None else sum(self.by_source.values())

    def split(self, parts: int) -> StageEnergy:
        """One of ``parts`` equal shares (a request's share of its batch)."""
        return StageEnergy(
            self.stage, {s: j / parts for s, j in self.by_source.items()}, self.unknown, self.cpu_s / parts
        )


class OverlapLedger:
    """Shares a quantity that accrues over time among the intervals open while it accrues.

    ``measure(t_prev, t_now)`` returns what accrued between two consecutive events (an interval
    opening or closing); it is split equally among the intervals open in that stretch. So
    overlapping intervals share their overlap, and the sum of the shares is what accrued while any
    interval was open: nothing counted twice. Thread-safe (events are serialised).
    """

    def __init__(self, measure: Callable[[float, float], float], clock: Callable[[], float] = time.monotonic):
        self._measure = measure
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, float] = {}
        self._next = 0
        self._last_s = clock()

    def _advance(self) -> None:
        now = self._clock()
        accrued = self._measure(self._last_s, now)
        if self._open:
            share = accrued / len(self._open)
            for key in self._open:
                self._open[key] += share
        self._last_s = now

    def open(self) -> int:
        with self._lock:
            self._advance()
            key = self._next
            self._next += 1
            self._open[key] = 0.0
            return key

    def close(self, key: int) -> float:
        with self._lock:
            self._advance()
            return self._open.pop(key)


class _DeltaClock:
    """``measure`` for a ledger over a clock that can only be read now (a thread group's CPU)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last = clock()

    def __call__(self, _t_prev: float, _t_now: float) -> float:
        now = self._clock()
        delta, self._last = max(0.0, now - self._last), now
        return delta


class CpuSpread:
    """A thread's CPU time spread over the events it served: the event loop's time per request.

    :meth:`count` is called once per event as it *starts* (every HTTP request the loop takes,
    whatever its route), from the thread whose clock this is; :meth:`per_event_cpu_s` is that
    thread's CPU time over the last ``window_s`` divided by the events begun in it. Counting
    starts, not completions, keeps a burst fair: 64 requests that arrive together are parsed
    before any is answered, and dividing that work by the few answered so far would charge the
    first answers with everyone's parsing.
    """

    def __init__(self, clock: Callable[[], float] = current_thread_cpu_s, window_s: float = 1.0) -> None:
        self._clock = clock
        self._window_s = window_s
        self._events = 0
        self._marks: deque[tuple[float, float, int]] = deque()  # (monotonic, cpu, events)
        self._marks.append((time.monotonic(), clock(), 0))

    def count(self) -> None:
        self._events += 1
        now = time.monotonic()
        if now - self._marks[-1][0] >= 0.05:  # one mark per 50 ms is plenty for a 1 s window
            self._marks.append((now, self._clock(), self._events))
            while len(self._marks) > 2 and now - self._marks[1][0] >= self._window_s:
                self._marks.popleft()

    def per_event_cpu_s(self) -> float:
        _t0, cpu0, events0 = self._marks[0]
        events = self._events - events0
        if events <= 0:
            return 0.0
        return max(0.0, self._clock() - cpu0) / events


class EnergyAccountant:
    """Attributes work to stages from a CPU meter's sampler and, optionally, an accelerator's.

    ``cpu``: the sampler of the CPU-side meter (rapl, estimate or synthetic), created with a CPU
    clock so that it knows its energy per CPU-second. ``accelerator``: the sampler of a GPU's meter
    (nvml), or None. ``shared_threads``: threads whose CPU time belongs to whichever batches run
    while they work (torch's intra-op pool); more can be added later with :meth:`share_threads`.
    """

    def __init__(self, cpu: EnergySampler, accelerator: EnergySampler | None = None) -> None:
        self.cpu = cpu
        self.accelerator = accelerator
        self._lock = threading.Lock()
        self._attributed: defaultdict[tuple[str, str], float] = defaultdict(float)  # (stage, source)
        self._attributed_device: defaultdict[tuple[str, str], float] = defaultdict(float)  # (source, dev)
        self._idle_exported: dict[tuple[str, str], float] = {}
        self._marks = threading.local()  # a dedicated worker thread's CPU clock when its last work ended
        self._pool = ThreadGroupClock()
        self._pool_ledger = OverlapLedger(_DeltaClock(self._pool.read))
        self._accelerator_ledger = (
            OverlapLedger(lambda t0, t1: accelerator.energy_between(t0, t1))
            if accelerator is not None
            else None
        )

    @property
    def sources(self) -> list[str]:
        """Meter sources, accelerator first: what the ``source`` of a request's energy is made of."""
        return [s.source for s in (self.accelerator, self.cpu) if s is not None]

    @property
    def samplers(self) -> list[EnergySampler]:
        return [s for s in (self.accelerator, self.cpu) if s is not None]

    def share_threads(self, native_ids: list[int]) -> None:
        """Count these threads' CPU time as shared among the work running while they run."""
        for native_id in native_ids:
            self._pool.add(native_id)

    # --- attributing --------------------------------------------------------------------------

    def cpu_work(self, stage: str, cpu_s: float) -> StageEnergy:
        """Joules of ``cpu_s`` CPU seconds of work for ``stage`` (recorded as attributed)."""
        unknown = self.cpu.status()
        factor = self.cpu.joules_per_cpu_s() if unknown is None else None
        if factor is None:
            return StageEnergy(
                stage, unknown=unknown or f"{self.cpu.source} meter has no reading yet", cpu_s=cpu_s
            )
        per_cpu_s, shares = factor
        joules = max(0.0, cpu_s) * per_cpu_s
        self._record(stage, self.cpu.source, {d: joules * f for d, f in shares.items()})
        return StageEnergy(stage, {self.cpu.source: joules}, cpu_s=cpu_s)

    def _record(self, stage: str, source: str, by_device: dict[str, float]) -> None:
        with self._lock:
            self._attributed[(stage, source)] += sum(by_device.values())
            for device, joules in by_device.items():
                self._attributed_device[(source, device)] += joules

    def _thread_start(self, dedicated: bool) -> float:
        """Where the calling thread's CPU time for a piece of work starts: now, or, in a thread
        dedicated to such work (a worker pool's), when its previous piece ended, so that the pool's
        own handling of each job (taking it, handing the result back) is charged too."""
        now = current_thread_cpu_s()
        if not dedicated:
            return now
        mark: float | None = getattr(self._marks, "cpu_s", None)
        return now if mark is None else mark

    def _thread_end(self) -> float:
        now = current_thread_cpu_s()
        self._marks.cpu_s = now
        return now

    @contextmanager
    def thread_work(self, stage: str, *, dedicated: bool = False) -> Iterator[list[StageEnergy]]:
        """Measure the calling thread's CPU time over the block and attribute it to ``stage``.

        ``dedicated``: the thread does nothing but such work (a decode pool's thread), so its CPU
        time since its previous piece of work ended is this piece's. Yields a list that holds the
        :class:`StageEnergy` once the block has finished (also when it raised: the CPU was spent
        all the same).
        """
        out: list[StageEnergy] = []
        start = self._thread_start(dedicated)
        try:
            yield out
        finally:
            out.append(self.cpu_work(stage, self._thread_end() - start))

    @contextmanager
    def batch_work(self, stage: str, *, dedicated: bool = False) -> Iterator[list[StageEnergy]]:
        """Measure a batch run in the calling thread: its own CPU time (since its previous batch
        ended when ``dedicated``, as in :meth:`thread_work`), its share of the shared threads' CPU
        time and of the accelerator's energy while it ran (overlaps shared).

        Yields a list that holds the batch's :class:`StageEnergy` once the block has finished.
        """
        out: list[StageEnergy] = []
        own_start = self._thread_start(dedicated)
        pool_key = self._pool_ledger.open()
        accel_key = self._accelerator_ledger.open() if self._accelerator_ledger is not None else None
        try:
            yield out
        finally:
            cpu_s = self._thread_end() - own_start + self._pool_ledger.close(pool_key)
            energy = self.cpu_work(stage, cpu_s)
            if accel_key is not None:
                assert self._accelerator_ledger is not None and self.accelerator is not None
                accel_j = self._accelerator_ledger.close(accel_key)
                unknown = energy.unknown or self.accelerator.status()
                if unknown is None:
                    device = self.accelerator.devices[0]
                    self._record(stage, self.accelerator.source, {device: accel_j})
                    energy = StageEnergy(
                        stage, {self.accelerator.source: accel_j, **energy.by_source}, cpu_s=cpu_s
                    )
                else:
                    energy = StageEnergy(stage, unknown=unknown, cpu_s=cpu_s)
            out.append(energy)

    # --- totals -------------------------------------------------------------------------------

    def attributed_j(self) -> dict[tuple[str, str], float]:
        """Joules attributed so far, by (stage, source)."""
        with self._lock:
            return dict(self._attributed)

    def idle_j(self) -> dict[tuple[str, str], float]:
        """Per (source, device): the device's energy since start that no work was charged with.

        The device's counter lags its energy by up to one update period while work is charged at
        once, so under load the difference can dip for a moment; the figure is held (never
        decreases, as a Prometheus counter must not) until the counter catches up. After a run,
        once the counter has caught up, ``device = Σ attributed + idle`` exactly.
        """
        with self._lock:
            for sampler in self.samplers:
                for device, total in sampler.total_j().items():
                    key = (sampler.source, device)
                    value = total - self._attributed_device.get(key, 0.0)
                    self._idle_exported[key] = max(self._idle_exported.get(key, 0.0), value)
            return dict(self._idle_exported)
