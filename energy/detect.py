"""Choose and start an energy meter: the best source this machine offers, or the one configured."""

from __future__ import annotations

import logging
import os

from energy.base import SOURCES, EnergyMeter, EnergySourceUnavailable
from energy.estimate import EstimateMeter, validate_watts_per_core
from energy.nvml import NvmlMeter
from energy.rapl import DEFAULT_POWERCAP_ROOT, RaplMeter

logger = logging.getLogger(__name__)

#: Every name ``create_meter`` accepts.
SOURCE_CHOICES: tuple[str, ...] = ("auto", *SOURCES)


def create_meter(
    source: str = "auto",
    *,
    device: str = "cpu",
    watts_per_core: float | None = None,
    powercap_root: str | os.PathLike[str] = DEFAULT_POWERCAP_ROOT,
) -> EnergyMeter:
    """Start the energy meter for ``source`` measuring the compute ``device`` (torch-style string).

    ``"auto"`` tries, best first: ``nvml`` (only for a ``cuda`` device), ``rapl``, then ``estimate``,
    which always starts; each skipped source is logged at WARNING with the reason. An explicit source
    that cannot start raises :class:`EnergySourceUnavailable`. Raises ValueError for an unknown source
    name or a ``watts_per_core`` that is not > 0 (checked even when the estimate is not used, so that
    bad configuration fails at start-up rather than on the day the fallback kicks in).
    """
    if source not in SOURCE_CHOICES:
        raise ValueError(f"unknown energy source {source!r}; valid: {', '.join(map(repr, SOURCE_CHOICES))}")
    if watts_per_core is not None:
        validate_watts_per_core(watts_per_core)

    if source == "nvml":
        return NvmlMeter(device)
    if source == "rapl":
        return RaplMeter(powercap_root)
    if source == "estimate":
        return EstimateMeter(watts_per_core)

    if device.strip().startswith("cuda"):
        try:
            return NvmlMeter(device)
        except EnergySourceUnavailable as exc:
            logger.warning("energy source 'nvml' skipped: %s", exc)
    try:
        return RaplMeter(powercap_root)
    except EnergySourceUnavailable as exc:
        logger.warning("energy source 'rapl' skipped: %s", exc)
    return EstimateMeter(watts_per_core)
