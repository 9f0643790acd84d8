"""The energy-meter interface and the package's errors.

Every meter reports *cumulative* joules per device since it was created. Cumulative counters are
what the hardware gives us (NVML, RAPL) and they compose well: the energy of any interval is the
difference of two readings, and the sampler (:mod:`energy.sampler`) interpolates between readings
for intervals shorter than the counter's update period.
"""

from __future__ import annotations

import abc
from types import TracebackType

#: Names of the concrete sources, best first. ``create_meter`` also accepts ``"auto"``.
SOURCES: tuple[str, ...] = ("nvml", "rapl", "estimate")


class EnergyError(Exception):
    """Root of every error raised by the energy package."""


class EnergySourceUnavailable(EnergyError):  # noqa: N818 -- public name fixed by the service's contract
    """A source cannot start on this machine; the message says why and what to do about it."""


class EnergyMeter(abc.ABC):
    """Cumulative energy per device, in joules, since the meter was created.

    Subclasses set :attr:`source` and implement :attr:`devices` and :meth:`read_j`. Meters are
    safe to read from several threads. They own hardware handles, so call :meth:`close` (or use
    the meter as a context manager) when done; nothing relies on ``__del__``.
    """

    #: Which source produced the numbers ("nvml", "rapl" or "estimate"); every exported number carries it.
    source: str

    @property
    @abc.abstractmethod
    def devices(self) -> list[str]:
        """Stable device labels, e.g. ``["gpu0"]``, ``["package-0", "dram-0"]`` or ``["cpu"]``."""

    @abc.abstractmethod
    def read_j(self) -> dict[str, float]:
        """Return cumulative joules per device (keys = :attr:`devices`) since creation.

        Each value is >= 0 and never decreases from one call to the next.
        Raises :class:`EnergyError` when the hardware cannot be read.
        """

    def close(self) -> None:  # noqa: B027 -- deliberately a no-op default, not abstract
        """Release hardware handles. Idempotent; the base meter holds none."""

    @property
    def is_estimate(self) -> bool:
        """True when the numbers come from a model rather than a sensor."""
        return self.source == "estimate"

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, devices={self.devices!r})"
