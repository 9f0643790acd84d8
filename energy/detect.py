"""Choose and start energy meters: the best source this machine offers, or the one configured."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from energy.accounting import EnergyAccountant
from energy.base import SOURCES, EnergyMeter, EnergySettingError, EnergySourceUnavailable
from energy.cpuclock import machine_busy_cpu_s, process_cpu_s
from energy.estimate import EstimateMeter, validate_watts_per_core
from energy.nvml import NvmlMeter
from energy.rapl import DEFAULT_POWERCAP_ROOT, RaplMeter
from energy.sampler import EnergySampler
from energy.synthetic import (
    DEFAULT_COUNTER_PERIOD_MS,
    DEFAULT_IDLE_W,
    DEFAULT_READ_MS,
    SyntheticMeter,
    validate_synthetic,
)

logger = logging.getLogger(__name__)

#: Every name ``create_meter`` accepts; ``synthetic`` only explicitly (never chosen by ``auto``).
SOURCE_CHOICES: tuple[str, ...] = ("auto", *SOURCES, "synthetic")


@dataclass(frozen=True)
class SyntheticSettings:
    """The synthetic source's knobs (energy.synthetic); defaults as measured on an H200's NVML."""

    idle_w: float = DEFAULT_IDLE_W
    counter_period_ms: float = DEFAULT_COUNTER_PERIOD_MS
    read_ms: float = DEFAULT_READ_MS


def create_meter(
    source: str = "auto",
    *,
    device: str = "cpu",
    watts_per_core: float | None = None,
    powercap_root: str | os.PathLike[str] = DEFAULT_POWERCAP_ROOT,
    synthetic: SyntheticSettings | None = None,
) -> EnergyMeter:
    """Start the energy meter for ``source`` measuring the compute ``device`` (torch-style string).

    ``"auto"`` tries, best first: ``nvml`` (only for a ``cuda`` device), ``rapl``, then ``estimate``,
    which always starts; each skipped source is logged at WARNING with the reason. An explicit source
    that cannot start raises :class:`EnergySourceUnavailable`. ``synthetic`` (a known-truth test
    source, energy.synthetic) is used only when named. Raises EnergySettingError (a ValueError) for
    an unknown source name or a ``watts_per_core`` that is not > 0 (checked even when the estimate is
    not used, so that bad configuration fails at start-up rather than on the day the fallback kicks in).
    """
    if source not in SOURCE_CHOICES:
        raise EnergySettingError(
            f"unknown energy source {source!r}; valid: {', '.join(map(repr, SOURCE_CHOICES))}"
        )
    if watts_per_core is not None:
        validate_watts_per_core(watts_per_core)
    if synthetic is not None:
        validate_synthetic(synthetic.idle_w, synthetic.counter_period_ms, synthetic.read_ms)

    if source == "nvml":
        return NvmlMeter(device)
    if source == "rapl":
        return RaplMeter(powercap_root)
    if source == "estimate":
        return EstimateMeter(watts_per_core)
    if source == "synthetic":
        s = synthetic or SyntheticSettings()
        return SyntheticMeter(
            watts_per_core=EstimateMeter.default_watts(watts_per_core),
            idle_w=s.idle_w,
            counter_period_ms=s.counter_period_ms,
            read_ms=s.read_ms,
        )

    if device.strip().startswith("cuda"):
        try:
            return NvmlMeter(device)
        except EnergySourceUnavailable as exc:
            logger.warning("energy source 'nvml' skipped: %s", exc)
    return create_cpu_meter(watts_per_core=watts_per_core, powercap_root=powercap_root)


def create_cpu_meter(
    *, watts_per_core: float | None = None, powercap_root: str | os.PathLike[str] = DEFAULT_POWERCAP_ROOT
) -> EnergyMeter:
    """The CPU side's meter: ``rapl``, else ``estimate`` (logged at WARNING with the reason)."""
    try:
        return RaplMeter(powercap_root)
    except EnergySourceUnavailable as exc:
        logger.warning("energy source 'rapl' skipped: %s", exc)
    return EstimateMeter(watts_per_core)


def create_accountant(
    source: str = "auto",
    *,
    device: str = "cpu",
    watts_per_core: float | None = None,
    powercap_root: str | os.PathLike[str] = DEFAULT_POWERCAP_ROOT,
    synthetic: SyntheticSettings | None = None,
    period_s: float | None = None,
) -> EnergyAccountant:
    """Meters and samplers for attributing work (energy.accounting), not yet started.

    The meter of ``source`` (as :func:`create_meter`). If it measures an accelerator (nvml), a CPU
    meter (rapl, else estimate) is opened beside it for the CPU-side work, so that a GPU's idle
    draw is never charged to CPU work. Close with :func:`close_accountant`.
    """
    meter = create_meter(
        source, device=device, watts_per_core=watts_per_core, powercap_root=powercap_root, synthetic=synthetic
    )
    accelerator: EnergySampler | None = None
    if meter.cpu_scope is None:
        accelerator = EnergySampler(meter, period_s=period_s)
        try:
            cpu_meter = create_cpu_meter(watts_per_core=watts_per_core, powercap_root=powercap_root)
        except BaseException:
            meter.close()
            raise
    else:
        cpu_meter = meter
        if device.strip().startswith("cuda"):
            logger.warning(
                "energy source %r measures the CPU only: the GPU's own energy is not in any figure "
                "(use 'nvml' or 'auto' to measure it)",
                meter.source,
            )
    cpu_clock = machine_busy_cpu_s if cpu_meter.cpu_scope == "machine" else process_cpu_s
    cpu = EnergySampler(cpu_meter, period_s=period_s if accelerator is None else None, cpu_clock=cpu_clock)
    return EnergyAccountant(cpu, accelerator)


def close_accountant(accountant: EnergyAccountant) -> None:
    """Stop the samplers and close the meters (idempotent)."""
    for sampler in accountant.samplers:
        sampler.stop()
        sampler.meter.close()
