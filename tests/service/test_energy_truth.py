"""Energy truth on a real server: the synthetic source (its true energy is known) under steady
closed-loop load of identical requests, read through a 100 ms counter whose reads take 4 ms."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from tests.conftest import gray_png, server_process
from tests.service.test_server import metric

pytestmark = pytest.mark.server

WATTS_PER_CORE = 10.0
IDLE_W = 10.0
CLIENTS = 12
LOAD_S = 8.0


def process_cpu_s(pid: int) -> float:
    """The server's CPU time from the kernel (utime + stime): the synthetic truth's only input."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def closed_loop(url: str, seconds: float) -> list[dict[str, object]]:
    image = gray_png(2)
    answers: list[dict[str, object]] = []
    deadline = time.monotonic() + seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            response = await client.post("/classify", content=image, headers={"content-type": "image/png"})
            assert response.status_code == 200, response.text
            answers.append(response.json())

    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CLIENTS)))
    return answers


def test_per_request_energy_closes_on_the_device_counter_and_matches_the_truth(tmp_path: Path) -> None:
    args = [
        "--model", "tests.fakes:busy_classifier",
        "--energy-source", "synthetic",
        "--watts-per-core", str(WATTS_PER_CORE),
        "--synthetic-idle-w", str(IDLE_W),
        "--synthetic-counter-period-ms", "100",
        "--synthetic-read-ms", "4",
        "--max-batch-size", "4",
        "--max-wait-ms", "2",
        "--torch-threads", "1",
        "--no-access-log",
    ]  # fmt: skip
    with server_process(tmp_path, *args, env={"FAKE_BUSY_S": "0.005"}) as server:
        pid = server.process.pid
        asyncio.run(closed_loop(server.url, 1.5))  # the price per CPU-second settles on steady load
        time.sleep(0.5)
        before = httpx.get(f"{server.url}/metrics").text
        cpu0, t0 = process_cpu_s(pid), time.monotonic()
        answers = asyncio.run(closed_loop(server.url, LOAD_S))
        time.sleep(0.5)  # three counter periods: the counter catches up with the work charged
        cpu1, t1 = process_cpu_s(pid), time.monotonic()
        after = httpx.get(f"{server.url}/metrics").text

    energies = [a["energy_j"] for a in answers]
    assert all(isinstance(e, float) for e in energies), "an unknown energy under a healthy meter"
    assert min(energies) > 0, "a response with 0 J"  # type: ignore[type-var]
    assert {a["energy_source"] for a in answers} == {"synthetic"}

    # Σ per-request energy + idle/unattributed = the device's own counter, over the window.
    def delta(name: str) -> float:
        return metric(after, name) - metric(before, name)

    device_j = delta("greenserve_device_energy_joules_total")
    idle_j = delta("greenserve_idle_energy_joules_total")
    requests_j = sum(energies)  # type: ignore[arg-type]
    assert requests_j + idle_j == pytest.approx(device_j, rel=0.03), (requests_j, idle_j, device_j)

    # The truth: the synthetic power model applied to the server's CPU time as the kernel counts it.
    # All of the server's CPU time in the window is serving these requests, but for the sampler's.
    true_dynamic_j = WATTS_PER_CORE * (cpu1 - cpu0)
    true_j_per_request = true_dynamic_j / len(answers)
    mean_j = requests_j / len(answers)
    print(
        f"synthetic: {len(answers)} requests, Σ requests + idle = {requests_j + idle_j:.3f} J vs device "
        f"{device_j:.3f} J; mean {mean_j * 1000:.3f} mJ vs truth {true_j_per_request * 1000:.3f} mJ"
    )
    assert mean_j == pytest.approx(true_j_per_request, rel=0.05), (mean_j, true_j_per_request)
    # and the idle counter holds the idle draw (plus what no request used).
    assert idle_j >= IDLE_W * (t1 - t0) * 0.97

    # Identical requests in batches of one size cost about the same: no lumps of counter ticks.
    by_size: defaultdict[int, list[float]] = defaultdict(list)
    for answer in answers:
        by_size[int(answer["batch_size"])].append(float(answer["energy_j"]))  # type: ignore[arg-type]
    checked = 0
    for size, values in by_size.items():
        if len(values) < 100:
            continue
        p50 = statistics.median(values)
        p99 = statistics.quantiles(values, n=100)[98]
        print(f"batch size {size}: {len(values)} requests, p99/p50 {p99 / p50:.2f}")
        assert p99 / p50 <= 1.5, (size, p50, p99)
        checked += 1
    assert checked, {size: len(v) for size, v in by_size.items()}
