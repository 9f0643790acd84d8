"""A device's energy curve, reconstructed from readings taken in the background, and never read on demand.

Hardware counters refresh slowly (NVML's total-energy counter every 100 ms on an H200) and reading
them is slow too (4 ms a read there). So nothing that serves a request reads the meter: a daemon
thread reads it every ``period_s`` and keeps a *curve* of cumulative joules against
``time.monotonic()``, and callers ask the curve:

- **Curve points are the instants the counter changed.** A counter that advanced between two reads
  changed at some instant in between; the point is placed at the middle of that gap, or, when the
  counter advances more often than it is read, half a counter period before the read. Between
  points the curve is linear, so a 5 ms batch gets its share of a 100 ms step (no 0 J batches, and
  no batch receives a whole step: no lumps). A counter that stays flat for two of its periods is
  flat (a point is added), not merely late.
- **The counter's update period is detected** when the thread starts (reads back to back until the
  counter has changed a few times; logged) and the sampling period is a quarter of it, 5–50 ms,
  so the curve has points at least twice per counter update; counters that change at every read
  (RAPL, the estimate) are sampled every 20 ms unless configured.
- **Beyond the newest point** the curve continues at the mean power of the last second, so an
  interval that ended a moment ago has an answer now; it is corrected as new points arrive (the
  correction lands in whatever interval is asked about next, and in the idle remainder).
- **CPU time alongside.** When given a CPU clock (this process's, or the machine's for RAPL), each
  reading also records it, which gives the device's *energy per CPU-second* over the last second:
  the factor by which :mod:`energy.accounting` turns a stage's CPU time into joules.
- **A failing or stalled meter** is a state, not an exception for callers: :meth:`status` says
  why the energy is unknown, :attr:`read_errors` counts failed reads and stall episodes, and the log
  says so once per episode.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import NamedTuple

from energy.base import EnergyMeter, EnergySettingError

logger = logging.getLogger(__name__)

#: Window for :meth:`EnergySampler.power_w`, the extrapolation and the energy per CPU-second (s).
POWER_WINDOW_S = 1.0
#: Sampling period for counters that change at every read, unless configured (s).
DEFAULT_PERIOD_S = 0.02
MIN_AUTO_PERIOD_S = 0.005
MAX_AUTO_PERIOD_S = 0.05
#: Period detection: read until the counter changed this many times, or for at most DETECT_S.
DETECT_CHANGES = 5
DETECT_S = 1.5
#: A counter that changed at this share of back-to-back reads or more is "instantaneous".
INSTANT_SHARE = 0.8


class _Point(NamedTuple):
    time_s: float  # clock() stamp
    total_j: float  # sum over devices
    energy_j: dict[str, float]  # cumulative joules per device


class _Reading(NamedTuple):
    time_s: float
    energy_j: dict[str, float]
    cpu_s: float | None


class EnergySampler:
    """Background sampler over one :class:`EnergyMeter`; thread-safe. See the module docstring.

    ``period_s``: the sampling period; None detects the counter's update period when the thread
    starts and samples at a quarter of it. ``cpu_clock``: CPU seconds to record with each reading
    (None: no energy per CPU-second). ``idle_power_w``: each device's idle power, subtracted before
    the energy per CPU-second (default: what the meter knows; see :meth:`measure_idle`).
    ``clock`` must be the clock callers stamp intervals with (``time.monotonic``); injectable for
    tests. The sampler does not own the meter: :meth:`stop` does not close it.
    """

    def __init__(
        self,
        meter: EnergyMeter,
        *,
        period_s: float | None = None,
        history_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] | None = None,
        idle_power_w: dict[str, float] | None = None,
    ) -> None:
        if period_s is not None and not period_s > 0:
            raise EnergySettingError(f"period_s must be > 0, got {period_s!r}")
        if not history_s > (period_s or DEFAULT_PERIOD_S) * 4:
            raise EnergySettingError(f"history_s must be > 4 sampling periods, got {history_s!r}")
        self.meter = meter
        self.source = meter.source
        self.history_s = history_s
        self._configured_period_s = period_s
        self.period_s = period_s or DEFAULT_PERIOD_S
        #: The counter's detected update period (s); 0 for a counter that changes at every read.
        self.counter_period_s: float | None = None if period_s is None else 0.0
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.idle_power_w: dict[str, float] | None = (
            dict(idle_power_w) if idle_power_w is not None else meter.idle_power_w
        )
        self._lock = threading.Lock()
        self._points: deque[_Point] = deque()
        self._cpu: deque[tuple[float, float]] = deque()  # (time, CPU seconds) at each reading
        self._last_reading: _Reading | None = None
        self._k: tuple[float, dict[str, float]] | None = None  # J per CPU-second, device fractions
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._ready = threading.Event()
        self.read_errors = 0
        self._error: str | None = None  # the current failure, until a read succeeds
        self._last_ok_s = clock()
        self._stalled = False
        self.sample()
        if self.counter_period_s is not None:
            self._ready.set()

    @property
    def devices(self) -> list[str]:
        return self.meter.devices

    @property
    def stall_after_s(self) -> float:
        """No successful reading for this long means the meter is stalled (energy unknown)."""
        return max(1.0, 3 * (self.counter_period_s or 0.0), 5 * self.period_s)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (a daemon); it detects the counter's period first. Idempotent."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop_event = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop_event,), name=f"energy-sampler-{self.source}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the background thread and wait for it to finish. Idempotent; the meter stays open."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop_event.set()
        if thread is not None:
            thread.join()
            logger.debug("energy sampler stopped: source=%s", self.source)

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the counter's period is known (detection done); return whether it is."""
        return self._ready.wait(timeout_s)

    def __enter__(self) -> EnergySampler:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, stop_event: threading.Event) -> None:
        if self.counter_period_s is None:
            self._detect_period(stop_event)
        logger.debug("energy sampler started: source=%s period_s=%s", self.source, self.period_s)
        while not stop_event.wait(self.period_s):
            self._sample_logged()

    def _sample_logged(self) -> bool:
        try:
            self.sample()
        except Exception:
            return False
        return True

    def _detect_period(self, stop_event: threading.Event) -> None:
        """Read back to back until the counter changed DETECT_CHANGES times (or DETECT_S passed)."""
        readings: list[tuple[float, float]] = []
        deadline = self._clock() + DETECT_S
        changes: list[float] = []
        while self._clock() < deadline and len(changes) < DETECT_CHANGES and not stop_event.is_set():
            if self._sample_logged():
                with self._lock:
                    reading = self._last_reading
                assert reading is not None
                total = sum(reading.energy_j.values())
                if readings and total != readings[-1][1]:
                    changes.append(reading.time_s)
                readings.append((reading.time_s, total))
            stop_event.wait(0.0005)
        reads = max(1, len(readings) - 1)
        if len(changes) >= INSTANT_SHARE * reads:
            counter_period_s = 0.0
        elif len(changes) >= 2:
            counter_period_s = statistics.median(b - a for a, b in itertools.pairwise(changes))
        else:
            counter_period_s = DETECT_S  # changed at most once in DETECT_S: a slow counter
        with self._lock:
            self.counter_period_s = counter_period_s
            if self._configured_period_s is None and counter_period_s > 0:
                self.period_s = min(MAX_AUTO_PERIOD_S, max(MIN_AUTO_PERIOD_S, counter_period_s / 4))
        if counter_period_s > 0:
            logger.info(
                "energy counter (%s) updates every %.1f ms (detected over %d reads); sampling every %.0f ms",
                self.source,
                counter_period_s * 1000,
                len(readings),
                self.period_s * 1000,
            )
        else:
            logger.info(
                "energy counter (%s) changes at every read; sampling every %.0f ms",
                self.source,
                self.period_s * 1000,
            )
        self._ready.set()

    # --- readings -------------------------------------------------------------------------------

    def sample(self) -> tuple[float, dict[str, float]]:
        """Read the meter now and add the reading to the curve; return ``(time, joules per device)``.

        For the background thread and for studies; never call it on a request's path (a read can
        take milliseconds). Raises what the meter raises, after counting and logging the failure.
        """
        before_s = self._clock()
        try:
            energy_j = dict(self.meter.read_j())
        except Exception as exc:
            with self._lock:
                self.read_errors += 1
                first = self._error is None
                self._error = f"{type(exc).__name__}: {exc}"[:200]
            if first:
                logger.exception(
                    "energy meter (%s): reading failed; energy is unknown until it recovers", self.source
                )
            raise
        after_s = self._clock()
        cpu_s = self._cpu_clock() if self._cpu_clock is not None else None
        with self._lock:
            if self._error is not None or self._stalled:
                logger.warning("energy meter (%s): readable again", self.source)
            self._error = None
            self._stalled = False
            self._last_ok_s = after_s
            time_s = (before_s + after_s) / 2.0
            self._ingest(_Reading(time_s, energy_j, cpu_s))
        return time_s, dict(energy_j)

    def _ingest(self, reading: _Reading) -> None:
        """Add a reading to the curve (under the lock)."""
        previous = self._last_reading
        if previous is not None and reading.time_s < previous.time_s:
            reading = reading._replace(time_s=previous.time_s)  # a clock that stands still (tests)
        self._last_reading = reading
        if reading.cpu_s is not None:
            self._cpu.append((reading.time_s, reading.cpu_s))
        total = sum(reading.energy_j.values())
        last = self._points[-1] if self._points else None
        period = self.counter_period_s or 0.0
        if last is None:
            self._points.append(_Point(reading.time_s, total, reading.energy_j))
        elif total != last.total_j:
            assert previous is not None
            # The counter changed somewhere in (previous read, this read]; where, within half a
            # counter period of this read when it changes faster than it is read.
            at = max((previous.time_s + reading.time_s) / 2.0, reading.time_s - period / 2.0, last.time_s)
            self._points.append(_Point(at, total, reading.energy_j))
            self._refresh_k()
        elif reading.time_s - last.time_s >= 2 * period + self.period_s:
            self._points.append(_Point(reading.time_s - period / 2.0, total, reading.energy_j))
            self._refresh_k()
        newest = reading.time_s
        while len(self._points) > 2 and newest - self._points[0].time_s > self.history_s:
            self._points.popleft()
        while len(self._cpu) > 2 and newest - self._cpu[0][0] > self.history_s:
            self._cpu.popleft()

    # --- the curve ------------------------------------------------------------------------------

    def status(self) -> str | None:
        """None while the curve is trustworthy; else why the energy is unknown (failing or stalled)."""
        with self._lock:
            if self._error is not None:
                return f"{self.source} meter read failed ({self._error})"
            silent_s = self._clock() - self._last_ok_s
            if silent_s <= self.stall_after_s:
                return None
            if not self._stalled:
                self._stalled = True
                self.read_errors += 1
                logger.warning(
                    "energy meter (%s): no reading for %.1f s (stalled); energy is unknown until it recovers",
                    self.source,
                    silent_s,
                )
            return f"{self.source} meter stalled (no reading for {silent_s:.1f} s)"

    def energy_between(self, t0: float, t1: float, *, settle: bool = False, timeout_s: float = 5.0) -> float:
        """Joules summed over devices between clock stamps ``t0`` and ``t1``, from the curve.

        Never reads the meter unless ``settle``: then (for studies, where waiting is free) it waits
        up to ``timeout_s`` until the curve has a point at or after ``t1`` (reading the meter itself
        when the background thread is not running), so that the answer is an interpolation, not an
        extrapolation. ``t0`` older than the history is clamped to the oldest point. Raises
        EnergySettingError (a ValueError) if ``t1 < t0``.
        """
        if t1 < t0:
            raise EnergySettingError(f"t1 ({t1!r}) is earlier than t0 ({t0!r})")
        if settle:
            self.wait_settled(t1, timeout_s)
        with self._lock:
            return max(0.0, self._total_at(t1) - self._total_at(t0))

    def wait_settled(self, time_s: float, timeout_s: float) -> bool:
        """Wait until the curve has a point at or after ``time_s``; return whether it has."""
        deadline = self._clock() + timeout_s
        while True:
            with self._lock:
                if self._points and self._points[-1].time_s >= time_s:
                    return True
                running = self._thread is not None and self._thread.is_alive()
            if self._clock() >= deadline:
                return False
            if not running:
                try:
                    self.sample()
                except Exception:
                    return False
            time.sleep(min(self.period_s, max(0.0, deadline - self._clock())))

    def cumulative_j(self, time_s: float) -> float:
        """The curve's cumulative joules (all devices) at ``time_s``."""
        with self._lock:
            return self._total_at(time_s)

    def total_j(self) -> dict[str, float]:
        """Latest cumulative joules per device (the newest reading; no new read)."""
        with self._lock:
            assert self._last_reading is not None
            return dict(self._last_reading.energy_j)

    def power_w(self) -> dict[str, float]:
        """Mean watts per device over the last ~``POWER_WINDOW_S`` of the curve; 0.0 with < 2 points."""
        with self._lock:
            window = self._window()
        if window is None:
            return dict.fromkeys(self.devices, 0.0)
        oldest, newest = window
        elapsed_s = newest.time_s - oldest.time_s
        return {
            device: (energy_j - oldest.energy_j.get(device, 0.0)) / elapsed_s
            for device, energy_j in newest.energy_j.items()
        }

    def joules_per_cpu_s(self) -> tuple[float, dict[str, float]] | None:
        """The device's energy above idle per CPU-second of its consumers, over the last second.

        Returns ``(joules per CPU-second, each device's fraction of that energy)``, or None before
        two curve points exist or without a CPU clock. Computed when a point is added, so reading it
        costs nothing.
        """
        with self._lock:
            return self._k

    # --- internals (under the lock) ----------------------------------------------------------------

    def _window(self) -> tuple[_Point, _Point] | None:
        """The oldest point at least POWER_WINDOW_S before the newest (else the oldest) and the newest."""
        if len(self._points) < 2:
            return None
        newest = self._points[-1]
        index = bisect.bisect_right(self._points, newest.time_s - POWER_WINDOW_S, key=_time_of)
        oldest = self._points[max(0, min(index - 1, len(self._points) - 2))]
        if newest.time_s <= oldest.time_s:
            return None
        return oldest, newest

    def _refresh_k(self) -> None:
        window = self._window()
        if window is None or not self._cpu:
            self._k = None if window is None else self._k
            return
        oldest, newest = window
        cpu_s = _interpolate(self._cpu, newest.time_s) - _interpolate(self._cpu, oldest.time_s)
        if cpu_s <= 1e-6:
            return  # no CPU time in the window: keep the previous factor
        elapsed_s = newest.time_s - oldest.time_s
        idle = self.idle_power_w or {}
        dynamic = {
            device: max(0.0, energy_j - oldest.energy_j.get(device, 0.0) - idle.get(device, 0.0) * elapsed_s)
            for device, energy_j in newest.energy_j.items()
        }
        total = sum(dynamic.values())
        share = {d: (j / total if total > 0 else 1.0 / len(dynamic)) for d, j in dynamic.items()}
        self._k = (total / cpu_s, share)

    def _total_at(self, time_s: float) -> float:
        """Cumulative joules (all devices) at ``time_s``: interpolated, or extrapolated past the end."""
        points = self._points
        if time_s <= points[0].time_s:
            return points[0].total_j
        last = points[-1]
        if time_s >= last.time_s:
            window = self._window()
            if window is None:
                return last.total_j
            oldest, newest = window
            power = (newest.total_j - oldest.total_j) / (newest.time_s - oldest.time_s)
            return last.total_j + power * (time_s - last.time_s)
        after = bisect.bisect_right(points, time_s, key=_time_of)  # points[after-1] <= t < points[after]
        left, right = points[after - 1], points[after]
        fraction = (time_s - left.time_s) / (right.time_s - left.time_s)
        return left.total_j + fraction * (right.total_j - left.total_j)

    def measure_idle(self, seconds: float) -> dict[str, float]:
        """Measure each device's idle power over ``seconds`` (while nothing else runs) and use it
        as the baseline of the energy per CPU-second; returns it. For meters whose idle draw is
        unknown (RAPL); other processes' load at that moment is counted as idle too."""
        self.sample()
        start = self.total_j()
        start_s = self._clock()
        time.sleep(seconds)
        self.sample()
        end = self.total_j()
        elapsed_s = max(1e-9, self._clock() - start_s)
        idle = {d: max(0.0, (end[d] - start.get(d, 0.0)) / elapsed_s) for d in end}
        with self._lock:
            self.idle_power_w = idle
            self._refresh_k()
        logger.info(
            "energy (%s): idle power measured over %.1f s: %s",
            self.source,
            seconds,
            ", ".join(f"{d} {w:.1f} W" for d, w in idle.items()),
        )
        return idle


def _time_of(point: _Point) -> float:
    return point.time_s


def _interpolate(track: deque[tuple[float, float]], time_s: float) -> float:
    """Linear interpolation in a time-ordered (time, value) track, extrapolated at its ends' slopes."""
    if len(track) == 1:
        return track[0][1]
    index = bisect.bisect_right(track, time_s, key=lambda item: item[0])
    index = min(max(index, 1), len(track) - 1)
    (t_a, v_a), (t_b, v_b) = track[index - 1], track[index]
    if t_b <= t_a:
        return v_b
    return v_a + (v_b - v_a) * (time_s - t_a) / (t_b - t_a)
