"""The HTTP contract in-process: every bad input gets its status and JSON error, and the server
keeps serving afterwards."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
from typing import Any

import httpx
import pytest
import torch
from PIL import Image
from prometheus_client import generate_latest

from greenserve import __version__
from service import imaging, pipeline
from service.api.middleware import AccessLogMiddleware
from service.connections import CONNECTION_LOST
from service.state import Phase
from tests.conftest import gray_png, make_settings, png_bytes, running_app
from tests.fakes import POISON, FakeClassifier

pytestmark = pytest.mark.asyncio


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error  # type: ignore[no-any-return]


async def assert_still_serving(client: httpx.AsyncClient, tag: int = 2) -> None:
    response = await client.post("/classify", content=gray_png(tag), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["index"] == tag % 4


async def test_classify_multipart_and_raw_body() -> None:
    async with running_app(make_settings(), FakeClassifier()) as (_, client):
        multipart = await client.post("/classify", files={"file": ("x.png", gray_png(3), "image/png")})
        raw = await client.post(
            "/classify?top_k=2",
            content=gray_png(1),
            headers={"content-type": "image/png", "x-request-id": "my-id-1"},
        )
    body = multipart.json()
    assert multipart.status_code == 200
    assert set(body) == {
        "model",
        "predictions",
        "batch_size",
        "queue_ms",
        "compute_ms",
        "energy_j",
        "energy_parts_j",
        "energy_source",
        "energy_idle_included",
        "request_id",
    }
    assert body["model"] == "fake"
    assert body["predictions"][0] == {"index": 3, "label": "class-3", "score": pytest.approx(1.0, abs=1e-3)}
    assert len(body["predictions"]) == 4  # top_k defaults to 5, capped by the number of classes
    assert body["energy_source"] == "estimate" and body["energy_j"] > 0
    parts = body["energy_parts_j"]
    assert set(parts) == {"model", "decode", "serving"} and all(v >= 0 for v in parts.values())
    assert sum(parts.values()) == pytest.approx(body["energy_j"])
    assert body["energy_idle_included"] is False  # CPU parts are above idle
    assert body["batch_size"] >= 1 and body["queue_ms"] >= 0 and body["compute_ms"] >= 0
    assert raw.json()["request_id"] == "my-id-1" == raw.headers["x-request-id"]
    assert raw.json()["predictions"][0]["index"] == 1
    assert len(raw.json()["predictions"]) == 2


async def test_undecodable_image_is_400() -> None:
    async with running_app(make_settings(), FakeClassifier()) as (_, client):
        garbage = await client.post(
            "/classify", content=b"not an image", headers={"content-type": "image/png"}
        )
        assert_error(garbage, 400, "bad_image")
        truncated = await client.post("/classify", files={"file": ("x.png", gray_png(1)[:40], "image/png")})
        assert_error(truncated, 400, "bad_image")
        await assert_still_serving(client)


async def test_oversized_body_is_413() -> None:
    async with running_app(make_settings(max_body_bytes=2048), FakeClassifier()) as (_, client):
        big = b"\x89PNG" + b"\0" * 4096
        declared = await client.post("/classify", content=big, headers={"content-type": "image/png"})
        assert_error(declared, 413, "body_too_large")

        async def chunks():  # no Content-Length: the limit is enforced while streaming
            for _ in range(8):
                yield b"\0" * 1024

        streamed = await client.post("/classify", content=chunks(), headers={"content-type": "image/png"})
        assert_error(streamed, 413, "body_too_large")
        multipart = await client.post("/classify", files={"file": ("x.png", big, "image/png")})
        assert_error(multipart, 413, "body_too_large")
        await assert_still_serving(client)


async def test_too_many_pixels_is_413() -> None:
    huge = png_bytes(Image.new("L", (3000, 3000)))  # compresses to a few KB, 9 Mpx when decoded
    async with running_app(make_settings(max_image_pixels=1_000_000), FakeClassifier()) as (_, client):
        response = await client.post("/classify", content=huge, headers={"content-type": "image/png"})
        assert_error(response, 413, "image_too_large")
        await assert_still_serving(client)


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "image/svg+xml", None])
async def test_wrong_content_type_is_415(content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    async with running_app(make_settings(), FakeClassifier()) as (_, client):
        response = await client.post("/classify", content=gray_png(1), headers=headers)
        assert_error(response, 415, "unsupported_media_type")
        await assert_still_serving(client)


@pytest.mark.parametrize(
    ("query", "headers", "fragment"),
    [
        ("top_k=0", {}, "top_k"),
        ("top_k=101", {}, "top_k"),
        ("top_k=abc", {}, "top_k"),
        ("", {"x-request-timeout-ms": "-5"}, "Timeout"),
        ("", {"x-request-timeout-ms": "soon"}, "timeout"),
        ("", {"x-request-timeout-ms": "99999999"}, "Timeout"),
    ],
)
async def test_bad_parameters_are_422(query: str, headers: dict[str, str], fragment: str) -> None:
    async with running_app(make_settings(), FakeClassifier()) as (_, client):
        response = await client.post(
            f"/classify?{query}", content=gray_png(1), headers={"content-type": "image/png", **headers}
        )
        error = assert_error(response, 422, "invalid_parameter")
        assert fragment.lower() in error["message"].lower()
        await assert_still_serving(client)


async def test_multipart_without_file_field_is_422() -> None:
    async with running_app(make_settings(), FakeClassifier()) as (_, client):
        response = await client.post("/classify", files={"image": ("x.png", gray_png(1), "image/png")})
        assert_error(response, 422, "invalid_parameter")


async def test_full_queue_is_429_with_retry_after() -> None:
    fake = FakeClassifier()
    settings = make_settings(max_batch_size=1, max_queue=1, max_wait_ms=0)
    async with running_app(settings, fake) as (app, client):
        fake.gate.clear()
        fake.entered.clear()

        def post(tag: int):  # type: ignore[no-untyped-def]
            return client.post("/classify", content=gray_png(tag), headers={"content-type": "image/png"})

        running = asyncio.create_task(post(1))
        await asyncio.to_thread(fake.entered.wait, 10)  # batch 1 holds the model
        queued = asyncio.create_task(post(2))
        while app.state.server.batcher.queue_depth < 1:
            await asyncio.sleep(0.001)
        rejected = await post(3)
        error = assert_error(rejected, 429, "queue_full")
        assert int(rejected.headers["retry-after"]) >= 1
        assert "queue" in error["message"]
        fake.gate.set()
        assert (await running).status_code == 200 and (await queued).status_code == 200
        assert 3 not in fake.computed
        metrics = (await client.get("/metrics")).text
        assert 'greenserve_rejected_total{reason="queue_full"} 1.0' in metrics
        assert 'greenserve_requests_total{protocol="classify",status="429"} 1.0' in metrics


async def test_expired_deadline_is_504_and_never_computed() -> None:
    fake = FakeClassifier()
    async with running_app(make_settings(max_batch_size=1, max_wait_ms=0), fake) as (_, client):
        fake.gate.clear()
        fake.entered.clear()
        running = asyncio.create_task(
            client.post("/classify", content=gray_png(1), headers={"content-type": "image/png"})
        )
        await asyncio.to_thread(fake.entered.wait, 10)
        late = await client.post(
            "/classify",
            content=gray_png(77),
            headers={"content-type": "image/png", "x-request-timeout-ms": "30"},
        )
        assert_error(late, 504, "deadline_exceeded")
        fake.gate.set()
        assert (await running).status_code == 200
        await assert_still_serving(client)
        assert 77 not in fake.computed
        assert 'greenserve_rejected_total{reason="deadline"} 1.0' in (await client.get("/metrics")).text


async def test_model_failure_is_500_and_only_for_its_batch() -> None:
    poison = png_bytes(Image.new("RGB", (8, 8), POISON))
    async with running_app(make_settings(max_batch_size=1), FakeClassifier()) as (_, client):
        response = await client.post("/classify", content=poison, headers={"content-type": "image/png"})
        error = assert_error(response, 500, "model_error")
        assert "fake model failure" in error["message"]
        await assert_still_serving(client)


async def test_not_ready_while_warming_then_ready() -> None:
    fake = FakeClassifier()
    fake.gate.clear()  # warm-up blocks in predict
    async with running_app(make_settings(), fake, wait_ready=False) as (app, client):
        assert_error(await client.get("/readyz"), 503, "not_ready")
        response = await client.post("/classify", content=gray_png(1), headers={"content-type": "image/png"})
        assert_error(response, 503, "not_ready")
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        fake.gate.set()
        while app.state.server.phase is not Phase.READY:
            await asyncio.sleep(0.005)
        assert (await client.get("/readyz")).status_code == 200
        await assert_still_serving(client)


async def test_draining_is_503_and_every_answer_closes_its_connection() -> None:
    async with running_app(make_settings(), FakeClassifier()) as (app, client):
        assert "connection" not in (await client.get("/healthz")).headers  # kept alive
        state = app.state.server
        state.begin_draining()
        readyz = await client.get("/readyz")
        assert_error(readyz, 503, "draining")
        response = await client.post("/classify", content=gray_png(1), headers={"content-type": "image/png"})
        assert_error(response, 503, "draining")
        assert response.headers["retry-after"] == "1"
        healthz = await client.get("/healthz")
        assert healthz.status_code == 200
        # Once draining, each answer is its connection's last: the client sends nothing more on it.
        assert [r.headers["connection"] for r in (readyz, response, healthz)] == ["close"] * 3
        summary = state.drain.summary()
        assert summary == "3 answered (200: 1, 503: 2), 0 could not be written (connection gone)"
        text = (await client.get("/metrics")).text
        assert 'greenserve_drain_responses_total{status="503",written="true"} 2.0' in text
        assert 'greenserve_drain_responses_total{status="200",written="true"} 1.0' in text


async def test_a_response_whose_connection_was_lost_is_logged_and_counted_as_unwritten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The connection (service.connections) marks a request whose client went away before its
    answer was written: the access log and the drain's count say so instead of the status."""

    async def answered_after_the_client_left(scope: Any, receive: Any, send: Any) -> None:
        scope["state"][CONNECTION_LOST] = True  # as DrainAware*Protocol.connection_lost does
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with running_app(make_settings(access_log=True), FakeClassifier()) as (app, _):
        app.state.server.begin_draining()
        middleware = AccessLogMiddleware(answered_after_the_client_left)
        scope = {"type": "http", "app": app, "method": "POST", "path": "/classify", "headers": []}

        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            pass

        with caplog.at_level(logging.INFO, logger="greenserve.access"):
            await middleware(scope, receive, send)
        record = json.loads(caplog.records[-1].getMessage())
        assert record["status"] == 200 and record["written"] is False
        summary = app.state.server.drain.summary()
        assert summary == "0 answered (none), 1 could not be written (connection gone)"
        text = generate_latest(app.state.server.metrics.registry).decode()
        assert 'greenserve_drain_responses_total{status="200",written="false"} 1.0' in text


async def test_batching_settings_get_put_and_token() -> None:
    settings = make_settings(admin_token="s3cret", max_batch_size=8)
    async with running_app(settings, FakeClassifier()) as (_, client):
        assert (await client.get("/v1/batching")).json() == {
            "max_batch_size": 8,
            "max_wait_ms": 2.0,
            "max_queue": 1024,
            "batching": "static",
            "slo_p99_ms": None,
            "policy_state": {"target_batch_size": 8.0, "target_wait_seconds": 0.002},
        }
        assert_error(await client.put("/v1/batching", json={"max_batch_size": 4}), 401, "unauthorized")
        wrong = {"authorization": "Bearer nope"}
        assert_error(
            await client.put("/v1/batching", json={"max_batch_size": 4}, headers=wrong), 401, "unauthorized"
        )
        auth = {"authorization": "Bearer s3cret"}
        ok = await client.put("/v1/batching", json={"max_batch_size": 4, "max_wait_ms": 0}, headers=auth)
        assert {k: ok.json()[k] for k in ("max_batch_size", "max_wait_ms", "max_queue", "batching")} == {
            "max_batch_size": 4,
            "max_wait_ms": 0.0,
            "max_queue": 1024,
            "batching": "static",
        }
        # A latency-adaptive policy needs its objective; refused without, taken with one.
        no_slo = await client.put("/v1/batching", json={"batching": "latency-adaptive"}, headers=auth)
        assert_error(no_slo, 422, "invalid_parameter")
        assert (await client.get("/v1/batching")).json()["batching"] == "static"
        bad = await client.put("/v1/batching", json={"max_batch_size": 0}, headers=auth)
        assert_error(bad, 422, "invalid_parameter")
        unknown = await client.put("/v1/batching", json={"batch": 3}, headers=auth)
        assert_error(unknown, 422, "invalid_parameter")
        assert (await client.get("/v1/batching")).json()["max_batch_size"] == 4  # bad PUTs changed nothing
        metrics = (await client.get("/metrics")).text
        assert 'greenserve_batching_config{param="max_batch_size"} 4.0' in metrics
        assert 'greenserve_batching_config{param="max_wait_ms"} 0.0' in metrics
        assert 'greenserve_batching_config{param="max_wait_seconds"} 0.0' in metrics
        ok = await client.put("/v1/batching", json={"max_wait_ms": 250}, headers=auth)
        assert ok.json()["max_wait_ms"] == 250.0
        metrics = (await client.get("/metrics")).text
        assert 'greenserve_batching_config{param="max_wait_seconds"} 0.25' in metrics
        assert 'greenserve_batching_config{param="max_wait_ms"} 250.0' in metrics


async def test_model_info_health_and_unknown_route() -> None:
    async with running_app(make_settings(), FakeClassifier()) as (_, client):
        info = (await client.get("/v1/model")).json()
        assert info["name"] == "fake" and info["energy_source"] == "estimate" and info["energy_is_estimate"]
        assert info["labels"] == ["class-0", "class-1", "class-2", "class-3"]
        assert_error(await client.get("/nope"), 404, "not_found")
        assert_error(await client.get("/classify"), 405, "method_not_allowed")


async def test_metrics_follow_the_contract() -> None:
    async with running_app(make_settings(), FakeClassifier()) as (_, client):
        for tag in range(3):
            await assert_still_serving(client, tag)
        text = (await client.get("/metrics")).text
    for name in [
        "greenserve_requests_total",
        "greenserve_request_duration_seconds_bucket",
        "greenserve_queue_wait_seconds_bucket",
        "greenserve_batch_size_bucket",
        "greenserve_batch_duration_seconds_bucket",
        "greenserve_queue_depth",
        "greenserve_rejected_total",
        "greenserve_batch_energy_joules_total",
        "greenserve_request_energy_joules_bucket",
        "greenserve_device_energy_joules_total",
        "greenserve_power_watts",
        "greenserve_batching_config",
        "greenserve_model_info",
        "greenserve_build_info",
        "process_cpu_seconds_total",  # prometheus-client's process collector, on the server's registry
        "process_resident_memory_bytes",
        "python_info",  # and its platform collector
    ]:
        assert re.search(rf"^{name}[{{ ]", text, re.MULTILINE), name
    assert 'greenserve_requests_total{protocol="classify",status="200"} 3.0' in text
    cuda = torch.version.cuda or "none"
    build = f'greenserve_build_info{{cuda="{cuda}",torch="{torch.__version__}",version="{__version__}"}} 1.0'
    assert build in text
    # Batching settings in base units, and the wait in ms under its old name (dashboards use it).
    assert 'greenserve_batching_config{param="max_wait_seconds"} 0.002' in text
    assert 'greenserve_batching_config{param="max_wait_ms"} 2.0' in text
    assert 'greenserve_batching_config{param="max_batch_size"} 32.0' in text
    assert 'greenserve_model_info{device="cpu",model="fake",weights="none"} 1.0' in text
    assert 'greenserve_request_energy_joules_count{protocol="classify",source="estimate"} 3.0' in text
    # Only /classify counts as a request: the scrape above and /readyz polls do not.
    assert 'status="404"' not in text


async def test_grayscale_16bit_and_alpha_inputs_are_accepted() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 2, 0, 255)).save(buf, format="PNG")
    async with running_app(make_settings(), FakeClassifier()) as (_, client):
        response = await client.post(
            "/classify", content=buf.getvalue(), headers={"content-type": "image/png"}
        )
        assert response.status_code == 200
        assert response.json()["predictions"][0]["index"] == 2


class WrongShapeClassifier(FakeClassifier):
    def predict(self, batch):  # type: ignore[no-untyped-def]
        return super().predict(batch)[:, :2]  # fewer scores than labels


async def test_failed_warm_up_keeps_the_server_unready_with_the_reason() -> None:
    async with running_app(make_settings(), WrongShapeClassifier(), wait_ready=False) as (app, client):
        while app.state.server.phase is Phase.STARTING:
            await asyncio.sleep(0.005)
        error = assert_error(await client.get("/readyz"), 503, "not_ready")
        assert "warm-up failed" in error["message"] and "one score per label" in error["message"]
        response = await client.post("/classify", content=gray_png(1), headers={"content-type": "image/png"})
        assert_error(response, 503, "not_ready")


class CountingDecode:
    """Stands in for pipeline.decode_image: counts calls; after :meth:`hold_next`, the next call
    waits until ``release`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self._hold = False

    def hold_next(self) -> None:
        self._hold = True
        self.entered.clear()
        self.release.clear()

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        hold, self._hold = self._hold, False
        self.entered.set()
        if hold:
            self.release.wait(timeout=30)
        return imaging.decode_image(*args, **kwargs)


@pytest.fixture
def counting_decode(monkeypatch: pytest.MonkeyPatch) -> CountingDecode:
    decode = CountingDecode()
    monkeypatch.setattr(pipeline, "decode_image", decode)
    return decode


async def test_full_queue_refuses_before_reading_and_decoding(counting_decode: CountingDecode) -> None:
    fake = FakeClassifier()
    settings = make_settings(max_batch_size=1, max_queue=1, max_wait_ms=0)
    async with running_app(settings, fake) as (app, client):
        fake.gate.clear()
        fake.entered.clear()

        def post(body: bytes):  # type: ignore[no-untyped-def]
            return client.post("/classify", content=body, headers={"content-type": "image/png"})

        running = asyncio.create_task(post(gray_png(1)))
        await asyncio.to_thread(fake.entered.wait, 10)  # batch 1 holds the model
        queued = asyncio.create_task(post(gray_png(2)))
        while app.state.server.batcher.queue_depth < 1:
            await asyncio.sleep(0.001)
        calls = counting_decode.calls
        # Undecodable: a 400 if it were decoded. The full queue refuses it before that.
        rejected = await post(b"not an image")
        assert_error(rejected, 429, "queue_full")
        assert int(rejected.headers["retry-after"]) >= 1
        assert counting_decode.calls == calls
        fake.gate.set()
        assert (await running).status_code == 200 and (await queued).status_code == 200
        await assert_still_serving(client)  # max_queue is 1: no place was leaked
        assert app.state.server.batcher.reserved == 0


async def test_requests_being_decoded_count_toward_max_queue(counting_decode: CountingDecode) -> None:
    settings = make_settings(max_batch_size=1, max_queue=1, max_wait_ms=0)
    async with running_app(settings, FakeClassifier()) as (app, client):
        counting_decode.hold_next()
        decoding = asyncio.create_task(
            client.post("/classify", content=gray_png(1), headers={"content-type": "image/png"})
        )
        await asyncio.to_thread(counting_decode.entered.wait, 10)  # its image is being decoded
        assert app.state.server.batcher.queue_depth == 0
        rejected = await client.post("/classify", content=gray_png(2), headers={"content-type": "image/png"})
        assert_error(rejected, 429, "queue_full")
        assert counting_decode.calls == 1
        counting_decode.release.set()
        assert (await decoding).status_code == 200
        await assert_still_serving(client)


async def test_refused_requests_leak_no_queue_place() -> None:
    settings = make_settings(max_queue=1, max_body_bytes=2048, max_image_pixels=64)
    async with running_app(settings, FakeClassifier()) as (app, client):
        png = {"content-type": "image/png"}
        assert_error(await client.post("/classify", content=b"junk", headers=png), 400, "bad_image")
        big = b"\x89PNG" + b"\0" * 4096
        assert_error(await client.post("/classify", content=big, headers=png), 413, "body_too_large")
        huge = png_bytes(Image.new("L", (300, 300)))
        assert_error(await client.post("/classify", content=huge, headers=png), 413, "image_too_large")
        wrong = {"content-type": "image/svg+xml"}
        assert_error(
            await client.post("/classify", content=b"<svg/>", headers=wrong), 415, "unsupported_media_type"
        )
        no_file = await client.post("/classify", files={"image": ("x.png", gray_png(1), "image/png")})
        assert_error(no_file, 422, "invalid_parameter")
        timeout = {"x-request-timeout-ms": "-1", **png}
        assert_error(
            await client.post("/classify", content=gray_png(1), headers=timeout), 422, "invalid_parameter"
        )
        assert app.state.server.batcher.reserved == 0
        await assert_still_serving(client)  # max_queue is 1: every refused request gave its place back
