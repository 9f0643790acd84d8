"""Energy meters (NVML, RAPL, estimate) and a sampler for per-interval energy.

This package knows nothing of serving: give it a device string, get cumulative joules per device,
and let :class:`EnergySampler` answer "how many joules between t0 and t1". See ``docs/energy.md``.
"""

from energy.base import SOURCES, EnergyError, EnergyMeter, EnergySourceUnavailable
from energy.detect import SOURCE_CHOICES, create_meter
from energy.estimate import DEFAULT_WATTS_PER_CORE, EstimateMeter
from energy.nvml import NvmlMeter
from energy.rapl import RaplMeter
from energy.sampler import EnergySampler

__all__ = [
    "DEFAULT_WATTS_PER_CORE",
    "SOURCES",
    "SOURCE_CHOICES",
    "EnergyError",
    "EnergyMeter",
    "EnergySampler",
    "EnergySourceUnavailable",
    "EstimateMeter",
    "NvmlMeter",
    "RaplMeter",
    "create_meter",
]
