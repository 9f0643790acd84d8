"""A ``synthetic`` energy source whose truth is known at every instant: for testing the accounting.

Power model (the estimate's, plus a constant idle draw)::

    power(t) = idle_w + watts_per_core × (CPU seconds per second this process uses at t)
    energy(t) = idle_w × (t − start) + watts_per_core × (process CPU time(t) − CPU time at start)

What makes it a test of the *accounting* rather than of a model is how it is read: like NVIDIA's
total-energy counter (measured on an H200: docs/energy.md), the counter advances only every
``counter_period_s`` (a "firmware" thread stores the true energy at each tick; between ticks a read
returns the last stored value), and every read takes ``read_s`` (a sleep, so it holds no lock and
burns no CPU, as a ctypes call into the driver releases the GIL). Code that reads this counter on
a request's path is slow; code that takes a batch's energy as the difference of two reads gets 0 J
or a whole tick. :meth:`SyntheticMeter.true_j` gives the exact energy for tests to compare with.

Selected only explicitly (``--energy-source synthetic``), never by ``auto``, and always labelled
``synthetic``: its joules describe no hardware.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from energy.base import EnergyError, EnergyMeter, EnergySettingError
from energy.identity import process_device_id

logger = logging.getLogger(__name__)

DEFAULT_IDLE_W = 10.0
DEFAULT_COUNTER_PERIOD_MS = 100.0
DEFAULT_READ_MS = 4.0


def validate_synthetic(idle_w: float, counter_period_ms: float, read_ms: float) -> None:
    """Raise EnergySettingError (a ValueError) naming the first setting that is not a finite number in
    its range."""
    if not (math.isfinite(idle_w) and idle_w >= 0):
        raise EnergySettingError(f"synthetic idle power must be a finite number >= 0 W, got {idle_w!r}")
    if not (math.isfinite(counter_period_ms) and 0 < counter_period_ms <= 10_000):
        raise EnergySettingError(
            f"synthetic counter period must be in (0, 10000] ms, got {counter_period_ms!r}"
        )
    if not (math.isfinite(read_ms) and 0 <= read_ms <= 1_000):
        raise EnergySettingError(f"synthetic read time must be in [0, 1000] ms, got {read_ms!r}")


class SyntheticMeter(EnergyMeter):
    """Known-truth energy of this process (see the module docstring); one device.

    ``cpu_time_s`` and ``clock`` are injectable for tests. ``counter_period_s`` = 0 is not allowed;
    a very short period approximates an instantaneous counter.
    """

    source = "synthetic"
    idle_included = True
    cpu_scope = "process"

    def __init__(
        self,
        *,
        watts_per_core: float,
        idle_w: float = DEFAULT_IDLE_W,
        counter_period_ms: float = DEFAULT_COUNTER_PERIOD_MS,
        read_ms: float = DEFAULT_READ_MS,
        cpu_time_s: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        validate_synthetic(idle_w, counter_period_ms, read_ms)
        if not (math.isfinite(watts_per_core) and watts_per_core > 0):
            raise EnergySettingError(f"watts_per_core must be a finite number > 0, got {watts_per_core!r}")
        self.watts_per_core = float(watts_per_core)
        self.idle_w = float(idle_w)
        self.counter_period_s = counter_period_ms / 1000
        self.read_s = read_ms / 1000
        self._cpu_time_s = cpu_time_s
        self._clock = clock
        self._start_s = clock()
        self._start_cpu_s = cpu_time_s()
        self._label = process_device_id("synthetic")
        self._lock = threading.Lock()
        self._counter_j = 0.0
        self._stop = threading.Event()
        self._closed = False
        self._firmware = threading.Thread(target=self._tick, name="synthetic-counter", daemon=True)
        self._firmware.start()
        logger.info(
            "energy source 'synthetic': %.1f W idle + process CPU time × %.2f W per core, read through a "
            "counter that advances every %.0f ms and takes %.1f ms to read (a test source, not a "
            "measurement)",
            self.idle_w,
            self.watts_per_core,
            counter_period_ms,
            read_ms,
        )

    @property
    def idle_power_w(self) -> dict[str, float]:
        return {self._label: self.idle_w}

    @property
    def devices(self) -> list[str]:
        return [self._label]

    def true_j(self) -> float:
        """The exact energy since creation, now (what the counter converges to)."""
        return self.idle_w * (self._clock() - self._start_s) + self.watts_per_core * (
            self._cpu_time_s() - self._start_cpu_s
        )

    def _tick(self) -> None:
        # Ticks on a fixed grid from the start (not "period after the last tick"), as a hardware
        # timer does, so the counter's phase does not drift with scheduling delays.
        tick = 1
        while not self._stop.wait(max(0.0, self._start_s + tick * self.counter_period_s - self._clock())):
            value = self.true_j()
            with self._lock:
                self._counter_j = max(self._counter_j, value)
            tick = max(tick + 1, math.floor((self._clock() - self._start_s) / self.counter_period_s) + 1)

    def read_j(self) -> dict[str, float]:
        if self.read_s > 0:
            time.sleep(self.read_s)
        with self._lock:
            if self._closed:
                raise EnergyError("synthetic meter is closed")
            return {self._label: self._counter_j}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._firmware is not threading.current_thread():
            self._firmware.join(timeout=5)
