"""The Open Inference Protocol (v2) spoken to a real server by the real ``tritonclient`` (its HTTP and
asyncio clients, as users call them): metadata consistent with ``/v1/model``, digits classified
through the BYTES input in binary and JSON and through the FP32 input, infer requests batched with
each other, errors in the protocol's shape with the server still ready, 429 and 504 as on
``/classify``, and the energy in the answer and in the metrics."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from service import digits
from tests.conftest import ServerProcess, png_bytes, server_process
from tests.service.test_server import metric

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput  # noqa: E402
from tritonclient.http.aio import InferenceServerClient as AsyncClient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.server
MODEL = "digits_cnn"
COUNT = 16
BODY_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    flags = ["--max-wait-ms", "30", "--infer-max-body-bytes", str(BODY_LIMIT), "--torch-threads", "1"]
    with server_process(tmp_path_factory.mktemp("oip"), *flags) as process:
        yield process


@pytest.fixture(scope="module")
def samples() -> tuple[list[bytes], np.ndarray, list[int]]:
    """COUNT held-out digits: their PNG files, their preprocessed tensors, their labels."""
    split = digits.load_split()
    images = [Image.fromarray(digits.to_png_pixels(x)) for x in split.x_test[:COUNT]]
    tensors = torch.stack([digits.preprocess(image) for image in images]).numpy()
    return [png_bytes(image) for image in images], tensors, [int(y) for y in split.y_test[:COUNT]]


def client(server: ServerProcess) -> InferenceServerClient:
    return InferenceServerClient(server.url.removeprefix("http://"))


def image_input(pngs: list[bytes], *, binary: bool = True) -> InferInput:
    inp = InferInput("IMAGE", [len(pngs)], "BYTES")
    if binary:
        inp.set_data_from_numpy(np.array(pngs, dtype=object))
    else:  # JSON: each element a UTF-8 string, the file base64-encoded
        inp.set_data_from_numpy(
            np.array([base64.b64encode(p) for p in pngs], dtype=object), binary_data=False
        )
    return inp


def assert_still_ready(server: ServerProcess) -> None:
    c = client(server)
    assert c.is_server_ready() and c.is_model_ready(MODEL)


def test_live_ready_metadata_and_config_agree_with_v1_model(server: ServerProcess) -> None:
    c = client(server)
    v1 = httpx.get(f"{server.url}/v1/model").json()
    batching = httpx.get(f"{server.url}/v1/batching").json()
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(MODEL) and c.is_model_ready(MODEL, "1")
    assert not c.is_model_ready("resnet50")
    server_meta = c.get_server_metadata()
    assert server_meta["name"] == "greenserve"
    assert {"binary_tensor_data", "classification", "model_configuration"} <= set(server_meta["extensions"])

    meta = c.get_model_metadata(MODEL)
    assert meta == c.get_model_metadata(MODEL, "1")
    assert meta["name"] == v1["name"] == MODEL and meta["versions"] == ["1"]
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["IMAGE"] == {"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}
    assert inputs["IMAGE_TENSOR"]["datatype"] == "FP32" and inputs["IMAGE_TENSOR"]["shape"] == [-1, 1, 8, 8]
    assert meta["outputs"] == [{"name": "SCORES", "datatype": "FP32", "shape": [-1, v1["classes"]]}]
    assert "base64" in meta["parameters"]["image_encoding"]
    assert meta["parameters"]["weights"] == v1["weights"] and meta["parameters"]["device"] == v1["device"]

    config = c.get_model_config(MODEL)
    assert config["name"] == MODEL and config["max_batch_size"] == batching["max_batch_size"]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == round(batching["max_wait_ms"] * 1000)
    assert config["output"][0]["dims"] == [len(v1["labels"])]
    assert {i["name"] for i in config["input"]} == {"IMAGE", "IMAGE_TENSOR"}


def test_digits_through_bytes_binary_and_json_and_fp32_agree_with_classify(
    server: ServerProcess, samples: tuple[list[bytes], np.ndarray, list[int]]
) -> None:
    pngs, tensors, labels = samples
    c = client(server)
    binary = c.infer(MODEL, [image_input(pngs)])  # tritonclient's defaults: binary in and out
    scores = binary.as_numpy("SCORES")
    assert scores.shape == (COUNT, 10) and scores.dtype == np.float32
    assert np.allclose(scores.sum(axis=1), 1, atol=1e-4)
    predicted = scores.argmax(axis=1).tolist()
    assert sum(p == y for p, y in zip(predicted, labels, strict=True)) >= COUNT - 1, (predicted, labels)
    parameters = binary.get_response()["parameters"]
    assert parameters["energy_source"] == "estimate" and parameters["energy_j"] > 0
    assert parameters["energy_idle_included"] is False

    as_json = c.infer(
        MODEL, [image_input(pngs, binary=False)], outputs=[InferRequestedOutput("SCORES", binary_data=False)]
    )
    assert "data" in as_json.get_response()["outputs"][0]  # answered as a JSON tensor
    assert np.allclose(as_json.as_numpy("SCORES"), scores, atol=1e-6)

    fp32 = InferInput("IMAGE_TENSOR", list(tensors.shape), "FP32")
    fp32.set_data_from_numpy(tensors)
    assert np.allclose(c.infer(MODEL, [fp32]).as_numpy("SCORES"), scores, atol=1e-5)
    fp32_json = InferInput("IMAGE_TENSOR", list(tensors.shape), "FP32")
    fp32_json.set_data_from_numpy(tensors, binary_data=False)
    assert np.allclose(c.infer(MODEL, [fp32_json], model_version="1").as_numpy("SCORES"), scores, atol=1e-5)

    # [-1, 1] is the same input; gzip request bodies are read as tritonclient sends them.
    column = InferInput("IMAGE", [COUNT, 1], "BYTES")
    column.set_data_from_numpy(np.array(pngs, dtype=object).reshape(COUNT, 1))
    assert np.allclose(
        c.infer(MODEL, [column], request_compression_algorithm="gzip").as_numpy("SCORES"), scores
    )

    # The same top class as /classify gives each file.
    for png, top in zip(pngs[:4], predicted[:4], strict=True):
        answer = httpx.post(
            f"{server.url}/classify", content=png, headers={"content-type": "image/png"}
        ).json()
        assert answer["predictions"][0]["index"] == top

    # The classification extension: the top k as "score:index:label".
    top3 = c.infer(MODEL, [image_input(pngs[:2])], outputs=[InferRequestedOutput("SCORES", class_count=3)])
    strings = top3.as_numpy("SCORES")
    assert strings.shape == (2, 3)
    score, index, label = strings[0][0].decode().split(":")
    assert int(index) == predicted[0] and label == str(predicted[0])
    assert abs(float(score) - scores[0, predicted[0]]) < 1e-5


def test_concurrent_single_image_requests_share_batches(
    server: ServerProcess, samples: tuple[list[bytes], np.ndarray, list[int]]
) -> None:
    pngs, _, _ = samples
    before = httpx.get(f"{server.url}/metrics").text

    async def send_all() -> list[np.ndarray]:
        async with AsyncClient(server.url.removeprefix("http://")) as aio:
            results = await asyncio.gather(*(aio.infer(MODEL, [image_input([p])]) for p in pngs))
        return [r.as_numpy("SCORES") for r in results]

    answers = asyncio.run(send_all())
    assert all(a.shape == (1, 10) for a in answers)
    after = httpx.get(f"{server.url}/metrics").text
    batches = metric(after, "greenserve_batch_size_count") - metric(before, "greenserve_batch_size_count")
    items = metric(after, "greenserve_batch_size_sum") - metric(before, "greenserve_batch_size_sum")
    assert items == COUNT and batches < COUNT, (items, batches)  # some batch held more than one request
    served = '{protocol="v2"}'
    assert (
        metric(after, "greenserve_images_total", served) - metric(before, "greenserve_images_total", served)
        == COUNT
    )
    ok = '{protocol="v2",status="200"}'
    assert (
        metric(after, "greenserve_requests_total", ok) - metric(before, "greenserve_requests_total", ok)
        == COUNT
    )


def test_answered_energy_adds_up_to_the_metrics(
    server: ServerProcess, samples: tuple[list[bytes], np.ndarray, list[int]]
) -> None:
    pngs, _, _ = samples
    name = "greenserve_request_energy_joules_sum"
    labels = '{protocol="v2",source="estimate"}'
    before = metric(httpx.get(f"{server.url}/metrics").text, name, labels)
    energies = [
        client(server).infer(MODEL, [image_input(pngs[:n])]).get_response()["parameters"]["energy_j"]
        for n in (1, 4, 8)
    ]
    after = metric(httpx.get(f"{server.url}/metrics").text, name, labels)
    assert after - before == pytest.approx(sum(energies), rel=1e-9)


def expect_error(status: int, call: object, *args: object, **kwargs: object) -> str:
    """The message of the protocol error ``call`` raises (tritonclient reads {"error": …})."""
    assert callable(call)
    with pytest.raises(InferenceServerException) as raised:
        call(*args, **kwargs)
    assert raised.value.status() == str(status), (raised.value.status(), raised.value.message())
    return str(raised.value.message())


def test_bad_requests_are_clear_4xx_in_the_protocols_shape_and_the_server_stays_ready(
    server: ServerProcess, samples: tuple[list[bytes], np.ndarray, list[int]]
) -> None:
    pngs, tensors, _ = samples
    c = client(server)
    garbage = expect_error(400, c.infer, MODEL, [image_input([pngs[0], b"not an image"])])
    assert "image" in garbage
    wrong_type = InferInput("IMAGE", [1], "INT32")
    wrong_type.set_data_from_numpy(np.array([1], dtype=np.int32))
    assert "datatype INT32" in expect_error(400, c.infer, MODEL, [wrong_type])
    wrong_shape = InferInput("IMAGE", [1, 2], "BYTES")
    wrong_shape.set_data_from_numpy(np.array([pngs[:2]], dtype=object))
    assert "shape [1, 2]" in expect_error(400, c.infer, MODEL, [wrong_shape])
    bad_tensor = InferInput("IMAGE_TENSOR", [2, 8, 8], "FP32")
    bad_tensor.set_data_from_numpy(tensors[:2, 0])
    assert "expected [-1, 1, 8, 8]" in expect_error(400, c.infer, MODEL, [bad_tensor])
    assert "unknown model" in expect_error(404, c.infer, "resnet50", [image_input(pngs[:1])])
    assert "unknown model" in expect_error(404, c.get_model_metadata, "resnet50")
    assert "version" in expect_error(404, c.infer, MODEL, [image_input(pngs[:1])], model_version="2")
    unknown_output = [InferRequestedOutput("LOGITS")]
    assert "LOGITS" in expect_error(400, c.infer, MODEL, [image_input(pngs[:1])], outputs=unknown_output)
    huge = image_input([b"\x89PNG" + bytes(BODY_LIMIT)])
    assert "exceeds the limit" in expect_error(413, c.infer, MODEL, [huge])
    # The body itself, as any client sees it: the protocol's {"error": "<message>"} and no more.
    raw = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=b"{not json")
    assert raw.status_code == 400 and set(raw.json()) == {"error"} and isinstance(raw.json()["error"], str)
    assert httpx.get(f"{server.url}/v2/nowhere").json() == {"error": "Not Found"}
    assert_still_ready(server)
    assert client(server).infer(MODEL, [image_input(pngs[:2])]).as_numpy("SCORES").shape == (2, 10)


def test_full_queue_is_429_and_an_expired_timeout_504_as_on_classify(
    server: ServerProcess, samples: tuple[list[bytes], np.ndarray, list[int]]
) -> None:
    pngs, _, _ = samples
    c = client(server)
    original = httpx.get(f"{server.url}/v1/batching").json()["max_queue"]
    assert httpx.put(f"{server.url}/v1/batching", json={"max_queue": 4}).status_code == 200
    try:
        # Eight images need eight places: refused whole, before any is decoded.
        assert "queue is full" in expect_error(429, c.infer, MODEL, [image_input(pngs[:8])])
        assert c.infer(MODEL, [image_input(pngs[:4])]).as_numpy("SCORES").shape == (4, 10)
    finally:
        httpx.put(f"{server.url}/v1/batching", json={"max_queue": original}).raise_for_status()
    # tritonclient's timeout is in µs: 1 µs has passed before the request is queued.
    assert "deadline" in expect_error(504, c.infer, MODEL, [image_input(pngs[:2])], timeout=1)
    assert "deadline" in expect_error(
        504, c.infer, MODEL, [image_input(pngs[:2])], headers={"X-Request-Timeout-Ms": "0.001"}
    )
    assert "timeout" in expect_error(400, c.infer, MODEL, [image_input(pngs[:1])], timeout=0)
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "greenserve_requests_total", '{protocol="v2",status="429"}') >= 1
    assert metric(text, "greenserve_requests_total", '{protocol="v2",status="504"}') >= 2
    assert re.search(r'greenserve_rejected_total\{reason="deadline"\} [1-9]', text)
    assert_still_ready(server)
