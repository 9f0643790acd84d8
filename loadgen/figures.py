"""The figures of one run of a trace against one batching configuration.

The sweep measures them (a real server, Locust, ``/metrics``) and the simulator predicts them, in
the same shape, so that the two can be compared field by field (``make bench-sim``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RunFigures:
    """What one configuration did with one trace.

    Latency is measured from each request's *scheduled* start (its trace time), so a late load
    generator cannot hide queueing (no coordinated omission). ``j_per_request`` is the batch
    energy divided by the requests answered 200, as greenserve's metrics define it, with its
    ``energy_source`` (``nvml``, ``rapl``, ``estimate``; the simulator reports the profile's).
    """

    requests: int  # arrivals in the trace (sent)
    completed: int  # answered 200
    throughput_rps: float  # completed ÷ (last response - first scheduled start)
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    mean_batch_size: float | None
    j_per_request: float | None
    energy_source: str | None
    rejected_queue_full: int  # 429
    rejected_deadline: int  # 504
    errors: int  # any other non-200 answer or transport failure

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def percentiles_ms(latencies_s: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """p50, p90, p99 of latencies in seconds, in milliseconds (``None`` without data).

    numpy's default (linear interpolation between order statistics) for both the sweep and the
    simulator, so that their p99s are computed the same way.
    """
    if not latencies_s:
        return None, None, None
    p50, p90, p99 = np.percentile(np.asarray(latencies_s, dtype=np.float64) * 1000.0, [50, 90, 99])
    return float(p50), float(p90), float(p99)
