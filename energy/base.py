"""The energy-meter interface and the package's errors.

Every meter reports *cumulative* joules per device since it was created. Cumulative counters are
what the hardware gives us (NVML, RAPL) and they compose well: the energy of any interval is the
difference of two readings, and the sampler (:mod:`energy.sampler`) interpolates between readings
for intervals shorter than the counter's update period.
"""

from __future__ import annotations

import abc
from types import TracebackType

#: Names of the concrete sources that ``auto`` chooses from, best first.
SOURCES: tuple[str, ...] = ("nvml", "rapl", "estimate")
#: Sources that are models rather than sensors: their joules are labelled as such everywhere.
#: ``synthetic`` (energy.synthetic) is for testing the accounting and is never chosen by ``auto``.
MODEL_SOURCES: frozenset[str] = frozenset({"estimate", "synthetic"})


class EnergyError(Exception):
    """Root of every error raised by the energy package: a meter that cannot be read or started
    (:class:`EnergySourceUnavailable`), a bad setting (:class:`EnergySettingError`), a profile that
    cannot be measured (:class:`energy.profile.BatchProfileError`)."""


class EnergySettingError(EnergyError, ValueError):
    """A setting out of range or malformed (a period, a power, a device string, a source name); a
    ``ValueError`` too, as these were before the package had one root."""


class EnergySourceUnavailable(EnergyError):  # noqa: N818 -- public name fixed by the service's contract
    """A source cannot start on this machine; the message says why and what to do about it."""


class EnergyMeter(abc.ABC):
    """Cumulative energy per device, in joules, since the meter was created.

    Subclasses set :attr:`source` and implement :attr:`devices` and :meth:`read_j`. Meters are
    safe to read from several threads. They own hardware handles, so call :meth:`close` (or use
    the meter as a context manager) when done; nothing relies on ``__del__``.
    """

    #: Which source produced the numbers ("nvml", "rapl", "estimate" or "synthetic"); every exported
    #: number carries it.
    source: str
    #: Whether the readings contain the device's idle (static) draw: true for the hardware counters
    #: and the synthetic model, false for the estimate (CPU time is zero when idle).
    idle_included: bool = True
    #: Whose CPU time the readings are proportional to, for sharing them by CPU time
    #: (energy.accounting): "process" (estimate, synthetic: this process alone), "machine" (rapl:
    #: every process on the package), or None for an accelerator, whose energy is shared by time.
    cpu_scope: str | None = None

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
        """True for the ``estimate`` source (CPU time × watts per core, no sensor)."""
        return self.source == "estimate"

    @property
    def is_model(self) -> bool:
        """True when the numbers come from a model (estimate, synthetic) rather than a sensor."""
        return self.source in MODEL_SOURCES

    @property
    def idle_power_w(self) -> dict[str, float] | None:
        """Each device's idle (static) power in W where the meter knows it, else None (measure it)."""
        return None if self.idle_included else dict.fromkeys(self.devices, 0.0)

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
