"""What a trace offers a server: arrivals, rates, inter-arrival spread, peak rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loadgen.trace.arrivals import Times, Trace, check_number, check_size


def window_rates(trace: Trace, window_s: float = 1.0, duration_s: float | None = None) -> Times:
    """Arrivals per second in consecutive windows [k·w, (k+1)·w) covering [0, duration_s).

    ``duration_s`` defaults to the last arrival; an arrival at or after it counts in the last
    window, so a last window shorter than ``window_s`` reads low, never high.
    """
    window_s = check_number("window_s", window_s, unit="s")
    span = trace.duration_s if duration_s is None else check_number("duration_s", duration_s, strict=False)
    windows = max(1, math.ceil(span / window_s))
    check_size(windows, "windows")
    index = np.minimum((np.asarray(trace.times) / window_s).astype(np.int64), windows - 1)
    return np.bincount(index, minlength=windows).astype(np.float64) / window_s


@dataclass(frozen=True)
class TraceStats:
    """What a trace offers a server. Rates in req/s, times in s; ``None`` where undefined.

    ``interarrival_cv`` is the standard deviation of the gaps over their mean: 1 for Poisson,
    below 1 for smoother traffic (periodic: 0), above 1 for bursts. ``peak_rate_rps`` is the most
    arrivals in one window of ``window_s`` (consecutive windows from 0), per second.
    """

    count: int
    duration_s: float
    mean_rate_rps: float | None
    interarrival_mean_s: float | None
    interarrival_cv: float | None
    interarrival_min_s: float | None
    interarrival_max_s: float | None
    peak_rate_rps: float
    window_s: float
    with_image_id: int

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for printing."""

        def show(value: float | None, unit: str = "", digits: int = 4) -> str:
            return "–" if value is None else f"{value:.{digits}g}{unit}"

        return [
            ("arrivals", str(self.count)),
            ("duration", show(self.duration_s, " s", 6)),
            ("mean rate", show(self.mean_rate_rps, " req/s")),
            ("inter-arrival mean", show(self.interarrival_mean_s, " s")),
            ("inter-arrival CV", show(self.interarrival_cv)),
            ("inter-arrival min", show(self.interarrival_min_s, " s")),
            ("inter-arrival max", show(self.interarrival_max_s, " s")),
            (f"peak rate ({self.window_s:g} s windows)", show(self.peak_rate_rps, " req/s")),
            ("with image_id", str(self.with_image_id)),
        ]


def trace_stats(trace: Trace, *, duration_s: float | None = None, window_s: float = 1.0) -> TraceStats:
    """Summarise ``trace``. ``duration_s``: the run's length when known (a generator's), since the
    last arrival comes before the end; the default is the last arrival's time."""
    span = trace.duration_s if duration_s is None else check_number("duration_s", duration_s, unit="s")
    times = np.asarray(trace.times, dtype=np.float64)
    gaps = np.diff(times)
    gap_mean = float(gaps.mean()) if gaps.size else None
    return TraceStats(
        count=len(trace),
        duration_s=span,
        mean_rate_rps=len(trace) / span if span > 0 else None,
        interarrival_mean_s=gap_mean,
        interarrival_cv=float(gaps.std() / gap_mean) if gap_mean else None,
        interarrival_min_s=float(gaps.min()) if gaps.size else None,
        interarrival_max_s=float(gaps.max()) if gaps.size else None,
        peak_rate_rps=float(window_rates(trace, window_s, span).max()) if len(trace) else 0.0,
        window_s=window_s,
        with_image_id=sum(i is not None for i in trace.image_ids) if trace.image_ids else 0,
    )
