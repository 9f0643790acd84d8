"""What the serving benchmark measures: one record per point, as written to the JSON file.

An offline point is measured in two halves around its served point (:class:`OfflinePoint` is one
half; :func:`studies.serving.summary.offline_figures` combines them); a served point is one server
(greenserve or the bare app) driven at saturation (:class:`ServedPoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class OfflinePoint:
    """One half of an offline point (:func:`offline_figures` combines the halves)."""

    model: str
    batch_size: int
    half: int
    batches: int
    images: int
    wall_s: float
    images_per_s: float
    energy_j: float
    energy_j_per_image: float
    energy_source: str
    #: CPU seconds of this process per wall second during the timed loop (≈ busy cores).
    cpu_cores: float
    ms_per_batch: float
    #: Busy cores of everything else on the machine during the timed loop (other tenants).
    other_cpu_cores: float | None
    #: ``model``: ``predict`` on preprocessed tensors; ``pipeline``: decode + preprocess (the
    #: server's decode pool) overlapped with ``predict``, from the JPEG bytes.
    stage: str = "model"


@dataclass(frozen=True)
class ServedPoint:
    server: Literal["greenserve", "bare"]
    model: str
    max_batch_size: int
    concurrency: int
    half: int
    #: The measured period (client side), after the warm-up.
    window_s: float
    requests_ok: int
    #: Non-200 answers and client-side exceptions over the whole step (warm-up included).
    errors: dict[str, int]
    requests_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_mean_ms: float
    #: CPU of this (client) process, of the server process, and of everything else on the machine.
    client_cpu_ms_per_request: float
    server_cpu_ms_per_request: float | None
    other_cpu_cores: float | None
    energy_source: str | None = None
    #: Mean of the responses' ``energy_j``: each request's whole cost (its batch's model share, its
    #: decode, its share of the serving work), idle excluded.
    energy_j_per_request: float | None = None
    #: Cross-check: Δ greenserve_batch_energy_joules_total ÷ Δ greenserve_requests_total{status="200"}.
    energy_j_per_request_metrics: float | None = None
    #: All energy of the server's devices (idle, decode and HTTP included) ÷ requests answered.
    device_energy_j_per_request: float | None = None
    #: Δ greenserve_batch_size_sum ÷ Δ greenserve_batch_size_count.
    mean_batch_size: float | None = None
    #: Fraction of the window a batch was in flight (Δ batch duration sum ÷ window): from the cut
    #: to the batcher seeing the result, event-loop hops included.
    model_busy_fraction: float | None = None
    mean_batch_ms: float | None = None
    #: Fraction of the window the model thread was in ``predict`` (Σ compute_ms ÷ batch_size over
    #: the responses ÷ window): lower than ``model_busy_fraction`` by the hand-over gaps.
    compute_busy_fraction: float | None = None
    #: Mean compute time of a batch, from the responses' ``compute_ms``.
    mean_compute_ms: float | None = None
    server_latency_mean_ms: float | None = None
    queue_wait_mean_ms: float | None = None
    #: How the requests were sent (studies.serving.settings.Protocol).
    protocol: str = "raw"
    #: Where a request's energy goes: Δ greenserve_stage_energy_joules_total{stage, source} ÷ Δ
    #: requests answered, by source then stage (model, decode, serving); idle excluded. Under the
    #: ``estimate`` source each is the stage's CPU time per request × the watts per core.
    stage_j_per_request: dict[str, dict[str, float]] | None = None
