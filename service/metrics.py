"""Prometheus metrics: the names and labels are a contract (README's metrics table); dashboards
rely on them.

:class:`Metrics` is the one writer: nothing else touches a metric, and each event is recorded by
one call from one place (a finished ``/classify`` response from the access middleware, a response
during the drain from :meth:`service.state.ServerState.observe_response`, batching events and
settings from the batcher as its observer, the model's identity at start-up). Each app gets its own
:class:`~prometheus_client.CollectorRegistry`, so several apps (tests) can live in one process; it
also carries prometheus-client's process and platform collectors. Device energy and power are read
from the sampler at scrape time by a custom collector rather than copied into gauges on a timer: a
scrape always sees the latest reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from energy import EnergyAccountant
from greenserve import __version__
from service.batching import BatchingConfig
from service.policy import BatchPolicy
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


#: The classification protocols, the ``protocol`` label's values.
PROTOCOLS = ("classify", "v2")


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


class _PolicyCollector(Collector):
    """The batching policy's decisions and what it learned, as the policy describes them now."""

    def __init__(self, policy: Callable[[], BatchPolicy]) -> None:
        self._policy = policy

    def collect(self) -> Iterator[Metric]:
        policy = self._policy()
        state = policy.describe()
        info = GaugeMetricFamily(
            "greenserve_batching_policy", "The batching policy in force (value 1).", labels=["policy"]
        )
        info.add_metric([policy.name], 1.0)
        yield info
        target = GaugeMetricFamily(
            "greenserve_batching_target",
            "The policy's current target, by param: batch_size, wait_seconds (Units: items, s).",
            labels=["param"],
        )
        for param, key in (("batch_size", "target_batch_size"), ("wait_seconds", "target_wait_seconds")):
            if key in state and math.isfinite(state[key]):
                target.add_metric([param], state[key])
        yield target
        p99 = GaugeMetricFamily(
            "greenserve_batching_p99_seconds",
            "The adaptive policy's p99 latency (queue wait + compute): projected for its decisions, and "
            "observed over its recent answers (Units: s).",
            labels=["kind"],
        )
        for kind in ("projected", "observed"):
            value = state.get(f"{kind}_p99_seconds")
            if value is not None and math.isfinite(value):
                p99.add_metric([kind], value)
        yield p99
        learned = GaugeMetricFamily(
            "greenserve_batching_energy_per_image_joules",
            "The adaptive policy's learned model energy per image, by batch size (Units: J).",
            labels=["batch_size"],
        )
        table = getattr(policy, "learned", None)
        if callable(table):
            for size, (_, energy_j) in sorted(table().items()):
                if energy_j is not None and math.isfinite(energy_j):
                    learned.add_metric([str(size)], energy_j / size)
        yield learned


class Metrics:
    """All of the server's metrics, their one writer, and the batcher's observer."""

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The process's CPU, memory and file descriptors (process_*), and Python's version
        # (python_info), on this registry: the default registry's are not scraped here.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        build_info = Gauge(
            "greenserve_build_info",
            "The software serving (value 1): greenserve's version, torch's, and the CUDA torch was built "
            "with ('none' for a CPU-only build).",
            ["version", "torch", "cuda"],
            registry=r,
        )
        cuda = torch.version.cuda or "none"
        build_info.labels(version=__version__, torch=torch.__version__, cuda=cuda).set(1)
        # ``protocol``: ``classify`` (POST /classify) or ``v2`` (the Open Inference Protocol's infer).
        self._requests = Counter(
            "greenserve_requests",
            "Classification requests by HTTP status and protocol (classify, v2).",
            ["status", "protocol"],
            registry=r,
        )
        self._request_duration = Histogram(
            "greenserve_request_duration_seconds",
            "Time from a classification request's arrival to its response, by protocol (Units: s).",
            ["protocol"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._images = Counter(
            "greenserve_images",
            "Images answered 200, by protocol: a /classify request is one, a v2 infer request as many "
            "as it carried (batch energy ÷ images = J/image).",
            ["protocol"],
            registry=r,
        )
        for protocol in PROTOCOLS:  # the series exist from the start, as they did unlabelled
            self._request_duration.labels(protocol=protocol)
            self._images.labels(protocol=protocol)
        self._queue_wait = Histogram(
            "greenserve_queue_wait_seconds",
            "Time a request waited in the batch queue (Units: s).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._batch_size = Histogram(
            "greenserve_batch_size",
            "Requests per computed batch.",
            buckets=batch_size_buckets(max_batch_size),
            registry=r,
        )
        self._batch_duration = Histogram(
            "greenserve_batch_duration_seconds",
            "Compute time of a batch (Units: s).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._queue_depth = Gauge("greenserve_queue_depth", "Requests waiting in the queue.", registry=r)
        self._rejected = Counter(
            "greenserve_rejected", "Requests refused without compute, by reason.", ["reason"], registry=r
        )
        for reason in ("queue_full", "deadline", "draining"):
            self._rejected.labels(reason=reason)
        self._drain_responses = Counter(
            "greenserve_drain_responses",
            "Responses finished after the drain began (requests in flight at the signal and those "
            "arriving on open connections), by HTTP status and whether the response was written "
            "(written=false: the client's connection was gone).",
            ["status", "written"],
            registry=r,
        )
        self._batch_energy = Counter(
            "greenserve_batch_energy_joules",
            "Energy attributed to requests answered 200, all parts (model share, decode, serving), "
            "by meter source: ÷ requests answered 200 = attributed J/request (Units: J).",
            ["source"],
            registry=r,
        )
        self._request_energy = Histogram(
            "greenserve_request_energy_joules",
            "Energy of each request answered 200 (energy_j: model share + decode + serving; a v2 infer "
            "request's: all its images'), by its energy_source and protocol (Units: J).",
            ["source", "protocol"],
            buckets=ENERGY_BUCKETS_J,
            registry=r,
        )
        self._batching_config = Gauge(
            "greenserve_batching_config",
            "Batching settings in force, by param: max_batch_size, max_queue, max_wait_seconds (Units: s) "
            "and max_wait_ms, the same wait in ms (the old name, kept for dashboards that use it).",
            ["param"],
            registry=r,
        )
        self._model_info = Gauge(
            "greenserve_model_info",
            "The model being served (value 1).",
            ["model", "device", "weights"],
            registry=r,
        )

    def attach_policy(self, policy: Callable[[], BatchPolicy]) -> None:
        """Export the batching policy's state, read at each scrape (``policy()`` is the current one)."""
        self.registry.register(_PolicyCollector(policy))

    def attach_energy(self, accountant: EnergyAccountant) -> None:
        self.registry.register(_EnergyCollector(accountant))
        for source in accountant.sources:
            self._batch_energy.labels(source=source)

    def set_model_info(self, model: str, device: str, weights: str) -> None:
        """The model being served (at start-up)."""
        self._model_info.labels(model=model, device=device, weights=weights).set(1)

    def observe_classify(
        self,
        status: int,
        duration_s: float,
        energy: RequestEnergy | None,
        energy_source: str,
        *,
        protocol: str = "classify",
        images: int = 1,
    ) -> None:
        """A classification response finished (whatever its status): counted, timed, and for an
        answered request (``energy`` given, of its ``images``) its images and energy, unless the
        energy is unknown (the read errors say why)."""
        self._requests.labels(status=str(status), protocol=protocol).inc()
        self._request_duration.labels(protocol=protocol).observe(duration_s)
        if energy is None:
            return
        self._images.labels(protocol=protocol).inc(images)
        joules = energy.joules
        if joules is None:
            return
        for part_source, part_j in energy.by_source().items():
            self._batch_energy.labels(source=part_source).inc(part_j)
        self._request_energy.labels(source=energy_source, protocol=protocol).observe(joules)

    def observe_drain_response(self, status: int, written: bool) -> None:
        """A response finished once the drain began (``written``: whether its connection took it)."""
        self._drain_responses.labels(status=str(status), written=str(written).lower()).inc()

    # --- BatcherObserver ---------------------------------------------------------------------

    def on_config(self, config: BatchingConfig) -> None:
        self._batching_config.labels(param="max_batch_size").set(config.max_batch_size)
        self._batching_config.labels(param="max_wait_seconds").set(config.max_wait_ms / 1000)
        self._batching_config.labels(param="max_wait_ms").set(config.max_wait_ms)
        self._batching_config.labels(param="max_queue").set(config.max_queue)

    def on_batch_start(self, batch_size: int, queue_waits_s: Sequence[float]) -> None:
        self._batch_size.observe(batch_size)
        for wait in queue_waits_s:
            self._queue_wait.observe(wait)

    def on_batch_end(self, batch_size: int, duration_s: float, ok: bool) -> None:
        self._batch_duration.observe(duration_s)

    def on_reject(self, reason: str) -> None:
        self._rejected.labels(reason=reason).inc()

    def on_queue_depth(self, depth: int) -> None:
        self._queue_depth.set(depth)
