"""A trace's arrivals (:class:`Trace`) and the checks its times and a generator's parameters pass."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from loadgen.errors import TraceError

Times = npt.NDArray[np.float64]

#: Refuse parameters that would produce more arrivals (or on/off periods) than this: a typo such as
#: ``--rate 1e9`` should be an error message, not a machine out of memory.
MAX_ARRIVALS = 10_000_000


@dataclass(frozen=True)
class Trace:
    """Arrival times (seconds from start, non-decreasing) and optional image ids, one per arrival."""

    times: tuple[float, ...]
    image_ids: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.image_ids is not None and len(self.image_ids) != len(self.times):
            raise TraceError(f"{len(self.image_ids)} image ids for {len(self.times)} arrivals")
        _check_times(self.times, where="trace")

    def __len__(self) -> int:
        return len(self.times)

    @property
    def duration_s(self) -> float:
        """Time of the last arrival (0 for an empty trace)."""
        return self.times[-1] if self.times else 0.0

    @classmethod
    def from_times(cls, times: Iterable[float], image_ids: Sequence[str | None] | None = None) -> Trace:
        return cls(tuple(float(t) for t in times), None if image_ids is None else tuple(image_ids))


def check_time(value: float, previous: float | None, where: str) -> None:
    if not math.isfinite(value):
        raise TraceError(f"{where}: time {value!r} is not a finite number")
    if value < 0:
        raise TraceError(f"{where}: time {value:g} is negative (times are seconds from the start)")
    if previous is not None and value < previous:
        raise TraceError(
            f"{where}: time {value:g} is before the previous arrival ({previous:g}); sort the trace"
        )


def _check_times(times: Sequence[float], where: str) -> None:
    previous: float | None = None
    for index, value in enumerate(times):
        check_time(value, previous, f"{where}, arrival {index + 1}")
        previous = value


def check_number(
    name: str, value: object, *, minimum: float = 0.0, strict: bool = True, unit: str = ""
) -> float:
    """``value`` as a float, checked to be finite and > ``minimum`` (≥ when not ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TraceError(f"{name} must be a number, got {value!r}")
    number = float(value)
    bound = f"> {minimum:g}" if strict else f"≥ {minimum:g}"
    unit = f" ({unit})" if unit else ""
    if not math.isfinite(number) or number < minimum or (strict and number == minimum):
        raise TraceError(f"{name}{unit} must be a finite number {bound}, got {value!r}")
    return number


def check_size(expected: float, what: str = "arrivals") -> None:
    if expected > MAX_ARRIVALS:
        raise TraceError(
            f"these parameters give about {expected:.3g} {what}, more than the limit of {MAX_ARRIVALS:,}; "
            "lower the rate or the duration"
        )
