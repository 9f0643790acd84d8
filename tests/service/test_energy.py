"""The request path and the energy meter: no read on the way, and a failing or stalled meter never
fails a request (its energy is unknown, the errors are counted and logged once per episode)."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from typing import Any

import httpx
import pytest

from energy import EnergyError
from tests.conftest import gray_png, make_settings, running_app
from tests.fakes import FakeClassifier


async def classify(client: httpx.AsyncClient, tag: int = 1) -> httpx.Response:
    return await client.post("/classify", content=gray_png(tag), headers={"content-type": "image/png"})


def read_errors(text: str) -> float:
    match = re.search(r'^greenserve_energy_read_errors_total\{source="estimate"\} (\S+)$', text, re.MULTILINE)
    assert match, "greenserve_energy_read_errors_total missing"
    return float(match.group(1))


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition not reached in time")


async def test_no_meter_read_happens_on_the_request_path() -> None:
    async with running_app(make_settings(), FakeClassifier()) as (app, client):
        meter = app.state.server.accountant.cpu.meter
        original = meter.read_j
        readers: list[str] = []

        def recording_read() -> dict[str, float]:
            readers.append(threading.current_thread().name)
            return original()

        meter.read_j = recording_read
        responses = await asyncio.gather(*(classify(client, tag) for tag in range(24)))
        assert all(r.status_code == 200 for r in responses)
        assert all(r.json()["energy_j"] > 0 for r in responses)
        await wait_for(lambda: len(readers) >= 2)
    # Only the sampler's own thread reads the meter: not the model threads, decoders or the loop.
    assert readers and {name.split("-")[0] for name in readers} == {"energy"}, set(readers)


async def test_a_failing_meter_never_fails_a_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="energy")
    async with running_app(make_settings(), FakeClassifier()) as (app, client):
        sampler = app.state.server.accountant.cpu
        meter = sampler.meter
        original = meter.read_j

        def broken() -> dict[str, float]:
            raise EnergyError("sensor gone")

        meter.read_j = broken
        await wait_for(lambda: sampler.status() is not None)
        responses = [await classify(client, tag) for tag in range(5)]

        for response in responses:
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["energy_j"] is None and body["energy_parts_j"] is None
            assert body["energy_source"].startswith("unknown: estimate meter read failed")
            assert "sensor gone" in body["energy_source"]
            assert body["predictions"]  # the results went out
        assert (await client.get("/readyz")).status_code == 200
        assert read_errors((await client.get("/metrics")).text) >= 1

        meter.read_j = original
        await wait_for(lambda: sampler.status() is None)
        recovered = await classify(client)
        assert recovered.json()["energy_j"] > 0 and recovered.json()["energy_source"] == "estimate"

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "energy.sampler"]
    assert len(errors) == 1, "the failure is logged once per episode, not once per read or batch"
    assert any("readable again" in r.getMessage() for r in caplog.records)


async def test_a_stalled_meter_makes_energy_unknown_and_the_server_keeps_serving() -> None:
    async with running_app(make_settings(), FakeClassifier()) as (app, client):
        sampler = app.state.server.accountant.cpu
        meter = sampler.meter
        original = meter.read_j
        release = threading.Event()

        def hanging() -> dict[str, float]:
            release.wait(30)  # a driver call that does not return
            return original()

        meter.read_j = hanging
        try:
            await wait_for(lambda: sampler.status() is not None, timeout_s=sampler.stall_after_s + 10)
            response = await classify(client)
            assert response.status_code == 200
            assert response.json()["energy_j"] is None
            assert "stalled" in response.json()["energy_source"]
            assert (await client.get("/readyz")).status_code == 200
            assert read_errors((await client.get("/metrics")).text) == 1  # one stall episode
        finally:
            meter.read_j = original
            release.set()
