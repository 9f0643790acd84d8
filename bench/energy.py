"""Energy accounting benchmark: does the per-request figure hold under load, against a known truth?

``make bench-energy`` (``python -m bench.energy``) starts a real server per energy source (by
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
(idle excluded), as the responses give it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from PIL import Image

from energy import MODEL_SOURCES
from loadgen.metrics import metric, parse_metrics
from studies.kit.server import greenserve_argv, running_server, server_env

DEFAULT_SOURCES = ("synthetic", "estimate")
WATTS_PER_CORE = 10.0


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


def process_cpu_s(pid: int) -> float:
    """A process's CPU time (utime + stime, all threads) as the kernel counts it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
            cpu0, t0 = process_cpu_s(server.pid), time.monotonic()
            answers = asyncio.run(closed_loop(server.base_url, clients, seconds))
            time.sleep(0.5)  # a few counter periods: the device counter catches up with the work
            cpu1, t1 = process_cpu_s(server.pid), time.monotonic()
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


def render(checks: Sequence[EnergyCheck]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Energy accounting under steady closed-loop load (J/request attributed, idle excluded)"
    )
    for column in (
        "source",
        "requests",
        "0 J or null",
        "closure (Σ req + idle) ÷ device",
        "mean mJ/request",
        "truth mJ/request",
        "mean ÷ truth",
        "p99 ÷ p50 (batch size)",
        "parts mJ: model / decode / serving",
    ):
        table.add_column(column, justify="right")
    for c in checks:
        table.add_row(
            c.source,
            str(c.requests),
            str(c.zero_or_null),
            f"{c.closure:.4f}",
            f"{c.mean_j * 1000:.3f}",
            f"{c.truth_j * 1000:.3f}",
            f"{c.mean_vs_truth:.3f}",
            f"{c.p99_over_p50:.2f} ({c.batch_size})",
            " / ".join(f"{c.parts_mean_j[k] * 1000:.2f}" for k in ("model", "decode", "serving")),
        )
    console = Console(file=io.StringIO(), width=170, record=True)
    console.print(table)
    console.print(
        "truth: watts per core × the server's CPU seconds (/proc) ÷ requests — the source's own power "
        "model, idle excluded; synthetic reads through a 100 ms counter with 4 ms reads."
    )
    return console.export_text()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.energy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", default=",".join(DEFAULT_SOURCES), help="comma-separated energy sources")
    parser.add_argument("--model", default="digits_cnn")
    parser.add_argument("--weights", help="the servers' --weights (e.g. random for resnet50 offline)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="the servers' torch device (the NVML check: --sources nvml --model resnet50 --device cuda)",
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured window per source")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="3 s per source (a smoke run)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path("/proc/self/stat").exists():
        print("bench.energy needs Linux's /proc to read the server's CPU time", file=sys.stderr)
        return 2
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    seconds = 3.0 if args.quick else args.duration_s
    checks = []
    with tempfile.TemporaryDirectory(prefix="bench-energy-") as tmp:
        for source in sources:
            print(f"measuring {source}: {args.clients} clients, {seconds:g} s …", file=sys.stderr, flush=True)
            checks.append(
                measure(
                    source,
                    model=args.model,
                    clients=args.clients,
                    seconds=seconds,
                    max_batch_size=args.max_batch_size,
                    max_wait_ms=args.max_wait_ms,
                    device=args.device,
                    weights=args.weights,
                    workdir=Path(tmp),
                )
            )
    print(render(checks))
    for check in checks:
        print({k: v for k, v in asdict(check).items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
