"""The adaptive policy in a real server (``greenserve serve --batching adaptive --slo-p99-ms``) under a
short trace with a 10× rate step: it learns from nothing, batches more when the rate rises, shows its
decisions in ``/v1/batching``, the metrics and the log, keeps deadlines, and can be switched at runtime.

Behaviour, not speed: the assertions are on what the policy decided (batch sizes per phase, its own
projection within the objective), never on wall-clock latency, which the study measures
(``make bench-adaptive``)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image

from loadgen.trace.generators import step
from service import digits
from tests.conftest import png_bytes, server_process
from tests.service.test_server import assert_graceful_exit, metric

SLO_MS = 300.0
LOW, HIGH, STEP_S = 8.0, 80.0, 3.0  # req/s; a 10× step


async def replay(url: str, times: list[float], images: list[bytes]) -> tuple[list[int], list[float]]:
    """Each request at its arrival time (open loop); the statuses, and the batch-size histogram's mean
    over the low-rate phase and over the high-rate phase (scraped at the step)."""
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def batches() -> tuple[float, float]:
            text = (await client.get("/metrics")).text
            return metric(text, "greenserve_batch_size_sum"), metric(text, "greenserve_batch_size_count")

        async def one(at: float, image: bytes) -> int:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            response = await client.post("/classify", content=image, headers={"content-type": "image/png"})
            return response.status_code

        loop = asyncio.get_running_loop()
        before = await batches()
        start = loop.time()
        tasks = [asyncio.create_task(one(t, images[i % len(images)])) for i, t in enumerate(times)]
        low_done = [t for t, at in zip(tasks, times, strict=True) if at < STEP_S]
        await asyncio.gather(*low_done)
        at_step = await batches()
        statuses = list(await asyncio.gather(*tasks))
        after = await batches()
    means = [(b[0] - a[0]) / max(1.0, b[1] - a[1]) for a, b in ((before, at_step), (at_step, after))]
    return statuses, means


@pytest.mark.server
def test_adaptive_server_learns_batches_more_at_a_10x_step_and_shows_why(tmp_path: Path) -> None:
    split = digits.load_split()
    images = [png_bytes(Image.fromarray(digits.to_png_pixels(x))) for x in split.x_test[:32]]
    times = [float(t) for t in step([LOW, HIGH], STEP_S, seed=3).times]
    flags = ["--batching", "adaptive", "--slo-p99-ms", str(SLO_MS), "--torch-threads", "1"]
    with server_process(tmp_path, *flags) as server:
        statuses, (low_mean, high_mean) = asyncio.run(replay(server.url, times, images))
        assert statuses == [200] * len(times), sorted(set(statuses))
        # The rate rose 10×: the policy gathers larger batches (it waits while one more request lowers
        # J/request and the oldest request's projected completion stays within the objective).
        assert high_mean > 2.0, (low_mean, high_mean)
        assert high_mean > 1.5 * low_mean, (low_mean, high_mean)

        state = httpx.get(f"{server.url}/v1/batching").json()
        assert state["batching"] == "adaptive" and state["slo_p99_ms"] == SLO_MS
        decided = state["policy_state"]
        assert decided["target_batch_size"] >= 1
        assert 0 < decided["projected_p99_seconds"] <= SLO_MS / 1000, decided
        assert "observed_p99_seconds" in decided  # ≥ 50 answers seen

        text = httpx.get(f"{server.url}/metrics").text
        assert metric(text, "greenserve_batching_policy", '{policy="adaptive"}') == 1
        learned = re.findall(
            r'^greenserve_batching_energy_per_image_joules\{batch_size="(\d+)"\} (\S+)$', text, re.M
        )
        assert len(learned) >= 2 and all(float(j) > 0 for _, j in learned), learned
        assert metric(text, "greenserve_batching_p99_seconds", '{kind="projected"}') <= SLO_MS / 1000

        # Deadlines hold as under the static policy: a 1 ms deadline is met by a 504.
        expired = httpx.post(
            f"{server.url}/classify",
            content=images[0],
            headers={"content-type": "image/png", "X-Request-Timeout-Ms": "1"},
        )
        assert expired.status_code == 504 and expired.json()["error"]["code"] == "deadline_exceeded"

        # Switched back to the static rule at runtime, and serving.
        switched = httpx.put(f"{server.url}/v1/batching", json={"batching": "static", "max_wait_ms": 2})
        assert switched.status_code == 200 and switched.json()["batching"] == "static"
        answer = httpx.post(
            f"{server.url}/classify", content=images[0], headers={"content-type": "image/png"}
        )
        assert answer.status_code == 200
        text = httpx.get(f"{server.url}/metrics").text
        assert metric(text, "greenserve_batching_policy", '{policy="static"}') == 1

        returncode = server.stop()
        log = server.log()
    assert_graceful_exit(returncode, log)
    assert re.search(r"batching policy adaptive changes regime learning -> \S+", log), log[-3000:]
