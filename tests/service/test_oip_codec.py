"""The Open Inference Protocol's codec against ``tritonclient``'s own encoder and decoder (bodies it
builds are read back exactly; bodies we build it reads), its refusals, and the in-process routes'
lifecycle and failure answers (not ready, draining, a model failure, a client gone) in the
protocol's error shape."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from service.errors import InferRequestError, PayloadTooLargeError
from service.oip import (
    OutputTensor,
    bytes_elements,
    classification_strings,
    decompress,
    encode_response,
    fp32_array,
    parse_request,
)
from service.state import Phase
from tests.conftest import gray_png, make_settings, png_bytes, running_app
from tests.fakes import POISON, FakeClassifier

http = pytest.importorskip("tritonclient.http")
InferInput, InferRequestedOutput = http.InferInput, http.InferRequestedOutput
generate = http.InferenceServerClient.generate_request_body
parse_response = http.InferenceServerClient.parse_response_body


def request_body(inputs: list[object], **kwargs: object) -> tuple[bytes, str | None]:
    body, json_size = generate(inputs, **kwargs)
    return body, None if json_size is None else str(json_size)


def test_binary_bytes_and_fp32_inputs_read_back_exactly() -> None:
    files = [b"\x89PNG first", b"", bytes(range(256))]
    image = InferInput("IMAGE", [3], "BYTES")
    image.set_data_from_numpy(np.array(files, dtype=object))
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    tensor = InferInput("IMAGE_TENSOR", [2, 3, 4], "FP32")
    tensor.set_data_from_numpy(values)
    body, header = request_body([image, tensor], request_id="r1", timeout=2500)
    parsed = parse_request(body, header)
    assert parsed.id == "r1" and parsed.timeout_us() == 2500
    assert parsed.outputs is None and parsed.binary_output  # no outputs named: all, in binary
    assert bytes_elements(parsed.inputs[0]) == files
    assert np.array_equal(fp32_array(parsed.inputs[1]), values)


def test_json_inputs_base64_bytes_and_nested_fp32() -> None:
    files = [b"\xff\xd8 a jpeg", b"png"]
    image = InferInput("IMAGE", [2, 1], "BYTES")
    image.set_data_from_numpy(
        np.array([[base64.b64encode(f)] for f in files], dtype=object), binary_data=False
    )
    values = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    tensor = InferInput("IMAGE_TENSOR", [2, 4], "FP32")
    tensor.set_data_from_numpy(values, binary_data=False)
    outputs = [InferRequestedOutput("SCORES", binary_data=False, class_count=2)]
    body, header = request_body([image, tensor], outputs=outputs)
    assert header is None  # all JSON
    parsed = parse_request(body, header)
    assert bytes_elements(parsed.inputs[0]) == files
    assert np.allclose(fp32_array(parsed.inputs[1]), values)
    assert parsed.outputs is not None and parsed.outputs[0].classification == 2
    assert parsed.outputs[0].binary is False
    # Nested JSON data, and base64 without its padding, read the same.
    nested = {
        "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [2, 1], "data": [["cG5n"], ["cG5"]]}]
    }
    assert bytes_elements(parse_request(json.dumps(nested).encode(), None).inputs[0]) == [b"png", b"pn"]


@pytest.mark.parametrize("binary", [True, False])
def test_responses_are_read_by_tritonclient(binary: bool) -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    strings = classification_strings(scores, ["a", "b", "c"], 2)
    assert strings == [b"0.700000:1:b", b"0.200000:2:c", b"0.500000:0:a", b"0.250000:1:b"]
    body, json_size = encode_response(
        model_name="m",
        model_version="1",
        request_id="x",
        outputs=[
            OutputTensor("SCORES", "FP32", (2, 3), scores, binary),
            OutputTensor("TOP", "BYTES", (2, 2), strings, binary),
        ],
        parameters={"energy_j": 0.5, "energy_source": "estimate"},
    )
    assert (json_size is not None) == binary
    result = parse_response(body, header_length=json_size)
    assert np.array_equal(result.as_numpy("SCORES"), scores)
    # (tritonclient gives a JSON tensor's strings as str, a binary one's as bytes)
    top = [
        [v.decode() if isinstance(v, bytes) else v for v in row] for row in result.as_numpy("TOP").tolist()
    ]
    assert top == [["0.700000:1:b", "0.200000:2:c"], ["0.500000:0:a", "0.250000:1:b"]]
    response = result.get_response()
    assert response["id"] == "x" and response["parameters"]["energy_j"] == 0.5


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


IMAGE_OK = {"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["cG5n"]}


@pytest.mark.parametrize(
    ("body", "header", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (_json({"inputs": []}), None, "non-empty list"),
        (_json({"inputs": [{**IMAGE_OK, "datatype": "TEXT"}]}), None, "unknown datatype"),
        (_json({"inputs": [{**IMAGE_OK, "shape": [-1]}]}), None, "non-negative integers"),
        (_json({"inputs": [{k: v for k, v in IMAGE_OK.items() if k != "data"}]}), None, "neither 'data'"),
        (_json({"inputs": [{**IMAGE_OK, "shape": [2]}]}), None, "holds 2 elements, the data has 1"),
        (_json({"inputs": [{**IMAGE_OK, "data": [5]}]}), None, "base64 string"),
        (_json({"inputs": [{**IMAGE_OK, "data": ["!!!"]}]}), None, "not base64"),
        (_json({"inputs": [IMAGE_OK], "parameters": {"timeout": -3}}), None, "positive integer"),
        (
            _json({"inputs": [IMAGE_OK], "outputs": [{"name": "S", "parameters": {"classification": -1}}]}),
            None,
            "count",
        ),
        (
            _json({"inputs": [{**IMAGE_OK, "parameters": {"shared_memory_region": "r"}}]}),
            None,
            "shared memory",
        ),
        (_json({"inputs": [IMAGE_OK]}), "x", "byte count"),
        (_json({"inputs": [IMAGE_OK]}), "9999", "exceeds the body"),
        (_json({"inputs": [IMAGE_OK]}) + b"extra", "0", "not valid JSON"),
    ],
)
def test_malformed_requests_are_refused_by_name(body: bytes, header: str | None, fragment: str) -> None:
    with pytest.raises(InferRequestError, match=fragment) as raised:
        request = parse_request(body, header)
        for tensor in request.inputs:
            bytes_elements(tensor)
        request.timeout_us()
    assert raised.value.status_code == 400


def test_binary_data_must_match_what_the_inputs_claim() -> None:
    def binary(
        size: int, data: bytes, datatype: str = "BYTES", shape: list[int] | None = None
    ) -> tuple[bytes, str]:
        tensor = {
            "name": "X",
            "datatype": datatype,
            "shape": shape or [1],
            "parameters": {"binary_data_size": size},
        }
        header = _json({"inputs": [tensor]})
        return header + data, str(len(header))

    with pytest.raises(InferRequestError, match="runs past"):
        parse_request(*binary(10, b"short"))
    with pytest.raises(InferRequestError, match="no input claims"):
        parse_request(*binary(2, b"abcd"))
    with pytest.raises(InferRequestError, match="cut short"):
        bytes_elements(parse_request(*binary(2, b"ab")).inputs[0])
    with pytest.raises(InferRequestError, match="runs past the input"):
        bytes_elements(parse_request(*binary(6, b"\x09\x00\x00\x00ab")).inputs[0])
    with pytest.raises(InferRequestError, match="needs 8 bytes"):
        fp32_array(parse_request(*binary(4, b"\x00" * 4, "FP32", [2])).inputs[0])
    with pytest.raises(InferRequestError, match="finite"):
        fp32_array(
            parse_request(*binary(4, np.array([np.nan], dtype="<f4").tobytes(), "FP32", [1])).inputs[0]
        )


def test_compressed_bodies_are_read_within_the_limit() -> None:
    data = b"x" * 5000
    assert decompress(gzip.compress(data), "gzip", 10_000) == data
    assert decompress(zlib.compress(data), "deflate", 10_000) == data
    assert decompress(data, None, 10) == data  # identity: the body's own limit applies before
    with pytest.raises(PayloadTooLargeError):
        decompress(gzip.compress(b"\0" * 1_000_000), "gzip", 10_000)  # a small body, a large expansion
    with pytest.raises(InferRequestError, match="not supported"):
        decompress(data, "br", 10_000)
    with pytest.raises(InferRequestError, match="not valid gzip"):
        decompress(b"plain", "gzip", 10_000)
    with pytest.raises(InferRequestError, match="truncated"):
        decompress(gzip.compress(data)[:-10], "gzip", 10_000)


# --- the routes in-process (FakeClassifier: 4 classes, its item is [tag, poison]) ---------------------


def infer_body(*pngs: bytes) -> dict[str, object]:
    data = [base64.b64encode(p).decode() for p in pngs]
    return {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(pngs)], "data": data}]}


def assert_protocol_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and fragment in response.json()["error"], response.text
    assert response.headers["x-request-id"]


@pytest.mark.asyncio
async def test_model_failure_is_500_for_its_request_only_and_the_server_keeps_serving() -> None:
    poison = png_bytes(Image.new("RGB", (8, 8), POISON))
    async with running_app(make_settings(max_batch_size=4), FakeClassifier()) as (_, client):
        answer = await client.post("/v2/models/fake/infer", json=infer_body(gray_png(1), poison))
        assert_protocol_error(answer, 500, "fake model failure")
        fine = await client.post("/v2/models/fake/infer", json=infer_body(gray_png(1), gray_png(3)))
        assert fine.status_code == 200, fine.text
        scores = fine.json()["outputs"][0]
        assert scores["shape"] == [2, 4] and scores["datatype"] == "FP32"
        values = np.array(scores["data"]).reshape(2, 4)
        assert values.argmax(axis=1).tolist() == [1, 3]
        text = (await client.get("/metrics")).text
        assert 'greenserve_requests_total{protocol="v2",status="500"} 1.0' in text
        assert 'greenserve_images_total{protocol="v2"} 2.0' in text


@pytest.mark.asyncio
async def test_not_ready_and_draining_are_503_in_the_protocols_shape() -> None:
    fake = FakeClassifier()
    fake.gate.clear()  # warm-up blocks in predict
    async with running_app(make_settings(), fake, wait_ready=False) as (app, client):
        assert (await client.get("/v2/health/live")).status_code == 200
        assert_protocol_error(await client.get("/v2/health/ready"), 503, "warming up")
        assert_protocol_error(await client.get("/v2/models/fake/ready"), 503, "warming up")
        answer = await client.post("/v2/models/fake/infer", json=infer_body(gray_png(1)))
        assert_protocol_error(answer, 503, "warming up")
        fake.gate.set()
        while app.state.server.phase is not Phase.READY:
            await asyncio.sleep(0.005)
        assert (await client.get("/v2/health/ready")).status_code == 200
        app.state.server.begin_draining()
        assert_protocol_error(await client.get("/v2/health/ready"), 503, "shutting down")
        draining = await client.post("/v2/models/fake/infer", json=infer_body(gray_png(1)))
        assert_protocol_error(draining, 503, "shutting down")
        assert draining.headers["retry-after"] == "1"


@pytest.mark.asyncio
async def test_more_images_than_max_batch_size_is_400_and_a_bad_timeout_header_too() -> None:
    async with running_app(make_settings(max_batch_size=2), FakeClassifier()) as (_, client):
        too_many = await client.post(
            "/v2/models/fake/infer", json=infer_body(*(gray_png(i) for i in range(3)))
        )
        assert_protocol_error(too_many, 400, "batch-size must be <= 2")
        bad = await client.post(
            "/v2/models/fake/infer", json=infer_body(gray_png(1)), headers={"X-Request-Timeout-Ms": "soon"}
        )
        assert_protocol_error(bad, 400, "X-Request-Timeout-Ms")
        both = {
            "inputs": [
                *infer_body(gray_png(1))["inputs"],
                {"name": "IMAGE_TENSOR", "datatype": "FP32", "shape": [1, 2], "data": [1, 0]},
            ]
        }  # type: ignore[list-item]
        assert_protocol_error(await client.post("/v2/models/fake/infer", json=both), 400, "not both")
        tensor = {"inputs": [{"name": "IMAGE_TENSOR", "datatype": "FP32", "shape": [1, 2], "data": [3, 0]}]}
        answer = await client.post("/v2/models/fake/infer", json=tensor)
        assert answer.status_code == 200, answer.text
        assert np.argmax(answer.json()["outputs"][0]["data"]) == 3


@pytest.mark.asyncio
async def test_an_expired_deadline_fails_the_request_and_none_of_its_items_is_computed() -> None:
    """Three images queue behind a held batch with a 30 ms deadline: 504, none of the three is
    computed once the model is free, and no queue place is left taken."""
    fake = FakeClassifier()
    async with running_app(make_settings(max_batch_size=4, max_wait_ms=0), fake) as (app, client):
        fake.gate.clear()
        fake.entered.clear()
        running = asyncio.create_task(
            client.post("/classify", content=gray_png(1), headers={"content-type": "image/png"})
        )
        await asyncio.to_thread(fake.entered.wait, 10)
        late = await client.post(
            "/v2/models/fake/infer",
            json=infer_body(gray_png(71), gray_png(72), gray_png(73)),
            headers={"x-request-timeout-ms": "30"},
        )
        assert_protocol_error(late, 504, "deadline")
        fake.gate.set()
        assert (await running).status_code == 200
        fine = await client.post("/v2/models/fake/infer", json=infer_body(gray_png(2)))
        assert fine.status_code == 200
        assert not {71, 72, 73} & set(fake.computed), fake.computed
        batcher = app.state.server.batcher
        assert batcher.queue_depth == 0 and batcher.reserved == 0  # no place leaked
