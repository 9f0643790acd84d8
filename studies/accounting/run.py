"""Energy accounting benchmark: does the per-request figure hold under load, against a known truth?

``make bench-energy`` (``python -m studies.accounting``) starts a real server per energy source (by
default ``synthetic`` — a known power model read through a 100 ms counter whose reads take 4 ms,
as NVML's on an H200 — and ``estimate``), drives it with a steady closed loop of identical
requests, and prints four figures per source, measured side by side in one run:

1. **responses with 0 J or null** (must be none);
2. **closure**: (Σ per-request ``energy_j`` + Δ ``greenserve_idle_energy_joules_total``) ÷ Δ
   ``greenserve_device_energy_joules_total`` over the window (1 ± 0.03);
3. **mean J/request ÷ truth**: the truth is the source's power model applied to the server's CPU
   time as the kernel counts it (``/proc/<pid>/stat``): watts per core × CPU seconds ÷ requests,
   idle excluded — for ``synthetic`` that is its exact dynamic energy, for ``estimate`` what its
   model says (1 ± 0.05);
4. **p99 ÷ p50 of energy_j** among requests in batches of the most common size (≤ 1.5).

A sensor (``--sources nvml --model resnet50 --weights random --device cuda`` on a GPU machine) has no
model truth: its figures are the closure on its own counter, the 0 J count and the spread.

Linux only (``/proc``). Every figure names its source; J/request is the *attributed* figure
(idle excluded), as the responses give it. The settings are :mod:`studies.accounting.settings`'s,
the table :mod:`studies.accounting.report`'s, the command :mod:`studies.accounting.cli`'s.
"""

from __future__ import annotations

import asyncio
import io
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

from energy import MODEL_SOURCES
from loadgen.metrics import metric, parse_metrics
from studies.accounting.settings import AccountingSettings
from studies.kit.errors import LabError
from studies.kit.machine import process_cpu_s
from studies.kit.progress import announce
from studies.kit.server import greenserve_argv, running_server, server_env

logger = logging.getLogger(__name__)

WATTS_PER_CORE = 10.0
#: Rough cost per source beyond its measured window (server start, warm-up, settling), for the estimate.
OVERHEAD_ESTIMATE_S = 8.0


@dataclass(frozen=True)
class EnergyCheck:
    """The four figures of one source's run, and what they were computed from."""

    source: str
    model: str
    requests: int
    zero_or_null: int
    closure: float  # (Σ requests + Δidle) ÷ Δdevice
    mean_j: float
    truth_j: float
    mean_vs_truth: float
    batch_size: int  # the most common batch size, over which p99/p50 is taken
    p99_over_p50: float
    device_j: float
    idle_j: float
    seconds: float
    parts_mean_j: dict[str, float]  # mean energy_parts_j over the requests: model, decode, serving


def server_cpu_s(pid: int) -> float:
    """The server's CPU time (utime + stime, all threads) as the kernel counts it."""
    cpu_s = process_cpu_s(pid)
    if cpu_s is None:
        raise LabError(f"cannot read /proc/{pid}/stat: the truth needs Linux's /proc and the server alive")
    return cpu_s


def sample_png() -> bytes:
    """One digit-like 8×8 grayscale PNG (every request sends the same bytes)."""
    image = Image.new("L", (8, 8), 0)
    for i in range(2, 6):
        image.putpixel((i, 1), 255)
        image.putpixel((4, i + 1), 255)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def closed_loop(url: str, clients: int, seconds: float) -> list[dict[str, object]]:
    """``clients`` loops posting the same PNG back to back for ``seconds``; the 200 bodies."""
    body = sample_png()
    answers: list[dict[str, object]] = []
    deadline = time.monotonic() + seconds

    async def one(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            response = await client.post("/classify", content=body, headers={"content-type": "image/png"})
            if response.status_code != 200:
                raise RuntimeError(f"/classify answered {response.status_code}: {response.text[:200]}")
            answers.append(response.json())

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(one(client) for _ in range(clients)))
    return answers


def measure(
    source: str,
    *,
    model: str = "digits_cnn",
    clients: int = 16,
    seconds: float = 10.0,
    warm_s: float = 2.0,
    max_batch_size: int = 8,
    max_wait_ms: float = 2.0,
    device: str = "cpu",
    weights: str | None = None,
    workdir: Path,
    env: dict[str, str] | None = None,
) -> EnergyCheck:
    """Serve ``model`` with ``source`` and measure the four figures over ``seconds`` of load."""
    settings: dict[str, object] = {
        "model": model,
        "device": device,
        "weights": weights,
        "energy_source": source,
        "watts_per_core": WATTS_PER_CORE,
        "max_batch_size": max_batch_size,
        "max_wait_ms": max_wait_ms,
        "torch_threads": 1,
        "access_log": False,
    }
    with running_server(
        lambda port: greenserve_argv(port, **settings),
        name=f"energy-{source}",
        workdir=workdir,
        env=server_env(**(env or {})),
    ) as server:
        asyncio.run(closed_loop(server.base_url, clients, warm_s))  # the price per CPU-second settles
        time.sleep(0.5)
        with httpx.Client(base_url=server.base_url, timeout=10, trust_env=False) as client:
            before = client.get("/metrics").text
            cpu0, t0 = server_cpu_s(server.pid), time.monotonic()
            answers = asyncio.run(closed_loop(server.base_url, clients, seconds))
            time.sleep(0.5)  # a few counter periods: the device counter catches up with the work
            cpu1, t1 = server_cpu_s(server.pid), time.monotonic()
            after = client.get("/metrics").text
    energies = [a["energy_j"] for a in answers]
    known = [float(e) for e in energies if isinstance(e, (int, float))]
    zero_or_null = sum(1 for e in energies if not isinstance(e, (int, float)) or e <= 0)
    start, end = parse_metrics(before), parse_metrics(after)
    device_j = metric(end, "greenserve_device_energy_joules_total") - metric(
        start, "greenserve_device_energy_joules_total"
    )
    idle_j = metric(end, "greenserve_idle_energy_joules_total") - metric(
        start, "greenserve_idle_energy_joules_total"
    )
    requests_j = sum(known)
    mean_j = requests_j / max(1, len(known))
    # A model source's truth is its power model over the server's CPU time; a sensor has no such
    # truth here (its check is the closure on its own counter).
    truth_j = (
        WATTS_PER_CORE * (cpu1 - cpu0) / max(1, len(answers)) if source in MODEL_SOURCES else float("nan")
    )
    sizes = Counter(int(str(a["batch_size"])) for a in answers)
    size = sizes.most_common(1)[0][0] if sizes else 0
    same = [float(str(a["energy_j"])) for a in answers if int(str(a["batch_size"])) == size and a["energy_j"]]
    p99_over_p50 = (
        statistics.quantiles(same, n=100)[98] / statistics.median(same) if len(same) >= 2 else float("nan")
    )
    parts = [a["energy_parts_j"] for a in answers if isinstance(a.get("energy_parts_j"), dict)]
    parts_mean = {
        stage: statistics.fmean(float(p[stage]) for p in parts) if parts else float("nan")  # type: ignore[index]
        for stage in ("model", "decode", "serving")
    }
    return EnergyCheck(
        source=source,
        model=model,
        requests=len(answers),
        zero_or_null=zero_or_null,
        closure=(requests_j + idle_j) / device_j if device_j > 0 else float("nan"),
        mean_j=mean_j,
        truth_j=truth_j,
        mean_vs_truth=mean_j / truth_j if truth_j > 0 else float("nan"),  # NaN > 0 is False
        batch_size=size,
        p99_over_p50=p99_over_p50,
        device_j=device_j,
        idle_j=idle_j,
        seconds=t1 - t0,
        parts_mean_j=parts_mean,
    )


def plan_line(settings: AccountingSettings) -> str:
    """What the run will do and about how long it takes (logged, and printed on stderr first)."""
    sources = settings.sources
    return announce(
        "energy accounting benchmark",
        f"{len(sources)} source(s) ({', '.join(sources)}) × {settings.measured_s:g} s of "
        f"{settings.clients} closed-loop clients on {settings.model}",
        units=len(sources),
        estimate_s=len(sources) * (OVERHEAD_ESTIMATE_S + settings.measured_s),
    )


def measure_all(settings: AccountingSettings) -> list[EnergyCheck]:
    """One :func:`measure` per source, in order; says which runs on stderr."""
    checks = []
    with tempfile.TemporaryDirectory(prefix="bench-energy-") as tmp:
        for source in settings.sources:
            print(
                f"measuring {source}: {settings.clients} clients, {settings.measured_s:g} s …",
                file=sys.stderr,
                flush=True,
            )
            checks.append(
                measure(
                    source,
                    model=settings.model,
                    clients=settings.clients,
                    seconds=settings.measured_s,
                    max_batch_size=settings.max_batch_size,
                    max_wait_ms=settings.max_wait_ms,
                    device=settings.device,
                    weights=settings.weights,
                    workdir=Path(tmp),
                )
            )
    return checks
