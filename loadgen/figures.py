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
    generator cannot hide queueing (no coordinated omission).

    Two energy figures per request, each with its source and a label that says what it holds:

    * ``j_per_request`` (``energy_source``, ``j_per_request_label``) is the **attributed** figure:
      ``greenserve_batch_energy_joules_total`` ÷ requests answered 200, the energy the server
      charged to those requests (model share, decode, serving), idle draw excluded except a GPU's
      static draw during its batches: "attributed, idle excluded". The simulator reports the
      profile's prediction, with the profile's source.
    * ``amortised_j_per_request`` (``amortised_energy_source``, ``amortised_label``) is the
      operator's bill: every measured device's energy over the run
      (``greenserve_device_energy_joules_total``, each device once), idle included where the
      meter includes it (not for ``estimate``), ÷ requests answered 200: "amortised, idle
      included". None where not measured (the simulator; tables written before it existed).
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
    j_per_request_label: str | None = None
    amortised_j_per_request: float | None = None
    amortised_energy_source: str | None = None
    amortised_label: str | None = None

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def optional_field_names(cls) -> list[str]:
        """Fields added after the first tables and summaries were written: absent from those."""
        return list(OPTIONAL_FIGURES)


#: RunFigures' fields that older sweep tables and load-test summaries do not have.
OPTIONAL_FIGURES = (
    "j_per_request_label",
    "amortised_j_per_request",
    "amortised_energy_source",
    "amortised_label",
)


def attributed_label(source: str | None) -> str:
    """What ``j_per_request`` holds, in words: "attributed, idle excluded", and, when a GPU (nvml)
    is among the sources, that its static draw during the batches is in (a batch holds the GPU)."""
    parts = set((source or "").split("+"))
    if "nvml" in parts:
        return "attributed, idle excluded except the GPU's static draw during batches"
    return "attributed, idle excluded"


def amortised_label(source: str | None) -> str:
    """What ``amortised_j_per_request`` holds: "amortised, idle included" (or not included, for the
    ``estimate`` source, which has no idle draw to include)."""
    from energy.profile import idle_phrase

    return f"amortised, {idle_phrase(source)}"


def percentiles_ms(latencies_s: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """p50, p90, p99 of latencies in seconds, in milliseconds (``None`` without data).

    numpy's default (linear interpolation between order statistics) for both the sweep and the
    simulator, so that their p99s are computed the same way.
    """
    if not latencies_s:
        return None, None, None
    p50, p90, p99 = np.percentile(np.asarray(latencies_s, dtype=np.float64) * 1000.0, [50, 90, 99])
    return float(p50), float(p90), float(p99)
