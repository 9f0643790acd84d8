"""Energy of arbitrary time intervals, from a history of cumulative readings taken in the background.

Hardware counters refresh slowly (NVML every ~10-100 ms), so reading the meter just before and just
after a 5 ms batch often yields 0 J for that batch and a lump for a later one. The sampler reads the
meter every ``period_s`` on a daemon thread, keeps ``(time, cumulative joules)`` points, and answers
:meth:`EnergySampler.energy_between` by linear interpolation of that cumulative curve, which spreads
each counter step over the interval it accrued in. The same history gives a power gauge.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import NamedTuple

from energy.base import EnergyMeter

logger = logging.getLogger(__name__)

#: Window for :meth:`EnergySampler.power_w`, in seconds.
POWER_WINDOW_S = 1.0


class _Sample(NamedTuple):
    time_s: float  # clock() stamp
    total_j: float  # sum over devices, kept so that energy_between needs no per-device work
    energy_j: dict[str, float]  # cumulative joules per device


class EnergySampler:
    """Background sampler over one :class:`EnergyMeter`; thread-safe.

    Keeps about ``history_s`` of samples (a bounded deque: if callers add many on-demand samples the
    bound can make it shorter). Takes one sample on construction, so the history is never empty.
    ``clock`` must be the clock callers stamp intervals with (``time.monotonic`` by default); it is
    injectable for tests. The sampler does not own the meter: :meth:`stop` does not close it.
    """

    def __init__(
        self,
        meter: EnergyMeter,
        *,
        period_s: float = 0.02,
        history_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        if not history_s > period_s:
            raise ValueError(f"history_s must be > period_s ({period_s!r}), got {history_s!r}")
        self.meter = meter
        self.source = meter.source
        self.period_s = period_s
        self.history_s = history_s
        self._clock = clock
        self._lock = threading.Lock()
        # Twice the periodic samples leaves room for on-demand ones before the time-based pruning.
        self._history: deque[_Sample] = deque(maxlen=2 * int(history_s / period_s) + 16)
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._failing = False
        self.sample()

    @property
    def devices(self) -> list[str]:
        return self.meter.devices

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread (a daemon). Idempotent."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop_event = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop_event,), name=f"energy-sampler-{self.source}", daemon=True
            )
            self._thread.start()
        logger.debug("energy sampler started: source=%s period_s=%s", self.source, self.period_s)

    def stop(self) -> None:
        """Stop the background thread and wait for it to finish. Idempotent; the meter stays open."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop_event.set()
        if thread is not None:
            thread.join()
            logger.debug("energy sampler stopped: source=%s", self.source)

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
        while not stop_event.wait(self.period_s):
            try:
                self.sample()
            except Exception:
                # Keep sampling (the sensor may come back), but log once per outage, not 50 times a second.
                if not self._failing:
                    logger.exception(
                        "energy sampler (%s): reading the meter failed; will keep trying", self.source
                    )
                self._failing = True
            else:
                if self._failing:
                    logger.warning("energy sampler (%s): meter readable again", self.source)
                self._failing = False

    # --- readings -------------------------------------------------------------------------------

    def sample(self) -> tuple[float, dict[str, float]]:
        """Read the meter now; return ``(time, cumulative joules per device)`` and append it to the history.

        The time is the midpoint of the read, on the sampler's clock. Raises what the meter raises.
        """
        with self._lock:
            # Reading under the lock keeps the history ordered in time and the meter single-threaded.
            before_s = self._clock()
            energy_j = dict(self.meter.read_j())
            time_s = (before_s + self._clock()) / 2.0
            if self._history and time_s < self._history[-1].time_s:
                time_s = self._history[-1].time_s  # a clock that stands still (tests) must not reorder
            self._history.append(_Sample(time_s, sum(energy_j.values()), energy_j))
            while time_s - self._history[0].time_s > self.history_s:
                self._history.popleft()
            return time_s, dict(energy_j)

    def energy_between(self, t0: float, t1: float) -> float:
        """Joules summed over devices between clock stamps ``t0`` and ``t1``.

        Linearly interpolates the cumulative curve. If ``t1`` is newer than the newest sample, a fresh
        sample is taken first. ``t0`` older than the history is clamped to the oldest sample (logged at
        debug). Raises ValueError if ``t1 < t0``.
        """
        if t1 < t0:
            raise ValueError(f"t1 ({t1!r}) is earlier than t0 ({t0!r})")
        with self._lock:
            newest_s = self._history[-1].time_s
        if t1 > newest_s:
            self.sample()
        with self._lock:
            history = self._history
            if t0 < history[0].time_s:
                logger.debug(
                    "energy_between: t0=%.3f is %.3f s older than the history; clamped to the oldest sample",
                    t0,
                    history[0].time_s - t0,
                )
            return max(0.0, _total_at(history, t1) - _total_at(history, t0))

    def total_j(self) -> dict[str, float]:
        """Latest cumulative joules per device (from the newest sample; no new reading)."""
        with self._lock:
            return dict(self._history[-1].energy_j)

    def power_w(self) -> dict[str, float]:
        """Mean watts per device over the last ~``POWER_WINDOW_S`` of samples; 0.0 with < 2 samples."""
        with self._lock:
            newest = self._history[-1]
            if len(self._history) < 2:
                return dict.fromkeys(newest.energy_j, 0.0)
            # The oldest sample inside the window, but never the newest itself (sparse sampling).
            index = bisect.bisect_left(self._history, newest.time_s - POWER_WINDOW_S, key=_time_of)
            oldest = self._history[min(index, len(self._history) - 2)]
        elapsed_s = newest.time_s - oldest.time_s
        if elapsed_s <= 0:
            return dict.fromkeys(newest.energy_j, 0.0)
        return {
            device: (energy_j - oldest.energy_j.get(device, 0.0)) / elapsed_s
            for device, energy_j in newest.energy_j.items()
        }


def _time_of(sample: _Sample) -> float:
    return sample.time_s


def _total_at(history: deque[_Sample], time_s: float) -> float:
    """Cumulative joules (all devices) at ``time_s``, interpolated; clamped to the ends of the history."""
    if time_s <= history[0].time_s:
        return history[0].total_j
    if time_s >= history[-1].time_s:
        return history[-1].total_j
    after = bisect.bisect_right(
        history, time_s, key=_time_of
    )  # history[after - 1] <= time_s < history[after]
    left, right = history[after - 1], history[after]
    fraction = (time_s - left.time_s) / (right.time_s - left.time_s)
    return left.total_j + fraction * (right.total_j - left.total_j)
