"""Prometheus metrics: the names and labels are a contract (DESIGN.md); dashboards rely on them.

Each app gets its own :class:`~prometheus_client.CollectorRegistry`, so several apps (tests) can
live in one process. Device energy and power are read from the sampler at scrape time by a custom
collector rather than copied into gauges on a timer: a scrape always sees the latest reading.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from energy import EnergySampler

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ENERGY_BUCKETS_J = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """1, 2, 4, … up to the configured maximum (and at least 256, so a runtime increase still
    lands in real buckets), with the maximum itself when it is not a power of two."""
    top = max(max_batch_size, 256)
    buckets = {float(2**i) for i in range(top.bit_length()) if 2**i <= top}
    buckets.add(float(max_batch_size))
    return tuple(sorted(buckets))


class _EnergyCollector(Collector):
    def __init__(self, sampler: EnergySampler) -> None:
        self._sampler = sampler

    def collect(self) -> Iterator[Metric]:
        source = self._sampler.source
        energy = CounterMetricFamily(
            "greenserve_device_energy_joules",
            "Energy of the measured devices since start, idle included (Units: J).",
            labels=["source", "device"],
        )
        for device, joules in self._sampler.total_j().items():
            energy.add_metric([source, device], joules)
        power = GaugeMetricFamily(
            "greenserve_power_watts",
            "Mean power of each measured device over the last second (Units: W).",
            labels=["source", "device"],
        )
        for device, watts in self._sampler.power_w().items():
            power.add_metric([source, device], watts)
        yield energy
        yield power


class Metrics:
    """All of the server's metrics, and the batcher's observer."""

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "greenserve_requests", "Classification requests by HTTP status.", ["status"], registry=r
        )
        self.request_duration = Histogram(
            "greenserve_request_duration_seconds",
            "Time from a classification request's arrival to its response (Units: s).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_wait = Histogram(
            "greenserve_queue_wait_seconds",
            "Time a request waited in the batch queue (Units: s).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "greenserve_batch_size",
            "Requests per computed batch.",
            buckets=batch_size_buckets(max_batch_size),
            registry=r,
        )
        self.batch_duration = Histogram(
            "greenserve_batch_duration_seconds",
            "Compute time of a batch (Units: s).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge("greenserve_queue_depth", "Requests waiting in the queue.", registry=r)
        self.rejected = Counter(
            "greenserve_rejected", "Requests refused without compute, by reason.", ["reason"], registry=r
        )
        for reason in ("queue_full", "deadline", "draining"):
            self.rejected.labels(reason=reason)
        self.batch_energy = Counter(
            "greenserve_batch_energy_joules",
            "Energy of computed batches' intervals (Units: J).",
            ["source"],
            registry=r,
        )
        self.request_energy = Histogram(
            "greenserve_request_energy_joules",
            "Energy per request: its batch's energy divided by the batch size (Units: J).",
            ["source"],
            buckets=ENERGY_BUCKETS_J,
            registry=r,
        )
        self.batching_config = Gauge(
            "greenserve_batching_config", "Batching settings in force.", ["param"], registry=r
        )
        self.model_info = Gauge(
            "greenserve_model_info",
            "The model being served (value 1).",
            ["model", "device", "weights"],
            registry=r,
        )

    def attach_energy(self, sampler: EnergySampler) -> None:
        self.registry.register(_EnergyCollector(sampler))
        self.batch_energy.labels(source=sampler.source)

    def set_batching_config(self, max_batch_size: int, max_wait_ms: float, max_queue: int) -> None:
        self.batching_config.labels(param="max_batch_size").set(max_batch_size)
        self.batching_config.labels(param="max_wait_ms").set(max_wait_ms)
        self.batching_config.labels(param="max_queue").set(max_queue)

    def observe_batch_energy(self, source: str, batch_energy_j: float, batch_size: int) -> None:
        self.batch_energy.labels(source=source).inc(batch_energy_j)
        share = batch_energy_j / batch_size
        histogram = self.request_energy.labels(source=source)
        for _ in range(batch_size):
            histogram.observe(share)

    # --- BatcherObserver ---------------------------------------------------------------------

    def on_batch_start(self, batch_size: int, queue_waits_s: Sequence[float]) -> None:
        self.batch_size.observe(batch_size)
        for wait in queue_waits_s:
            self.queue_wait.observe(wait)

    def on_batch_end(self, batch_size: int, duration_s: float, ok: bool) -> None:
        self.batch_duration.observe(duration_s)

    def on_reject(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()

    def on_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)
