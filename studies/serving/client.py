"""The serving benchmark's load client: a closed-loop HTTP/1.1 driver, and ``/metrics`` snapshots."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadgen.metrics import MetricKey, parse_metrics
from studies.kit.machine import machine_busy_cpu_s, process_cpu_s

JPEG_HEADERS = {"content-type": "image/jpeg"}
MULTIPART_BOUNDARY = "greenserve-bench-boundary"


@dataclass(frozen=True)
class Encoded:
    """One request, encoded once before the load (the client's CPU is the same per request for
    every protocol: bytes on a socket): where to post it, its body and headers."""

    path: str
    content: bytes
    headers: dict[str, str]


def encode_requests(protocol: str, bodies: Sequence[bytes], model: str) -> list[Encoded]:
    """Each JPEG as ``protocol`` sends it (studies.serving.settings.Protocol)."""
    if protocol == "raw":
        return [Encoded("/classify", body, JPEG_HEADERS) for body in bodies]
    if protocol == "multipart":
        form = f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"
        head = (
            f'--{MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            'filename="image.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        tail = f"\r\n--{MULTIPART_BOUNDARY}--\r\n".encode()
        return [Encoded("/classify", head + body + tail, {"content-type": form}) for body in bodies]
    if protocol == "v2":
        import numpy as np
        from tritonclient.http import InferenceServerClient, InferInput

        encoded = []
        for body in bodies:
            image = InferInput("IMAGE", [1], "BYTES")
            image.set_data_from_numpy(np.array([body], dtype=object))
            content, json_size = InferenceServerClient.generate_request_body([image])
            headers = {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(json_size),
            }
            encoded.append(Encoded(f"/v2/models/{model}/infer", content, headers))
        return encoded
    raise ValueError(f"unknown protocol {protocol!r}")


def _answer(response: httpx.Response) -> dict[str, Any]:
    """A 200's figures: /classify's JSON, or an infer answer's parameters (its JSON header)."""
    header_length = response.headers.get("inference-header-content-length")
    content = response.content if header_length is None else response.content[: int(header_length)]
    document: dict[str, Any] = json.loads(content)
    if "outputs" in document:  # the Open Inference Protocol: the energy is in the parameters
        return dict(document.get("parameters", {}))
    return document


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
    requests: Sequence[Encoded],
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
                request = requests[turn % len(requests)]
                turn += concurrency
                started = time.perf_counter()
                try:
                    response = await client.post(
                        request.path, content=request.content, headers=request.headers
                    )
                except httpx.HTTPError as exc:
                    run.records.append(Record(started, time.perf_counter(), type(exc).__name__))
                    await asyncio.sleep(0.05)  # a dead server must not turn this into a busy loop
                    continue
                record = Record(started, time.perf_counter(), str(response.status_code))
                if response.status_code == 200:
                    payload = _answer(response)
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
