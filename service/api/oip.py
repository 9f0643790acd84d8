"""The Open Inference Protocol's REST routes (KServe v2; Triton's HTTP API with its binary tensor data,
classification and model configuration extensions), beside greenserve's own API.

The model takes one of two inputs and gives one output:

- ``IMAGE``, ``BYTES``, shape ``[-1]`` (or ``[-1, 1]``): one encoded image per element (PNG, JPEG, …
  as the file is; base64 in a JSON tensor), decoded with the limits of ``/classify``;
- ``IMAGE_TENSOR``, ``FP32``, ``[-1, C, H, W]``: images the client preprocessed as the model does;
- ``SCORES``, ``FP32``, ``[-1, classes]``: every class's probability; or, with the classification
  extension (``"classification": k``), ``BYTES`` ``[-1, k]`` strings ``"score:index:label"``.

An infer request goes the request path of ``/classify`` (:meth:`service.pipeline.Pipeline.infer`):
each element is an item of the same batcher (sharing batches with ``/classify`` traffic), under the
same deadline (the ``timeout`` parameter in µs or ``X-Request-Timeout-Ms``; the earlier wins), the
same admission (a place per element: 429 when the queue cannot take them all, before any is
decoded), the same drain, and its energy composed per item; the answer's ``parameters`` carry
``energy_j`` (all its items), ``energy_source`` and ``energy_idle_included``. Errors are the
protocol's ``{"error": "…"}`` (:mod:`service.api.errors`).
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Header, Request, Response

from greenserve import __version__
from service.api.common import check_serving, deadline_from, read_body, unless_disconnected
from service.api.deps import StateDep
from service.api.errors import OIP_ROOT
from service.api.middleware import CLASSIFICATION
from service.errors import (
    InferRequestError,
    InvalidParameterError,
    NotFoundError,
    NotReadyError,
)
from service.oip import (
    InferRequest,
    OutputRequest,
    OutputTensor,
    bytes_elements,
    classification_strings,
    decompress,
    encode_response,
    fp32_array,
    parse_request,
)
from service.pipeline import Inference
from service.state import Phase, ServerState

router = APIRouter(prefix=OIP_ROOT, tags=["Open Inference Protocol (v2)"])

SERVER_NAME = "greenserve"
MODEL_VERSION = "1"
IMAGE, IMAGE_TENSOR, SCORES = "IMAGE", "IMAGE_TENSOR", "SCORES"
#: The protocol extensions spoken (Triton's names).
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]
#: What the model metadata's and configuration's parameters say of the IMAGE input.
IMAGE_ENCODING = (
    "one encoded image (PNG, JPEG, GIF, BMP, TIFF, WebP, PPM) per element: in the binary tensor data "
    "extension the file's bytes, in a JSON tensor the file base64-encoded"
)
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
_ERROR: dict[str, Any] = {
    "description": 'the protocol\'s error: {"error": "<message>"}',
    "content": {
        JSON_TYPE: {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
        }
    },
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "The inference response: JSON, or with binary outputs the JSON header of "
            "Inference-Header-Content-Length bytes followed by the outputs' bytes."
        ),
        "content": {
            JSON_TYPE: {"schema": {"type": "object"}},
            BINARY_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    },
    **{status: _ERROR for status in (400, 404, 413, 429, 500, 503, 504)},
}
_INFER_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        'An inference request: JSON ({"inputs": [{"name", "datatype", "shape", "data"}], '
        '"outputs", "parameters"}), or with the binary tensor data extension the JSON header of '
        "Inference-Header-Content-Length bytes followed by the inputs' binary data."
    ),
    "content": {
        JSON_TYPE: {"schema": {"type": "object"}},
        BINARY_TYPE: {"schema": {"type": "string", "format": "binary"}},
    },
}


def _model(state: ServerState, name: str, version: str | None = None) -> None:
    """404 unless ``name`` (and ``version``) is the model served."""
    served = state.engine.classifier.name
    if name != served:
        raise NotFoundError(f"unknown model '{name}': this server serves '{served}'")
    if version is not None and version != MODEL_VERSION:
        raise NotFoundError(
            f"unknown version '{version}' of model '{name}': its one version is '{MODEL_VERSION}'"
        )


def _metadata(state: ServerState) -> dict[str, Any]:
    classifier = state.engine.classifier
    classes = len(classifier.labels)
    return {
        "name": classifier.name,
        "versions": [MODEL_VERSION],
        "platform": "pytorch_libtorch",
        "inputs": [
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": IMAGE_TENSOR, "datatype": "FP32", "shape": [-1, *state.pipeline.item_shape]},
        ],
        "outputs": [{"name": SCORES, "datatype": "FP32", "shape": [-1, classes]}],
        "parameters": {
            "image_encoding": IMAGE_ENCODING,
            "inputs": f"send one of {IMAGE} and {IMAGE_TENSOR}; {IMAGE} may also be shaped [-1, 1]",
            "scores": "class probabilities (softmax); 'classification': k gives 'score:index:label' strings",
            "max_batch_size": state.batcher.config.max_batch_size,
            "weights": classifier.weights,
            "device": classifier.device,
        },
    }


def _queue_delay_us(state: ServerState) -> int:
    """The current queue delay: the static policy's wait, an adaptive policy's target wait."""
    config = state.batcher.config
    if config.policy == "static":
        return round(config.max_wait_ms * 1000)
    wait_s = state.batcher.policy.describe().get("target_wait_seconds", math.nan)
    return round(wait_s * 1e6) if math.isfinite(wait_s) else 0


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    """Name, version and the protocol extensions spoken."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


@router.get(
    "/health/live", summary="Server live", response_class=Response, responses={200: {"description": "live"}}
)
async def live() -> Response:
    """200 while the process answers."""
    return Response(status_code=200)


@router.get("/health/ready", summary="Server ready", response_class=Response, responses={503: _ERROR})
async def ready(request: Request) -> Response:
    """200 once the model is loaded and warmed, 503 while starting, failed or draining (as /readyz)."""
    _ready(request)
    return Response(status_code=200)


def _ready(request: Request) -> ServerState:
    state = getattr(request.app.state, "server", None)
    if state is None:
        raise NotReadyError("server is starting")
    assert isinstance(state, ServerState)
    if state.phase is not Phase.READY:
        check_serving(state)  # draining or not ready: 503
    return state


@router.get("/models/{model}", summary="Model metadata", responses={404: _ERROR, 503: _ERROR})
async def model_metadata(model: str, state: StateDep) -> dict[str, Any]:
    _model(state, model)
    return _metadata(state)


@router.get(
    "/models/{model}/versions/{version}",
    summary="Model metadata (a version)",
    responses={404: _ERROR, 503: _ERROR},
)
async def model_version_metadata(model: str, version: str, state: StateDep) -> dict[str, Any]:
    _model(state, model, version)
    return _metadata(state)


@router.get(
    "/models/{model}/ready",
    summary="Model ready",
    response_class=Response,
    responses={404: _ERROR, 503: _ERROR},
)
async def model_ready(model: str, request: Request) -> Response:
    state = _ready(request)
    _model(state, model)
    return Response(status_code=200)


@router.get(
    "/models/{model}/versions/{version}/ready",
    summary="Model ready (a version)",
    response_class=Response,
    responses={404: _ERROR, 503: _ERROR},
)
async def model_version_ready(model: str, version: str, request: Request) -> Response:
    state = _ready(request)
    _model(state, model, version)
    return Response(status_code=200)


@router.get(
    "/models/{model}/config",
    summary="Model configuration (Triton's extension)",
    responses={404: _ERROR, 503: _ERROR},
)
async def model_config(model: str, state: StateDep) -> dict[str, Any]:
    """Triton's model configuration: dims without the batch dimension (``max_batch_size`` > 0)."""
    _model(state, model)
    classifier = state.engine.classifier
    return {
        "name": classifier.name,
        "platform": "pytorch_libtorch",
        "backend": "pytorch",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": state.batcher.config.max_batch_size,
        "input": [
            # dims [1] reshaped to []: a batch of single images is shape [-1] (or [-1, 1]).
            {
                "name": IMAGE,
                "data_type": "TYPE_STRING",
                "format": "FORMAT_NONE",
                "dims": [1],
                "reshape": {"shape": []},
            },
            {
                "name": IMAGE_TENSOR,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NCHW",
                "dims": list(state.pipeline.item_shape),
            },
        ],
        "output": [
            {"name": SCORES, "data_type": "TYPE_FP32", "dims": [len(classifier.labels)], "label_filename": ""}
        ],
        "dynamic_batching": {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": _queue_delay_us(state),
            "default_queue_policy": {"max_queue_size": state.batcher.config.max_queue},
        },
        "instance_group": [
            {"count": state.settings.max_concurrent_batches, "kind": _kind(classifier.device)}
        ],
        "parameters": {
            "batching_policy": {"string_value": state.batcher.config.policy},
            "image_encoding": {"string_value": IMAGE_ENCODING},
        },
    }


def _kind(device: str) -> str:
    return "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"


@router.post(
    "/models/{model}/infer",
    summary="Infer",
    responses=_INFER_RESPONSES,
    openapi_extra={"requestBody": _INFER_BODY},
)
async def infer(
    model: str,
    request: Request,
    state: StateDep,
    inference_header_content_length: Annotated[str | None, Header()] = None,
    x_request_timeout_ms: Annotated[str | None, Header()] = None,
) -> Response:
    """Classify a batch of images (``IMAGE``) or preprocessed tensors (``IMAGE_TENSOR``)."""
    return await _infer(model, None, request, state, inference_header_content_length, x_request_timeout_ms)


@router.post(
    "/models/{model}/versions/{version}/infer",
    summary="Infer (a version)",
    responses=_INFER_RESPONSES,
    openapi_extra={"requestBody": _INFER_BODY},
)
async def infer_version(
    model: str,
    version: str,
    request: Request,
    state: StateDep,
    inference_header_content_length: Annotated[str | None, Header()] = None,
    x_request_timeout_ms: Annotated[str | None, Header()] = None,
) -> Response:
    return await _infer(model, version, request, state, inference_header_content_length, x_request_timeout_ms)


async def _infer(
    model: str,
    version: str | None,
    request: Request,
    state: ServerState,
    header_length: str | None,
    timeout_ms: str | None,
) -> Response:
    arrival = time.monotonic()
    check_serving(state)
    _model(state, model, version)
    try:
        deadline = deadline_from(state, arrival, None if timeout_ms is None else float(timeout_ms))
    except ValueError as exc:
        raise InferRequestError(f"X-Request-Timeout-Ms must be a number, got {timeout_ms!r}") from exc
    except InvalidParameterError as exc:  # out of range: 400 here, as the protocol answers it
        raise InferRequestError(exc.message) from exc
    pipeline = state.pipeline
    limit = state.settings.infer_max_body_bytes
    with ExitStack() as places:
        # As /classify: a place in the queue before the body is read (429 unread), the others once
        # the request says how many images it carries.
        admissions = [places.enter_context(pipeline.reserve())]
        body = decompress(await read_body(request, limit), request.headers.get("content-encoding"), limit)
        parsed = parse_request(body, header_length)
        timeout_us = parsed.timeout_us()
        if timeout_us is not None:
            deadline = min(deadline, arrival + timeout_us / 1e6)
        images, tensors, count = _inputs(parsed, state)
        outputs = _outputs(parsed)
        admissions += [places.enter_context(pipeline.reserve()) for _ in range(count - 1)]
        answer = await unless_disconnected(
            request, pipeline.infer(images=images, tensors=tensors, deadline=deadline, admissions=admissions)
        )
    request.scope["state"][CLASSIFICATION] = answer  # the access middleware records it in the metrics
    request.scope["state"]["log_extra"] = {
        "images": answer.images,
        "batch_size": max(answer.batch_sizes),
        "energy_j": answer.energy.joules,
        "energy_source": answer.energy_source,
    }
    body, json_size = encode_response(
        model_name=answer.model,
        model_version=MODEL_VERSION,
        request_id=parsed.id,
        outputs=_answer_outputs(answer, outputs, parsed, state),
        parameters=_energy_parameters(answer),
    )
    if json_size is None:
        return Response(body, media_type=JSON_TYPE)
    return Response(body, media_type=BINARY_TYPE, headers={"Inference-Header-Content-Length": str(json_size)})


def _inputs(parsed: InferRequest, state: ServerState) -> tuple[list[bytes] | None, torch.Tensor | None, int]:
    """The images (IMAGE) or tensors (IMAGE_TENSOR) of the one input given, and how many."""
    known = {IMAGE: "BYTES", IMAGE_TENSOR: "FP32"}
    for tensor in parsed.inputs:
        if tensor.name not in known:
            raise InferRequestError(
                f"unexpected inference input '{tensor.name}'; the model takes {IMAGE} or {IMAGE_TENSOR}"
            )
        if tensor.datatype != known[tensor.name]:
            raise InferRequestError(
                f"input '{tensor.name}' has datatype {tensor.datatype}; "
                f"the model expects {known[tensor.name]}"
            )
    if len(parsed.inputs) != 1:
        raise InferRequestError(f"send exactly one of the inputs {IMAGE} and {IMAGE_TENSOR}, not both")
    tensor = parsed.inputs[0]
    cap = state.batcher.config.max_batch_size
    if tensor.name == IMAGE:
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InferRequestError(f"input {IMAGE} has shape {list(tensor.shape)}; expected [-1] or [-1, 1]")
        _check_count(tensor.shape[0], cap)
        return bytes_elements(tensor), None, tensor.shape[0]
    expected = state.pipeline.item_shape
    if len(tensor.shape) != 1 + len(expected) or tuple(tensor.shape[1:]) != expected:
        raise InferRequestError(
            f"input {IMAGE_TENSOR} has shape {list(tensor.shape)}; "
            f"expected [-1, {', '.join(map(str, expected))}]"
        )
    _check_count(tensor.shape[0], cap)
    return None, torch.from_numpy(fp32_array(tensor)), tensor.shape[0]


def _check_count(count: int, cap: int) -> None:
    if count < 1:
        raise InferRequestError("the request carries no image (its batch dimension is 0)")
    if count > cap:
        raise InferRequestError(
            f"inference request batch-size must be <= {cap} (max_batch_size), got {count}"
        )


def _outputs(parsed: InferRequest) -> list[OutputRequest]:
    if parsed.outputs is None:
        return [OutputRequest(SCORES)]
    for output in parsed.outputs:
        if output.name != SCORES:
            raise InferRequestError(f"unexpected inference output '{output.name}'; the model gives {SCORES}")
    return parsed.outputs


def _answer_outputs(
    answer: Inference, outputs: list[OutputRequest], parsed: InferRequest, state: ServerState
) -> list[OutputTensor]:
    scores: np.ndarray = answer.probabilities.to(torch.float32).numpy()
    tensors = []
    for output in outputs:
        binary = parsed.binary_output if output.binary is None else output.binary
        if output.classification:
            k = min(output.classification, scores.shape[1])
            labels = state.engine.classifier.labels
            strings = classification_strings(scores, labels, k)
            tensors.append(OutputTensor(output.name, "BYTES", (scores.shape[0], k), strings, binary))
        else:
            tensors.append(OutputTensor(output.name, "FP32", tuple(scores.shape), scores, binary))
    return tensors


def _energy_parameters(answer: Inference) -> dict[str, Any]:
    """The answer's energy, as ``/classify`` gives it: the joules of all its images (left out when
    unknown: ``energy_source`` then says why), where they come from, and whether idle draw is in."""
    parameters: dict[str, Any] = {
        "energy_source": answer.energy_source,
        "energy_idle_included": answer.energy.idle_included,
    }
    joules = answer.energy.joules
    if joules is not None:
        parameters["energy_j"] = joules
    return parameters
