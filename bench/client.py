"""The load client: generated JPEGs, a closed-loop HTTP/1.1 driver, and ``/metrics`` snapshots."""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bench.machine import machine_busy_cpu_s, process_cpu_s

JPEG_HEADERS = {"content-type": "image/jpeg"}
IMAGE_SIZE = 224


def make_jpegs(count: int, *, size: int = IMAGE_SIZE, seed: int = 0, quality: int = 90) -> list[bytes]:
    """``count`` photo-like JPEGs (smooth gradient, soft blobs, sensor-like noise); deterministic in ``seed``.

    Flat or random-noise images would be unrealistically cheap or expensive to decode; this is
    close to what a camera photo scaled to 224×224 costs (about 15-25 KB at quality 90).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    bodies: list[bytes] = []
    for _ in range(count):
        angle = rng.uniform(0, 2 * math.pi)
        ramp = math.cos(angle) * xx + math.sin(angle) * yy
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        start, end = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        pixels = start + (end - start) * ramp[..., None]
        for _ in range(3):
            cx, cy = rng.uniform(0, 1, size=2)
            radius = rng.uniform(0.08, 0.3)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
            pixels += blob[..., None] * rng.uniform(-90, 90, size=3).astype(np.float32)
        pixels += rng.normal(0, 6, size=pixels.shape).astype(np.float32)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        bodies.append(buffer.getvalue())
    return bodies


# --- metrics ------------------------------------------------------------------------------------

MetricKey = tuple[str, frozenset[tuple[str, str]]]


def parse_metrics(text: str) -> dict[MetricKey, float]:
    """Prometheus text → {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: dict[MetricKey, float], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)


# --- load ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Counters at one instant of a served step."""

    at_s: float  # time.perf_counter()
    client_cpu_s: float
    server_cpu_s: float | None
    machine_busy_s: float | None
    metrics: dict[MetricKey, float] | None


@dataclass
class Record:
    started_s: float
    ended_s: float
    status: str  # "200", "503", or a client exception's name
    energy_j: float | None = None
    energy_source: str | None = None
    batch_size: int | None = None
    compute_ms: float | None = None


@dataclass
class LoadRun:
    records: list[Record] = field(default_factory=list)
    before: Snapshot | None = None
    after: Snapshot | None = None


async def drive(
    base_url: str,
    bodies: Sequence[bytes],
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    snapshot: Callable[[], Awaitable[Snapshot]],
) -> LoadRun:
    """Keep ``concurrency`` requests in flight (HTTP/1.1 keep-alive), warm up, measure ``duration_s``.

    ``snapshot`` is awaited at both ends of the measured period (on its own connection, so it never
    waits behind the load). Every response is recorded; the caller picks the measured window.
    """
    run = LoadRun()
    stop = asyncio.Event()
    timeout = httpx.Timeout(120.0)

    async def worker(index: int) -> None:
        # One client (one keep-alive connection) per worker: a single AsyncClient with a pool of
        # N connections costs O(N) client CPU per request in httpcore's pool bookkeeping (about
        # 9.5 ms at N = 34 against 2.1 ms here), which on a 2-core machine starves the server.
        async with httpx.AsyncClient(
            base_url=base_url, limits=httpx.Limits(max_connections=1), timeout=timeout, trust_env=False
        ) as client:
            turn = index
            while not stop.is_set():
                body = bodies[turn % len(bodies)]
                turn += concurrency
                started = time.perf_counter()
                try:
                    response = await client.post("/classify", content=body, headers=JPEG_HEADERS)
                except httpx.HTTPError as exc:
                    run.records.append(Record(started, time.perf_counter(), type(exc).__name__))
                    await asyncio.sleep(0.05)  # a dead server must not turn this into a busy loop
                    continue
                record = Record(started, time.perf_counter(), str(response.status_code))
                if response.status_code == 200:
                    payload = response.json()
                    record.energy_j = payload.get("energy_j")
                    record.energy_source = payload.get("energy_source")
                    record.batch_size = payload.get("batch_size")
                    record.compute_ms = payload.get("compute_ms")
                run.records.append(record)

    tasks = [asyncio.create_task(worker(i), name=f"client-{i}") for i in range(concurrency)]
    try:
        await asyncio.sleep(warmup_s)
        run.before = await snapshot()
        await asyncio.sleep(duration_s)
        run.after = await snapshot()
    finally:
        stop.set()
        # In-flight requests finish (at most a few batches); a failure in a worker surfaces here.
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
    return run


def make_snapshot(base_url: str | None, server_pid: int) -> Callable[[], Awaitable[Snapshot]]:
    """A snapshot function: CPU counters, plus ``/metrics`` when ``base_url`` is given."""

    async def snapshot() -> Snapshot:
        samples = None
        if base_url is not None:
            async with httpx.AsyncClient(base_url=base_url, timeout=10.0, trust_env=False) as scraper:
                response = await scraper.get("/metrics")
                response.raise_for_status()
                samples = parse_metrics(response.text)
        return Snapshot(
            at_s=time.perf_counter(),
            client_cpu_s=time.process_time(),
            server_cpu_s=process_cpu_s(server_pid),
            machine_busy_s=machine_busy_cpu_s(),
            metrics=samples,
        )

    return snapshot
