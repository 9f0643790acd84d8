"""The served side of the serving benchmark: a real server per point, driven at saturation.

A ``greenserve serve`` subprocess (or the bare FastAPI app, :mod:`studies.serving.bare_app`) on
loopback, started and always stopped by :func:`studies.kit.server.running_server`; the load comes
from :mod:`studies.serving.client`; :func:`served_point` turns the records and the two
``/metrics`` snapshots around the measured window into the point's figures.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.metrics import MetricKey, metric
from studies.kit import server as servers
from studies.kit.machine import delta
from studies.kit.server import HOST, ServerError, running_server
from studies.serving.client import LoadRun, drive, encode_requests, make_snapshot
from studies.serving.points import ServedPoint
from studies.serving.settings import BenchSettings, Step

#: The server's own drain limit: the client has stopped by then, so nothing is left to drain.
SERVER_DRAIN_TIMEOUT_S = 5.0
#: The bare app, as uvicorn imports it.
BARE_APP = "studies.serving.bare_app:create_app"


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
        "--factory", BARE_APP,
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
        "protocol": step.protocol,
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
            stage_j_per_request=stage_energy(m0, m1, ok_metrics) if ok_metrics else None,
        )
    return ServedPoint(**point)


STAGE_METRIC = "greenserve_stage_energy_joules_total"


def stage_energy(
    before: dict[MetricKey, float], after: dict[MetricKey, float], requests: float
) -> dict[str, dict[str, float]]:
    """Each stage's energy per request over the window, by source then stage (the server's
    ``greenserve_stage_energy_joules_total``): where a request's joules go."""
    out: dict[str, dict[str, float]] = {}
    for (name, labels), value in after.items():
        if name != STAGE_METRIC:
            continue
        label = dict(labels)
        if "stage" not in label or "source" not in label:
            continue
        joules = value - before.get((name, labels), 0.0)
        out.setdefault(label["source"], {})[label["stage"]] = joules / requests
    return out


@contextmanager
def client_affinity(step: Step, settings: BenchSettings) -> Iterator[None]:
    """While a model is served, this process (the load client) runs on the CPUs the server leaves to
    its front end (service.affinity: the server gives the model thread the last torch_threads CPUs).
    The offline pipeline it is compared with has no client at all; a client on the model's CPU
    would measure this machine's lack of a separate load generator, not the server. Elsewhere (the
    no-op server, the bare app) nothing is pinned."""
    from service.affinity import allowed_cpus, pin_other_threads, plan_cores

    allowed = allowed_cpus()
    plan = plan_cores(allowed, settings.torch_threads) if step.kind == "served" else None
    if plan is None or step.model == "noop" or allowed is None:
        yield
        return
    pin_other_threads(plan.front)
    try:
        yield
    finally:
        pin_other_threads(allowed)


def measure_served(
    step: Step, settings: BenchSettings, bodies: Sequence[bytes], workdir: Path
) -> ServedPoint:
    """Start the step's server, drive it at saturation, stop it; the point's figures."""
    if step.kind == "served":
        name = f"greenserve-{step.model}-b{step.batch_size}-{step.protocol}"

        def make_argv(port: int) -> list[str]:
            return greenserve_argv(step, settings, port)
    else:
        name = "bare-fastapi"
        make_argv = bare_argv
    # A point measured in two halves gets half the measured time in each; each half is a fresh
    # server, so it gets the whole warm-up (connections, first-request costs).
    share = 0.5 if step.half else 1.0
    with (
        running_server(make_argv, name=name, workdir=workdir, env=server_env(settings)) as server,
        client_affinity(step, settings),
    ):
        snapshot = make_snapshot(server.base_url if step.kind == "served" else None, server.pid)
        run = asyncio.run(
            drive(
                server.base_url,
                encode_requests(step.protocol, bodies, step.model),
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
