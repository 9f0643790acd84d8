"""Energy meters (NVML, RAPL, estimate, synthetic), the curve sampler, and attribution of work.

This package knows nothing of serving: give it a device string, get cumulative joules per device;
:class:`EnergySampler` reconstructs each device's energy curve in the background, and
:class:`EnergyAccountant` charges pieces of work (CPU time, accelerator time) with joules, each
counted once. See ``docs/energy.md``.
"""

from energy.accounting import CpuSpread, EnergyAccountant, OverlapLedger, StageEnergy
from energy.base import (
    MODEL_SOURCES,
    SOURCES,
    EnergyError,
    EnergyMeter,
    EnergySettingError,
    EnergySourceUnavailable,
)
from energy.detect import (
    SOURCE_CHOICES,
    SyntheticSettings,
    close_accountant,
    create_accountant,
    create_cpu_meter,
    create_meter,
)
from energy.estimate import DEFAULT_WATTS_PER_CORE, EstimateMeter
from energy.nvml import NvmlMeter
from energy.rapl import RaplMeter
from energy.sampler import EnergySampler
from energy.synthetic import SyntheticMeter

__all__ = [
    "DEFAULT_WATTS_PER_CORE",
    "MODEL_SOURCES",
    "SOURCES",
    "SOURCE_CHOICES",
    "CpuSpread",
    "EnergyAccountant",
    "EnergyError",
    "EnergyMeter",
    "EnergySampler",
    "EnergySettingError",
    "EnergySourceUnavailable",
    "EstimateMeter",
    "NvmlMeter",
    "OverlapLedger",
    "RaplMeter",
    "StageEnergy",
    "SyntheticMeter",
    "SyntheticSettings",
    "close_accountant",
    "create_accountant",
    "create_cpu_meter",
    "create_meter",
]
