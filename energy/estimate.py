"""An energy *estimate* for machines without a readable sensor (VMs, CI runners, locked-down hosts).

Model: energy = CPU time of this process × watts per core.

``time.process_time()`` counts user + system time of every thread of this process, so a batch that
keeps four threads busy for 0.1 s accrues 0.4 core-seconds. Multiplying by an active power per core
gives the energy *attributable to this process's computation*. It deliberately excludes idle power,
uncore, DRAM and the rest of the machine, and it cannot see frequency or instruction mix: treat it
as a relative measure (more work → proportionally more joules), labelled ``estimate`` everywhere.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from energy.base import EnergyMeter, EnergySettingError
from energy.identity import process_device_id

logger = logging.getLogger(__name__)

#: Active power per busy core, in watts. Server CPUs spend roughly 5-15 W per core under load:
#: e.g. a 205 W TDP part with 20 cores is about 10 W per core. We do not look the CPU up in a TDP
#: table: such tables go stale, and on VMs a "core" is usually a hyperthread (half a physical core),
#: so TDP / cores would be off by up to 2x anyway. Set ``watts_per_core`` (TDP / cores of your CPU)
#: when you know better.
DEFAULT_WATTS_PER_CORE = 10.0


def validate_watts_per_core(watts_per_core: float) -> float:
    """Return ``watts_per_core`` if it is a finite number > 0; raise EnergySettingError (a ValueError)
    naming it otherwise."""
    if not (math.isfinite(watts_per_core) and watts_per_core > 0):
        raise EnergySettingError(f"watts_per_core must be a finite number > 0, got {watts_per_core!r}")
    return float(watts_per_core)


class EstimateMeter(EnergyMeter):
    """Estimated joules for this process: CPU seconds since creation × ``watts_per_core``.

    ``cpu_time_s`` is injectable for tests; it must be a non-decreasing clock of CPU seconds.
    """

    source = "estimate"
    idle_included = False
    cpu_scope = "process"

    def __init__(
        self,
        watts_per_core: float | None = None,
        *,
        cpu_time_s: Callable[[], float] = time.process_time,
    ) -> None:
        self.watts_per_core = self.default_watts(watts_per_core)
        self._cpu_time_s = cpu_time_s
        self._start_s = cpu_time_s()
        self._last_j = 0.0
        self._lock = threading.Lock()
        self._label = process_device_id(self.source)
        logger.info(
            "energy source 'estimate': process CPU time × %.2f W per core (no sensor; an estimate)",
            self.watts_per_core,
        )

    @staticmethod
    def default_watts(watts_per_core: float | None) -> float:
        """``watts_per_core`` validated, or the default when None."""
        return validate_watts_per_core(DEFAULT_WATTS_PER_CORE if watts_per_core is None else watts_per_core)

    @property
    def devices(self) -> list[str]:
        return [self._label]

    def read_j(self) -> dict[str, float]:
        with self._lock:
            energy_j = (self._cpu_time_s() - self._start_s) * self.watts_per_core
            # process_time() is monotonic in practice; the max() makes "never decreases" a guarantee.
            self._last_j = max(self._last_j, energy_j)
            return {self._label: self._last_j}
