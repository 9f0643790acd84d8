"""Serving benchmark: what serving costs on top of the bare model, in throughput and in joules.

One run measures, side by side (``python -m bench.serving``, ``make bench``; docs/benchmarks.md):

* **offline** — ``classifier.predict`` on preprocessed tensors in a loop, per model and batch size:
  images/s and J/image, energy from :func:`energy.create_meter` + :class:`energy.EnergySampler`,
  measured in two halves that bracket the served point (before and after it), so that a drift of
  the machine's speed affects both sides of a ratio alike;
* **served** — a real ``greenserve serve`` subprocess per model and max batch size, driven at
  saturation by a concurrent HTTP/1.1 client in this process with pre-encoded 224×224 JPEGs:
  responses/s, J/request (from the responses and from ``/metrics``), mean batch size, latency;
* **no-op overhead** — greenserve with ``--model noop`` against a bare FastAPI app
  (:mod:`bench.bare_app`) doing the same decode, same client, same concurrency.

The study is data plus functions: :func:`plan` turns the settings into a list of steps,
:func:`run` measures each step into a point, :func:`summarize` (pure) turns points into the
ratios and target verdicts, and the JSON file holds all of it, so a report can be redrawn without
re-running. Servers only ever bind 127.0.0.1 and are always stopped (their process group is
killed) when a step ends, fails or is interrupted (:mod:`loadgen.servers`); the load client is
:mod:`bench.client`, CPU accounting :mod:`bench.machine`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.client import LoadRun, drive, make_jpegs, make_snapshot, metric
from bench.machine import delta, machine_busy_cpu_s, machine_info, wait_for_quiet
from studies.kit import server as servers
from studies.kit.server import HOST, ServerError, running_server

if TYPE_CHECKING:
    import torch

    from energy import EnergySampler
    from service.model import Classifier

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("results/bench-serving.json")
DEFAULT_MODELS = ("resnet18", "shufflenet_v2_x0_5")
DEFAULT_BATCH_SIZES = (1, 4, 16)
DEFAULT_DURATION_S = 10.0
DEFAULT_WARMUP_S = 3.0
QUICK_MODELS = ("shufflenet_v2_x0_5",)
QUICK_BATCH_SIZES = (1, 4)
QUICK_DURATION_S = 2.0
QUICK_WARMUP_S = 1.0
#: Offline: at least this many timed batches per half point, however long they take.
MIN_OFFLINE_BATCHES = 3
#: The server's own drain limit: the client has stopped by then, so nothing is left to drain.
SERVER_DRAIN_TIMEOUT_S = 5.0
#: Rough costs per step (model loading, server start and stop, the quiet check), for the estimate.
_OVERHEAD_ESTIMATE_S = {"served": 8.0, "bare": 4.0, "offline": 1.5}


@dataclass(frozen=True)
class Target:
    """What a served model should reach relative to its offline figures (per batch size)."""

    min_throughput_ratio: float
    max_energy_ratio: float


#: Models with targets; the others are reported without a verdict.
SERVED_TARGETS: dict[str, Target] = {"resnet18": Target(min_throughput_ratio=0.90, max_energy_ratio=1.10)}
#: greenserve noop ÷ bare FastAPI throughput should reach at least this.
NOOP_MIN_RATIO = 0.70
#: A point during which other processes kept this many cores busy is flagged as contended.
CONTENDED_CORES = 0.25


# --- settings and plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchSettings:
    """Everything a run depends on; written to the JSON file with the results."""

    models: tuple[str, ...] = DEFAULT_MODELS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    duration_s: float = DEFAULT_DURATION_S
    warmup_s: float = DEFAULT_WARMUP_S
    #: torch intra-op threads, offline and served (default: CPUs - 1, see default_torch_threads).
    torch_threads: int = 1
    max_wait_ms: float = 5.0
    #: greenserve's (and the bare app's) decode threads; None: greenserve's default.
    decode_workers: int | None = None
    #: In-flight requests; None: 2 × max batch size + 2 (always a full batch queued behind the running one).
    concurrency: int | None = None
    noop_batch_size: int = 16
    overhead: bool = True
    #: Before each point, wait up to this long for other processes to leave the CPUs (0: don't).
    quiet_wait_s: float = 10.0
    images: int = 32
    seed: int = 0
    quick: bool = False
    out: str = str(DEFAULT_OUT)

    def concurrency_for(self, max_batch_size: int) -> int:
        return self.concurrency or 2 * max_batch_size + 2


StepKind = Literal["offline", "served", "bare"]


def default_torch_threads() -> int:
    """CPUs - 1 (at least 1): one core stays free for the server's event loop and decode threads
    and for the load client, which the offline loop does not need. With every core given to torch,
    the served side pays for that contention twice (OpenMP threads wait for each other while one
    of them is descheduled), and the ratio measures the client as much as the server."""
    return max(1, (os.cpu_count() or 1) - 1)


@dataclass(frozen=True)
class Step:
    """One measured point: offline predict, a greenserve server, or the bare app (``half``: which
    half of a point measured in two halves around another, 0 for a whole point)."""

    kind: StepKind
    model: str
    batch_size: int
    half: int = 0

    def label(self) -> str:
        what = {"offline": "offline", "served": "served", "bare": "bare FastAPI"}[self.kind]
        size = "batch" if self.kind == "offline" else "max batch"
        part = f", half {self.half}/2" if self.half else ""
        name = what if self.kind == "bare" else f"{self.model} {what}"
        return f"{name} ({size} {self.batch_size}{part})"


def plan(settings: BenchSettings) -> list[Step]:
    """The steps of a run, in order. Each served point sits between the two halves of its offline
    point, so a drift of the machine's speed (other tenants, a neighbour on the same physical core,
    thermals) hits both sides of a ratio alike."""
    steps: list[Step] = []
    for model in settings.models:
        for size in settings.batch_sizes:
            steps += [
                Step("offline", model, size, half=1),
                Step("served", model, size),
                Step("offline", model, size, half=2),
            ]
    if settings.overhead:
        # The bare app brackets greenserve's no-op server the same way.
        steps += [
            Step("bare", "bare", settings.noop_batch_size, half=1),
            Step("served", "noop", settings.noop_batch_size),
            Step("bare", "bare", settings.noop_batch_size, half=2),
        ]
    return steps


def estimate_s(steps: Sequence[Step], settings: BenchSettings) -> float:
    """A rough wall-clock estimate of a run (model loading and server start-up guessed)."""
    total = 0.0
    for step in steps:
        share = 0.5 if step.half else 1.0
        warmup_s = settings.warmup_s * share if step.kind == "offline" else settings.warmup_s
        total += _OVERHEAD_ESTIMATE_S[step.kind] + warmup_s + settings.duration_s * share
    return total


# --- results ------------------------------------------------------------------------------------


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


# --- offline ------------------------------------------------------------------------------------


def load_model(name: str, torch_threads: int) -> Classifier:
    from energy.allocator import configure_allocator
    from service.config import Settings
    from service.model import load_classifier

    settings = Settings(model=name, weights="random", torch_threads=torch_threads)
    configure_allocator(settings.allocator)  # the server's heap policy, so both sides compare
    return load_classifier(settings)


def preprocess_all(classifier: Classifier, bodies: Sequence[bytes]) -> list[torch.Tensor]:
    """The model inputs of ``bodies``, decoded exactly as the server decodes them."""
    from service.imaging import DecodeLimits, decode_image

    limits = DecodeLimits()
    return [
        classifier.preprocess(decode_image(body, limits, draft_size=classifier.draft_size)) for body in bodies
    ]


def measure_offline(
    classifier: Classifier,
    inputs: Sequence[torch.Tensor],
    batch_size: int,
    sampler: EnergySampler,
    *,
    duration_s: float,
    warmup_s: float,
    half: int = 0,
) -> OfflinePoint:
    """Pure ``predict`` throughput and energy at one batch size (time-bounded, ≥ MIN_OFFLINE_BATCHES)."""
    batches = [
        [inputs[(start + i) % len(inputs)] for i in range(batch_size)]
        for start in range(0, len(inputs) * batch_size, batch_size)
    ]
    warm_until = time.monotonic() + warmup_s
    done = 0
    while done < 2 or time.monotonic() < warm_until:
        classifier.predict(batches[done % len(batches)])
        done += 1
    machine0 = machine_busy_cpu_s()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    done = 0
    while done < MIN_OFFLINE_BATCHES or time.monotonic() - t0 < duration_s:
        classifier.predict(batches[done % len(batches)])
        done += 1
    t1 = time.monotonic()
    cpu_s = time.process_time() - cpu0
    machine_s = delta(machine0, machine_busy_cpu_s())
    energy_j = sampler.energy_between(t0, t1, settle=True)  # offline: wait for the counter to cover t1
    wall_s = t1 - t0
    images = done * batch_size
    return OfflinePoint(
        model=classifier.name,
        batch_size=batch_size,
        half=half,
        batches=done,
        images=images,
        wall_s=wall_s,
        images_per_s=images / wall_s,
        energy_j=energy_j,
        energy_j_per_image=energy_j / images,
        energy_source=sampler.source,
        cpu_cores=cpu_s / wall_s,
        ms_per_batch=wall_s / done * 1000,
        other_cpu_cores=None if machine_s is None else max(0.0, machine_s - cpu_s) / wall_s,
    )


# --- served -------------------------------------------------------------------------------------


def greenserve_argv(step: Step, settings: BenchSettings, port: int) -> list[str]:
    return servers.greenserve_argv(
        port,
        model=step.model,
        weights="random",
        max_batch_size=step.batch_size,
        max_wait_ms=settings.max_wait_ms,
        torch_threads=settings.torch_threads,
        drain_timeout_s=SERVER_DRAIN_TIMEOUT_S,
        access_log=False,
        log_level="warning",
        decode_workers=settings.decode_workers,
    )


def bare_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn",
        "--factory", "bench.bare_app:create_app",
        "--host", HOST,
        "--port", str(port),
        "--log-level", "warning",
        "--no-access-log",
    ]  # fmt: skip


def server_env(settings: BenchSettings) -> dict[str, str]:
    extra = (
        {} if settings.decode_workers is None else {"BENCH_BARE_DECODE_WORKERS": str(settings.decode_workers)}
    )
    return servers.server_env(**extra)


def served_point(step: Step, settings: BenchSettings, run: LoadRun) -> ServedPoint:
    """The figures of one served step, from its records and the two snapshots."""
    before, after = run.before, run.after
    if before is None or after is None:
        raise RuntimeError(f"{step.label()}: the measured period did not complete")
    window_s = after.at_s - before.at_s
    errors = Counter(r.status for r in run.records if r.status != "200")
    measured = [r for r in run.records if r.status == "200" and before.at_s <= r.ended_s <= after.at_s]
    ok = len(measured)
    if ok == 0:
        raise RuntimeError(
            f"{step.label()}: no successful response in the measured period (errors: {dict(errors)})"
        )
    latencies_ms = np.array([(r.ended_s - r.started_s) * 1000 for r in measured])
    server_cpu_s = delta(before.server_cpu_s, after.server_cpu_s)
    machine_s = delta(before.machine_busy_s, after.machine_busy_s)
    client_cpu_s = after.client_cpu_s - before.client_cpu_s
    other_cores = None
    if machine_s is not None and server_cpu_s is not None:
        other_cores = max(0.0, machine_s - server_cpu_s - client_cpu_s) / window_s
    point: dict[str, Any] = {
        "server": "greenserve" if step.kind == "served" else "bare",
        "model": step.model,
        "max_batch_size": step.batch_size,
        "concurrency": settings.concurrency_for(step.batch_size),
        "half": step.half,
        "window_s": window_s,
        "requests_ok": ok,
        "errors": dict(sorted(errors.items())),
        "requests_per_s": ok / window_s,
        "latency_p50_ms": float(np.percentile(latencies_ms, 50)),
        "latency_p99_ms": float(np.percentile(latencies_ms, 99)),
        "latency_mean_ms": float(latencies_ms.mean()),
        "client_cpu_ms_per_request": client_cpu_s / ok * 1000,
        "server_cpu_ms_per_request": None if server_cpu_s is None else server_cpu_s / ok * 1000,
        "other_cpu_cores": other_cores,
    }
    if step.kind == "served" and before.metrics is not None and after.metrics is not None:
        m0, m1 = before.metrics, after.metrics

        def d(name: str, **labels: str) -> float:
            return metric(m1, name, **labels) - metric(m0, name, **labels)

        energies = [r.energy_j for r in measured if r.energy_j is not None]
        # Each response carries its batch's compute time: weighting by 1/batch_size counts each batch once.
        shares = [(r.compute_ms, r.batch_size) for r in measured if r.compute_ms is not None and r.batch_size]
        compute_ms_total = sum(ms / size for ms, size in shares)
        batches_seen = sum(1 / size for _, size in shares)
        sources = sorted({r.energy_source for r in measured if r.energy_source})
        ok_metrics = d("greenserve_requests_total", status="200")
        batches = d("greenserve_batch_size_count")
        point.update(
            energy_source=",".join(sources) or None,
            energy_j_per_request=sum(energies) / len(energies) if energies else None,
            energy_j_per_request_metrics=(
                d("greenserve_batch_energy_joules_total") / ok_metrics if ok_metrics else None
            ),
            device_energy_j_per_request=(
                d("greenserve_device_energy_joules_total") / ok_metrics if ok_metrics else None
            ),
            mean_batch_size=d("greenserve_batch_size_sum") / batches if batches else None,
            model_busy_fraction=d("greenserve_batch_duration_seconds_sum") / window_s,
            mean_batch_ms=d("greenserve_batch_duration_seconds_sum") / batches * 1000 if batches else None,
            compute_busy_fraction=compute_ms_total / 1000 / window_s if shares else None,
            mean_compute_ms=compute_ms_total / batches_seen if batches_seen else None,
            server_latency_mean_ms=(
                d("greenserve_request_duration_seconds_sum") / ok_metrics * 1000 if ok_metrics else None
            ),
            queue_wait_mean_ms=(
                d("greenserve_queue_wait_seconds_sum") / d("greenserve_queue_wait_seconds_count") * 1000
                if d("greenserve_queue_wait_seconds_count")
                else None
            ),
        )
    return ServedPoint(**point)


def measure_served(
    step: Step, settings: BenchSettings, bodies: Sequence[bytes], workdir: Path
) -> ServedPoint:
    """Start the step's server, drive it at saturation, stop it; the point's figures."""
    if step.kind == "served":
        name = f"greenserve-{step.model}-b{step.batch_size}"

        def make_argv(port: int) -> list[str]:
            return greenserve_argv(step, settings, port)
    else:
        name = "bare-fastapi"
        make_argv = bare_argv
    # A point measured in two halves gets half the measured time in each; each half is a fresh
    # server, so it gets the whole warm-up (connections, first-request costs).
    share = 0.5 if step.half else 1.0
    with running_server(make_argv, name=name, workdir=workdir, env=server_env(settings)) as server:
        snapshot = make_snapshot(server.base_url if step.kind == "served" else None, server.pid)
        run = asyncio.run(
            drive(
                server.base_url,
                bodies,
                concurrency=settings.concurrency_for(step.batch_size),
                warmup_s=settings.warmup_s,
                duration_s=settings.duration_s * share,
                snapshot=snapshot,
            )
        )
        code = server.exited()
        if code is not None:
            raise ServerError(f"{name} died during the run (code {code}):\n{server.log_tail()}")
    return served_point(step, settings, run)


# --- the run ------------------------------------------------------------------------------------


@dataclass
class RunResult:
    offline: list[OfflinePoint] = field(default_factory=list)
    served: list[ServedPoint] = field(default_factory=list)
    offline_energy_source: str = ""
    watts_per_core: float | None = None


def run(steps: Sequence[Step], settings: BenchSettings, console: Console) -> RunResult:
    """Measure every step, printing one line per point."""
    import torch

    from energy import EnergySampler, EstimateMeter, create_meter

    torch.set_num_threads(settings.torch_threads)
    bodies = make_jpegs(settings.images, seed=settings.seed)
    result = RunResult()
    meter = create_meter("auto", device="cpu")
    result.offline_energy_source = meter.source
    if isinstance(meter, EstimateMeter):
        result.watts_per_core = meter.watts_per_core
    sampler = EnergySampler(meter, period_s=0.02)
    sampler.start()
    loaded: tuple[Classifier, list[torch.Tensor]] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="greenserve-bench-") as tmp:
            for index, step in enumerate(steps, 1):
                wait_for_quiet(settings.quiet_wait_s, CONTENDED_CORES, console.print)
                started = time.monotonic()
                prefix = f"[{index}/{len(steps)}] {step.label()}:"
                if step.kind == "offline":
                    if loaded is None or loaded[0].name != step.model:
                        loaded = None  # free the previous model before loading the next
                        classifier = load_model(step.model, settings.torch_threads)
                        loaded = (classifier, preprocess_all(classifier, bodies))
                    # Each half gets half the time: the bracket costs no more than one point.
                    offline = measure_offline(
                        loaded[0],
                        loaded[1],
                        step.batch_size,
                        sampler,
                        duration_s=settings.duration_s / 2,
                        warmup_s=settings.warmup_s / 2,
                        half=step.half,
                    )
                    result.offline.append(offline)
                    console.print(
                        f"{prefix} {offline.images_per_s:.1f} img/s, "
                        f"{offline.energy_j_per_image:.3g} J/image ({offline.energy_source}), "
                        f"{offline.cpu_cores:.2f} cores busy{_contention(offline.other_cpu_cores)} "
                        f"[{time.monotonic() - started:.0f} s]"
                    )
                    continue
                served = measure_served(step, settings, bodies, Path(tmp))
                result.served.append(served)
                energy = (
                    f", {served.energy_j_per_request:.3g} J/request ({served.energy_source}), "
                    f"mean batch {served.mean_batch_size:.1f}"
                    if served.energy_j_per_request is not None and served.mean_batch_size is not None
                    else ""
                )
                errors = f", ERRORS {served.errors}" if served.errors else ""
                console.print(
                    f"{prefix} {served.requests_per_s:.1f} req/s{energy}, "
                    f"p50 {served.latency_p50_ms:.0f} ms, p99 {served.latency_p99_ms:.0f} ms{errors}"
                    f"{_contention(served.other_cpu_cores)} "
                    f"[{time.monotonic() - started:.0f} s]"
                )
    finally:
        sampler.stop()
        meter.close()
    return result


def _contention(other_cores: float | None) -> str:
    if other_cores is None or other_cores < CONTENDED_CORES:
        return ""
    return f" [yellow](contended: other processes used {other_cores:.2f} cores)[/yellow]"


# --- summary (pure) -----------------------------------------------------------------------------


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _verdict(ok: bool | None) -> str | None:
    return None if ok is None else ("PASS" if ok else "FAIL")


@dataclass(frozen=True)
class OfflineFigures:
    """An offline point's halves combined: totals over both, and how far the second moved."""

    images_per_s: float
    energy_j_per_image: float
    energy_source: str
    #: (second half's img/s − first half's) ÷ the combined img/s: how much the machine drifted
    #: while the served point ran. A ratio is no more precise than this.
    drift: float | None
    #: The same for J/image.
    energy_drift: float | None
    other_cpu_cores: float | None


def _drift(first: float, second: float, combined: float, count: int) -> float | None:
    return (second - first) / combined if count > 1 and combined else None


def within_noise(ratio: float | None, threshold: float, noise: float | None) -> bool:
    """Whether ``threshold`` lies within ``ratio`` ± the relative ``noise``: a verdict either way
    would then say more about the machine than about the server."""
    if ratio is None or noise is None:
        return False
    return abs(ratio - threshold) <= abs(noise) * ratio


def offline_figures(halves: Sequence[OfflinePoint]) -> OfflineFigures | None:
    if not halves:
        return None
    images = sum(p.images for p in halves)
    wall_s = sum(p.wall_s for p in halves)
    ordered = sorted(halves, key=lambda p: p.half)
    throughput = images / wall_s
    energy_j = sum(p.energy_j for p in halves)
    others = [p.other_cpu_cores for p in halves if p.other_cpu_cores is not None]
    return OfflineFigures(
        images_per_s=throughput,
        energy_j_per_image=energy_j / images,
        energy_source=",".join(sorted({p.energy_source for p in halves})),
        drift=_drift(ordered[0].images_per_s, ordered[-1].images_per_s, throughput, len(ordered)),
        energy_drift=_drift(
            ordered[0].energy_j_per_image, ordered[-1].energy_j_per_image, energy_j / images, len(ordered)
        ),
        other_cpu_cores=max(others) if others else None,
    )


@dataclass(frozen=True)
class SummaryRow:
    """One model at one batch size: offline and served side by side, with their ratios."""

    batch_size: int
    offline_images_per_s: float | None
    offline_j_per_image: float | None
    offline_drift: float | None
    offline_energy_drift: float | None
    served_requests_per_s: float | None
    served_j_per_request: float | None
    served_j_per_request_metrics: float | None
    served_mean_batch_size: float | None
    served_latency_p50_ms: float | None
    served_latency_p99_ms: float | None
    served_errors: int | None
    offline_other_cpu_cores: float | None
    served_other_cpu_cores: float | None
    offline_energy_source: str | None
    served_energy_source: str | None
    #: served req/s ÷ offline img/s at the same (max) batch size.
    throughput_ratio: float | None
    #: served J/request ÷ offline J/image at the same (max) batch size.
    energy_ratio: float | None
    throughput_target: str | None
    energy_target: str | None
    #: The target lies within the measurement's noise (the offline drift): PASS or FAIL is luck.
    throughput_within_noise: bool
    energy_within_noise: bool


def summary_row(
    size: int, off: OfflineFigures | None, srv: ServedPoint | None, target: Target | None
) -> SummaryRow:
    throughput_ratio = _ratio(srv.requests_per_s if srv else None, off.images_per_s if off else None)
    energy_ratio = _ratio(srv.energy_j_per_request if srv else None, off.energy_j_per_image if off else None)
    return SummaryRow(
        batch_size=size,
        offline_images_per_s=off.images_per_s if off else None,
        offline_j_per_image=off.energy_j_per_image if off else None,
        offline_drift=off.drift if off else None,
        offline_energy_drift=off.energy_drift if off else None,
        served_requests_per_s=srv.requests_per_s if srv else None,
        served_j_per_request=srv.energy_j_per_request if srv else None,
        served_j_per_request_metrics=srv.energy_j_per_request_metrics if srv else None,
        served_mean_batch_size=srv.mean_batch_size if srv else None,
        served_latency_p50_ms=srv.latency_p50_ms if srv else None,
        served_latency_p99_ms=srv.latency_p99_ms if srv else None,
        served_errors=sum(srv.errors.values()) if srv else None,
        offline_other_cpu_cores=off.other_cpu_cores if off else None,
        served_other_cpu_cores=srv.other_cpu_cores if srv else None,
        offline_energy_source=off.energy_source if off else None,
        served_energy_source=srv.energy_source if srv else None,
        throughput_ratio=throughput_ratio,
        energy_ratio=energy_ratio,
        throughput_target=_verdict(
            None
            if target is None or throughput_ratio is None
            else throughput_ratio >= target.min_throughput_ratio
        ),
        energy_target=_verdict(
            None if target is None or energy_ratio is None else energy_ratio <= target.max_energy_ratio
        ),
        throughput_within_noise=target is not None
        and within_noise(throughput_ratio, target.min_throughput_ratio, off.drift if off else None),
        energy_within_noise=target is not None
        and within_noise(energy_ratio, target.max_energy_ratio, off.energy_drift if off else None),
    )


def bare_figures(halves: Sequence[ServedPoint]) -> tuple[float, float | None] | None:
    """The bare app's halves combined: (requests/s over both, drift between them)."""
    if not halves:
        return None
    ordered = sorted(halves, key=lambda p: p.half)
    throughput = sum(p.requests_ok for p in halves) / sum(p.window_s for p in halves)
    return throughput, _drift(ordered[0].requests_per_s, ordered[-1].requests_per_s, throughput, len(ordered))


def summarize(
    settings: BenchSettings, offline: Sequence[OfflinePoint], served: Sequence[ServedPoint]
) -> dict[str, Any]:
    """Points in, ratios and target verdicts out (no I/O)."""
    models: dict[str, Any] = {}
    for model in settings.models:
        target = SERVED_TARGETS.get(model)
        rows = [
            summary_row(
                size,
                offline_figures([p for p in offline if p.model == model and p.batch_size == size]),
                next(
                    (
                        p
                        for p in served
                        if p.server == "greenserve" and p.model == model and p.max_batch_size == size
                    ),
                    None,
                ),
                target,
            )
            for size in settings.batch_sizes
        ]
        # The gain of batching: the largest batch size against batch size 1 (or the smallest given).
        smallest = min(rows, key=lambda row: row.batch_size)
        largest = max(rows, key=lambda row: row.batch_size)
        models[model] = {
            "target": asdict(target) if target else None,
            "rows": [asdict(row) for row in rows],
            "batching_gain": {
                "from_batch_size": smallest.batch_size,
                "to_batch_size": largest.batch_size,
                "offline": _ratio(largest.offline_images_per_s, smallest.offline_images_per_s),
                "served": _ratio(largest.served_requests_per_s, smallest.served_requests_per_s),
            },
        }
    noop = next((p for p in served if p.server == "greenserve" and p.model == "noop"), None)
    bare = bare_figures([p for p in served if p.server == "bare"])
    overhead = None
    if noop is not None and bare is not None:
        bare_rps, bare_drift = bare
        ratio = noop.requests_per_s / bare_rps
        overhead = {
            "max_batch_size": noop.max_batch_size,
            "concurrency": noop.concurrency,
            "greenserve_noop_requests_per_s": noop.requests_per_s,
            "bare_fastapi_requests_per_s": bare_rps,
            "bare_fastapi_drift": bare_drift,
            "ratio": ratio,
            "min_ratio": NOOP_MIN_RATIO,
            "target": _verdict(ratio >= NOOP_MIN_RATIO),
            "within_noise": within_noise(ratio, NOOP_MIN_RATIO, bare_drift),
        }
    return {
        "models": models,
        "overhead": overhead,
        "errors_total": sum(sum(p.errors.values()) for p in served),
    }


# --- report -------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "—" if value is None else format(value, spec)


def _pair(left: float | None, right: float | None, spec: str = ".3g") -> str:
    return f"{_fmt(left, spec)} | {_fmt(right, spec)}"


def _styled(verdict: str | None, text: str, noisy: bool = False) -> str:
    if verdict is None:
        return text
    colour = "green" if verdict == "PASS" else "red"
    # "~": the target is within the measurement's noise, so this verdict is a coin toss.
    return f"{text} [{colour}]{verdict}{'~' if noisy else ''}[/{colour}]"


def render(report: dict[str, Any], console: Console) -> None:
    """Print the figures of a report (as written to JSON): one table per model, then the overhead."""
    summary = report["summary"]
    machine = report["machine"]
    console.print(
        f"\nmachine: {machine['cpu_count']} CPUs ({machine['cpu_model']}), torch {machine['torch']}, "
        f"{report['settings']['torch_threads']} torch threads; energy source: {report['energy_source']}"
        + (
            f" (process CPU time × {report['watts_per_core']:g} W per core: an ESTIMATE)"
            if report["energy_source"] == "estimate" and report.get("watts_per_core")
            else ""
        )
    )
    settings = report["settings"]
    console.print(
        f"settings: max_wait_ms {settings['max_wait_ms']:g}, decode_workers "
        f"{settings['decode_workers'] or 'default'}, in flight "
        f"{settings['concurrency'] or '2 × max batch + 2'}, {settings['warmup_s']:g} s warm-up + "
        f"{settings['duration_s']:g} s measured per point (offline: two halves around the served point)"
    )
    for model, entry in summary["models"].items():
        target = entry["target"]
        title = f"{model}: offline predict vs served over HTTP"
        if target:
            title += (
                f"  (targets: served/offline ≥ {target['min_throughput_ratio']:.2f}, "
                f"J ratio ≤ {target['max_energy_ratio']:.2f})"
            )
        else:
            title += "  (no target: report only)"
        table = Table(title=title, title_justify="left")
        for header in (
            "batch",
            "offline img/s",
            "offline J/img",
            "offline drift",
            "served req/s",
            "served J/req (resp | metrics)",
            "mean batch",
            "p50 | p99 ms",
            "errors",
            "other cores (off | srv)",
            "served/offline",
            "J ratio",
        ):
            table.add_column(header, justify="right")
        for row in entry["rows"]:
            table.add_row(
                str(row["batch_size"]),
                _fmt(row["offline_images_per_s"], ".1f"),
                _fmt(row["offline_j_per_image"]),
                _fmt(row["offline_drift"], "+.0%"),
                _fmt(row["served_requests_per_s"], ".1f"),
                _pair(row["served_j_per_request"], row["served_j_per_request_metrics"]),
                _fmt(row["served_mean_batch_size"], ".1f"),
                _pair(row["served_latency_p50_ms"], row["served_latency_p99_ms"], ".0f"),
                _fmt(row["served_errors"], "d"),
                _pair(row["offline_other_cpu_cores"], row["served_other_cpu_cores"], ".2f"),
                _styled(
                    row["throughput_target"],
                    _fmt(row["throughput_ratio"], ".2f"),
                    row["throughput_within_noise"],
                ),
                _styled(row["energy_target"], _fmt(row["energy_ratio"], ".2f"), row["energy_within_noise"]),
            )
        console.print(table)
        gain = entry["batching_gain"]
        console.print(
            f"  batching gain (batch {gain['to_batch_size']} ÷ batch {gain['from_batch_size']}): "
            f"offline {_fmt(gain['offline'], '.2f')}×, served {_fmt(gain['served'], '.2f')}×"
        )
    overhead = summary["overhead"]
    if overhead:
        console.print(
            f"\nno-op overhead (max batch {overhead['max_batch_size']}, "
            f"{overhead['concurrency']} in flight): "
            f"greenserve noop {overhead['greenserve_noop_requests_per_s']:.0f} req/s ÷ bare FastAPI "
            f"{overhead['bare_fastapi_requests_per_s']:.0f} req/s "
            f"(drift {_fmt(overhead['bare_fastapi_drift'], '+.0%')}) = "
            + _styled(overhead["target"], f"{overhead['ratio']:.2f}", overhead["within_noise"])
            + f" (target ≥ {overhead['min_ratio']:.2f})"
        )
    diagnostics = Table(title="\nwhere the time goes (served points)", title_justify="left")
    diagnostics.add_column("model", no_wrap=True)
    for header in (
        "max batch",
        "in flight",
        "req/s",
        "batch in flight",
        "computing",
        "batch ms",
        "compute ms",
        "queue ms",
        "server ms",
        "server CPU ms/req",
        "client CPU ms/req",
        "other cores",
        "device J/req",
    ):
        diagnostics.add_column(header, justify="right")
    for point in report["served"]:
        diagnostics.add_row(
            point["model"] if point["server"] == "greenserve" else f"bare FastAPI ({point['half'] or 1}/2)",
            str(point["max_batch_size"]),
            str(point["concurrency"]),
            _fmt(point["requests_per_s"], ".1f"),
            _fmt(point["model_busy_fraction"], ".0%"),
            _fmt(point["compute_busy_fraction"], ".0%"),
            _fmt(point["mean_batch_ms"], ".1f"),
            _fmt(point["mean_compute_ms"], ".1f"),
            _fmt(point["queue_wait_mean_ms"], ".1f"),
            _fmt(point["server_latency_mean_ms"], ".1f"),
            _fmt(point["server_cpu_ms_per_request"], ".2f"),
            _fmt(point["client_cpu_ms_per_request"], ".2f"),
            _fmt(point["other_cpu_cores"], ".2f"),
            _fmt(point["device_energy_j_per_request"]),
        )
    console.print(diagnostics)
    noisy = any(
        row["throughput_within_noise"] or row["energy_within_noise"]
        for entry in summary["models"].values()
        for row in entry["rows"]
    ) or bool(overhead and overhead["within_noise"])
    if noisy:
        console.print(
            "PASS~ / FAIL~: the target lies within the drift of the offline (or bare) figures measured "
            "before and after the point: that verdict is within this machine's noise."
        )
    if summary["errors_total"]:
        console.print(
            f"[red]{summary['errors_total']} requests failed: see 'errors' in the served points[/red]"
        )


# --- command line -------------------------------------------------------------------------------


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {exc}") from exc
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values

    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description=(
            "Serving benchmark: offline predict vs greenserve over HTTP (throughput, J/image), and "
            "greenserve's no-op overhead vs a bare FastAPI app. Exits 0 whether targets pass or "
            "fail; 1 when requests failed."
        ),
    )
    parser.add_argument(
        "--models", type=_csv(str), help=f"comma-separated (default: {','.join(DEFAULT_MODELS)})"
    )
    parser.add_argument(
        "--batch-sizes",
        type=_csv(_positive_int),
        help="comma-separated, the offline batch and served max batch sizes "
        f"(default: {','.join(map(str, DEFAULT_BATCH_SIZES))})",
    )
    parser.add_argument(
        "--duration-s", type=float, help=f"measured period per point (default: {DEFAULT_DURATION_S:g})"
    )
    parser.add_argument("--warmup-s", type=float, help=f"warm-up per point (default: {DEFAULT_WARMUP_S:g})")
    parser.add_argument(
        "--torch-threads",
        type=_positive_int,
        help="torch threads, offline and served (default: CPUs - 1, at least 1)",
    )
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="server max_wait_ms (default: 5)")
    parser.add_argument(
        "--decode-workers", type=_positive_int, help="server decode threads (default: greenserve's)"
    )
    parser.add_argument(
        "--concurrency", type=_positive_int, help="in-flight requests (default: 2 × max batch size + 2)"
    )
    parser.add_argument(
        "--noop-batch-size", type=_positive_int, default=16, help="max batch of the no-op server"
    )
    parser.add_argument(
        "--overhead", action=argparse.BooleanOptionalAction, default=True, help="measure the no-op overhead"
    )
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=10.0,
        help="before each point, wait up to this long for other processes to go quiet (0: off; default 10)",
    )
    parser.add_argument("--images", type=_positive_int, default=32, help="distinct JPEGs (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated JPEGs")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON results (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"smoke test: {','.join(QUICK_MODELS)}, batch sizes {','.join(map(str, QUICK_BATCH_SIZES))}, "
            f"{QUICK_DURATION_S:g} s per point (explicit flags still win)"
        ),
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    quick = bool(args.quick)
    return BenchSettings(
        models=args.models or (QUICK_MODELS if quick else DEFAULT_MODELS),
        batch_sizes=args.batch_sizes or (QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES),
        duration_s=args.duration_s
        if args.duration_s is not None
        else (QUICK_DURATION_S if quick else DEFAULT_DURATION_S),
        warmup_s=args.warmup_s
        if args.warmup_s is not None
        else (QUICK_WARMUP_S if quick else DEFAULT_WARMUP_S),
        torch_threads=args.torch_threads or default_torch_threads(),
        max_wait_ms=args.max_wait_ms,
        decode_workers=args.decode_workers,
        concurrency=args.concurrency,
        noop_batch_size=args.noop_batch_size,
        overhead=args.overhead,
        quiet_wait_s=args.quiet_wait_s,
        images=args.images,
        seed=args.seed,
        quick=quick,
        out=args.out,
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through every ``finally``: the servers are stopped on SIGTERM too.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.duration_s is not None and args.duration_s <= 0:
        parser.error("--duration-s must be > 0")
    if args.warmup_s is not None and args.warmup_s < 0:
        parser.error("--warmup-s must be >= 0")
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    settings = settings_from_args(args)
    steps = plan(settings)
    console.print(
        f"greenserve serving benchmark: {len(steps)} points, "
        f"about {estimate_s(steps, settings) / 60:.1f} min "
        f"(models {', '.join(settings.models)}; batch sizes {', '.join(map(str, settings.batch_sizes))}; "
        f"{settings.warmup_s:g} s warm-up + {settings.duration_s:g} s measured per point; "
        f"{settings.torch_threads} torch threads)"
    )
    started = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        result = run(steps, settings, console)
    except KeyboardInterrupt:
        console.print("interrupted: every server started was stopped; nothing written")
        return 130
    elapsed_s = time.monotonic() - started
    report: dict[str, Any] = {
        "benchmark": "serving",
        "version": 1,
        "started_at": started_at,
        "elapsed_s": elapsed_s,
        "energy_source": result.offline_energy_source,
        "watts_per_core": result.watts_per_core,
        "machine": machine_info(settings.torch_threads),
        "settings": asdict(settings),
        "offline": [asdict(p) for p in result.offline],
        "served": [asdict(p) for p in result.served],
        "summary": summarize(settings, result.offline, result.served),
    }
    render(report, console)
    out = Path(settings.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    console.print(f"\nwrote {out} ({elapsed_s / 60:.1f} min)")
    return 1 if report["summary"]["errors_total"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
