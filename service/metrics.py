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

from energy import EnergyAccountant
from service.request_energy import STAGES, RequestEnergy

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
    """Device energy and power from the samplers' curves, and the accountant's totals, at scrape time."""

    def __init__(self, accountant: EnergyAccountant) -> None:
        self._accountant = accountant

    def collect(self) -> Iterator[Metric]:
        energy = CounterMetricFamily(
            "greenserve_device_energy_joules",
            "Energy of each measured device since start, idle included; `device` names the physical "
            "device, so replicas on one device add it once (Units: J).",
            labels=["source", "device"],
        )
        power = GaugeMetricFamily(
            "greenserve_power_watts",
            "Mean power of each measured device over the last second (Units: W).",
            labels=["source", "device"],
        )
        errors = CounterMetricFamily(
            "greenserve_energy_read_errors",
            "Failed meter reads and stall episodes; the energy of work done meanwhile is unknown.",
            labels=["source"],
        )
        for sampler in self._accountant.samplers:
            for device, joules in sampler.total_j().items():
                energy.add_metric([sampler.source, device], joules)
            for device, watts in sampler.power_w().items():
                power.add_metric([sampler.source, device], watts)
            sampler.status()  # notices a stall even when no request asks
            errors.add_metric([sampler.source], sampler.read_errors)
        stage = CounterMetricFamily(
            "greenserve_stage_energy_joules",
            "Energy attributed to requests' work by stage: model (its batch's share), decode, serving "
            "(HTTP and event loop); idle draw excluded except a GPU's during its batches (Units: J).",
            labels=["stage", "source"],
        )
        attributed = self._accountant.attributed_j()
        for name in STAGES:
            for source in self._accountant.sources:
                stage.add_metric([name, source], attributed.get((name, source), 0.0))
        idle = CounterMetricFamily(
            "greenserve_idle_energy_joules",
            "Device energy attributed to no request: idle draw, other processes and threads "
            "(device energy = stage energy + this, per device) (Units: J).",
            labels=["source", "device"],
        )
        for (source, device), joules in self._accountant.idle_j().items():
            idle.add_metric([source, device], joules)
        yield energy
        yield power
        yield stage
        yield idle
        yield errors


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
        self.drain_responses = Counter(
            "greenserve_drain_responses",
            "Responses finished after the drain began (requests in flight at the signal and those "
            "arriving on open connections), by HTTP status and whether the response was written "
            "(written=false: the client's connection was gone).",
            ["status", "written"],
            registry=r,
        )
        self.batch_energy = Counter(
            "greenserve_batch_energy_joules",
            "Energy attributed to requests answered 200, all parts (model share, decode, serving), "
            "by meter source: ÷ requests answered 200 = attributed J/request (Units: J).",
            ["source"],
            registry=r,
        )
        self.request_energy = Histogram(
            "greenserve_request_energy_joules",
            "Energy of each request answered 200 (energy_j: model share + decode + serving), by its "
            "energy_source (Units: J).",
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

    def attach_energy(self, accountant: EnergyAccountant) -> None:
        self.registry.register(_EnergyCollector(accountant))
        for source in accountant.sources:
            self.batch_energy.labels(source=source)

    def set_batching_config(self, max_batch_size: int, max_wait_ms: float, max_queue: int) -> None:
        self.batching_config.labels(param="max_batch_size").set(max_batch_size)
        self.batching_config.labels(param="max_wait_ms").set(max_wait_ms)
        self.batching_config.labels(param="max_queue").set(max_queue)

    def observe_request_energy(self, energy: RequestEnergy, source: str) -> None:
        """A request answered 200: its energy, unless unknown (then the read errors say why)."""
        joules = energy.joules
        if joules is None:
            return
        for part_source, part_j in energy.by_source().items():
            self.batch_energy.labels(source=part_source).inc(part_j)
        self.request_energy.labels(source=source).observe(joules)

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
