"""HTTP routes (the contract in DESIGN.md). Thin: read, decode, submit and await, answer."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from energy import EnergyAccountant, StageEnergy
from service.api.deps import AdminDep, StateDep
from service.api.errors import error_response
from service.errors import (
    BadImageError,
    DrainingError,
    InvalidParameterError,
    NotReadyError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from service.imaging import check_media_type, decode_image
from service.inference import MAX_TOP_K
from service.request_energy import RequestEnergy
from service.state import Phase, ServerState

router = APIRouter()


class Prediction(BaseModel):
    index: int
    label: str
    score: float


class ClassifyResponse(BaseModel):
    model: str
    predictions: list[Prediction]
    batch_size: int
    queue_ms: float
    compute_ms: float
    energy_j: float | None = Field(
        description=(
            "This request's energy: its share of its batch's model compute, its own decode and its "
            "share of the serving work (Units: J). null when a meter failed or stalled "
            "(energy_source says why)."
        )
    )
    energy_parts_j: dict[str, float] | None = Field(
        description="energy_j by stage: model, decode, serving (Units: J); null when unknown."
    )
    energy_source: str = Field(
        description=(
            "Where energy_j comes from: nvml, rapl, estimate or synthetic, or two joined by '+' (a GPU's "
            "model part and a CPU meter's parts, e.g. nvml+rapl); 'unknown: <why>' when it is not known."
        )
    )
    energy_idle_included: bool = Field(
        description=(
            "Whether energy_j includes idle (static) draw: only a GPU's during its batch (nvml). CPU "
            "parts are above idle; idle energy is greenserve_idle_energy_joules_total."
        )
    )
    request_id: str


class BatchingSettings(BaseModel):
    max_batch_size: int
    max_wait_ms: float
    max_queue: int


class BatchingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    max_queue: int | None = None


def _gpu_idle_included(accountant: EnergyAccountant) -> bool:
    return accountant.accelerator is not None and accountant.accelerator.meter.idle_included


def _check_serving(state: ServerState) -> None:
    if state.phase is Phase.DRAINING:
        raise DrainingError()
    if state.phase is not Phase.READY:
        raise NotReadyError(state.failure or "model is warming up; retry shortly")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing one larger than ``limit`` as soon as that is known (header or stream)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"body of {int(declared)} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _image_bytes(request: Request, state: ServerState) -> bytes:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        body = await _read_body(request, state.limits.max_body_bytes)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
        except Exception as exc:  # malformed multipart (bad boundary, truncated)
            raise BadImageError(f"malformed multipart body: {exc}") from exc
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidParameterError("multipart body needs a file field named 'file'")
            return await upload.read()
        finally:
            await form.close()
    if media_type.startswith("image/"):
        check_media_type(media_type)
        return await _read_body(request, state.limits.max_body_bytes)
    raise UnsupportedMediaTypeError(
        f"content type {media_type or '(none)'!r} is not supported: send multipart/form-data with a "
        "'file' field, or the image itself with its image/* content type"
    )


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (or the response is complete)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _deadline(state: ServerState, arrival: float, timeout_ms: float | None) -> float:
    settings = state.settings
    if timeout_ms is None:
        timeout_ms = settings.default_timeout_ms
    elif not math.isfinite(timeout_ms) or timeout_ms <= 0 or timeout_ms > settings.max_timeout_ms:
        raise InvalidParameterError(
            f"X-Request-Timeout-Ms must be in (0, {settings.max_timeout_ms:g}], got {timeout_ms:g}"
        )
    return arrival + timeout_ms / 1000


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses={
        400: {"description": "undecodable image"},
        413: {"description": "body or pixel count too large"},
        415: {"description": "unsupported media type"},
        422: {"description": "bad parameter"},
        429: {"description": "queue full (Retry-After)"},
        503: {"description": "not ready or draining"},
        504: {"description": "deadline passed before compute"},
        500: {"description": "model failure"},
    },
)
async def classify(
    request: Request,
    state: StateDep,
    top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K, description="How many classes to return.")] = 5,
    x_request_timeout_ms: Annotated[
        float | None, Header(description="Deadline for compute to start, in ms from arrival.")
    ] = None,
) -> Any:
    """Classify one image: multipart field ``file``, or the raw body with an ``image/*`` type."""
    arrival = time.monotonic()
    _check_serving(state)
    deadline = _deadline(state, arrival, x_request_timeout_ms)
    classifier = state.engine.classifier
    loop = asyncio.get_running_loop()

    accountant = state.accountant

    def decode() -> tuple[torch.Tensor, StageEnergy]:
        # The decode thread's CPU time (since its previous decode: the pool's handling included),
        # priced at the CPU meter's J per CPU-second.
        with accountant.thread_work("decode", dedicated=True) as measured:
            tensor = classifier.preprocess(decode_image(data, state.limits, draft_size=classifier.draft_size))
        return tensor, measured[0]

    # Admission before any work: a full queue (queued requests plus those being read and decoded)
    # is a 429 before the body is read or decoded, which also bounds the decode pool's backlog.
    # Leaving the block gives the place back unless submit used it: no leak on any error or 499.
    with state.batcher.reserve() as admission:
        data = await _image_bytes(request, state)
        tensor, decoded = await loop.run_in_executor(state.decode_pool, decode)
        submitted = asyncio.ensure_future(
            state.batcher.submit(tensor, deadline=deadline, admission=admission)
        )
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({submitted, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            submitted.cancel()  # this handler was cancelled: its item goes too
            raise
        finally:
            watcher.cancel()
    if not submitted.done():
        # The client went away: drop its item from the queue (the batcher never computes it).
        submitted.cancel()
        return error_response(request, 499, "client_closed_request", "client disconnected")
    outcome = submitted.result()
    item = outcome.value
    labels = classifier.labels
    request_id = str(request.scope["state"]["request_id"])
    k = min(top_k, len(item.indices))
    # The event loop's CPU time per request it began over the last second (this request's share of
    # parsing, routing, batching and answering), priced like the decode.
    serving = accountant.cpu_work("serving", state.serving.per_event_cpu_s())
    energy = RequestEnergy((item.energy, decoded, serving), idle_included=_gpu_idle_included(accountant))
    energy_j = energy.joules
    energy_source = energy.source(accountant.sources)
    state.metrics.observe_request_energy(energy, energy_source)
    request.scope["state"]["log_extra"] = {
        "batch_size": outcome.batch_size,
        "energy_j": energy_j,
        "energy_source": energy_source,
    }
    # A plain dict in a JSONResponse: FastAPI would otherwise validate the response model again on
    # the hot path; ClassifyResponse stays the documented schema (response_model above).
    return JSONResponse(
        {
            "model": classifier.name,
            "predictions": [
                {"index": i, "label": labels[i], "score": s}
                for i, s in zip(item.indices[:k], item.scores[:k], strict=True)
            ],
            "batch_size": outcome.batch_size,
            "queue_ms": outcome.queue_wait_s * 1000,
            "compute_ms": item.compute_s * 1000,
            "energy_j": energy_j,
            "energy_parts_j": energy.parts_j(),
            "energy_source": energy_source,
            "energy_idle_included": energy.idle_included,
            "request_id": request_id,
        }
    )


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 once the model is loaded and warmed; 503 while starting, after a failure, or draining."""
    state = getattr(request.app.state, "server", None)
    phase = state.phase if state is not None else Phase.STARTING
    if phase is Phase.READY:
        return JSONResponse({"status": "ready"})
    message = (state.failure if state is not None else None) or f"server is {phase.value}"
    code = "draining" if phase is Phase.DRAINING else "not_ready"
    return error_response(request, 503, code, message)


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model")
async def model_info(state: StateDep) -> dict[str, Any]:
    classifier = state.engine.classifier
    return {
        **classifier.describe(),
        "labels": list(classifier.labels),
        "energy_source": state.meter.source,
        "energy_sources": state.accountant.sources,
        "energy_devices": [d for sampler in state.accountant.samplers for d in sampler.devices],
        "energy_is_estimate": state.meter.is_estimate,
        "energy_is_model": any(sampler.meter.is_model for sampler in state.accountant.samplers),
        "phase": state.phase.value,
    }


def _batching(state: ServerState) -> BatchingSettings:
    config = state.batcher.config
    return BatchingSettings(
        max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms, max_queue=config.max_queue
    )


@router.get("/v1/batching", response_model=BatchingSettings)
async def get_batching(state: StateDep) -> BatchingSettings:
    return _batching(state)


@router.put("/v1/batching", response_model=BatchingSettings, dependencies=[AdminDep])
async def put_batching(update: BatchingUpdate, state: StateDep) -> BatchingSettings:
    """Change batching settings at runtime; invalid values change nothing (422)."""
    config = state.batcher.reconfigure(
        max_batch_size=update.max_batch_size, max_wait_ms=update.max_wait_ms, max_queue=update.max_queue
    )
    state.metrics.set_batching_config(config.max_batch_size, config.max_wait_ms, config.max_queue)
    return _batching(state)
