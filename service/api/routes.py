"""HTTP routes (the contract: README's API table). Thin: read the body, then the request path
(:class:`service.pipeline.Pipeline`: decode, submit and await, compose), answer."""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from service.api.common import check_serving, deadline_from, read_body, unless_disconnected
from service.api.deps import AdminDep, StateDep, get_state
from service.api.errors import error_response
from service.api.middleware import CLASSIFICATION
from service.errors import (
    BadImageError,
    InvalidParameterError,
    UnsupportedMediaTypeError,
)
from service.imaging import SUPPORTED_MEDIA_TYPES, check_media_type
from service.inference import MAX_TOP_K
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
    max_batch_size: int = Field(description="Largest batch (the adaptive policies' cap).")
    max_wait_ms: float = Field(description="The static policy's wait after a batch's first request.")
    max_queue: int
    batching: str = Field("static", description="The policy: static, adaptive or latency-adaptive.")
    slo_p99_ms: float | None = Field(None, description="The adaptive policies' p99 latency objective.")
    policy_state: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "What the policy decides now: target_batch_size, target_wait_seconds, and for the adaptive "
            "ones projected_p99_seconds, observed_p99_seconds (NaN until known is left out)."
        ),
    )


class BatchingUpdate(BaseModel):
    # Strict: JSON true is not a queue of 1, nor "4" a batch size (a number for a float is fine).
    model_config = ConfigDict(extra="forbid", strict=True)
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    max_queue: int | None = None
    batching: Literal["static", "adaptive", "latency-adaptive"] | None = None
    slo_p99_ms: float | None = None


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable: bad_image, queue_full, draining, …")
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    """Every error's body (service.api.errors)."""

    error: ErrorDetail


def _errors(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses (``e422="bad parameter"``), each with the error body."""
    return {int(key[1:]): {"model": ErrorResponse, "description": text} for key, text in described.items()}


#: A route that needs the server state answers 503 until the app has started.
_STARTING = _errors(e503="not ready")

_BINARY = {"type": "string", "format": "binary"}
#: ``POST /classify`` reads its body itself (so that a full queue refuses it unread and its size is
#: checked while it streams); this declares what it reads: a multipart form with a ``file``, or
#: the image itself with its own media type.
CLASSIFY_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "The image: a multipart/form-data field named 'file', or the raw body with its image/* content type."
    ),
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {**_BINARY, "description": "The image file."}},
                "required": ["file"],
            }
        },
        **{media_type: {"schema": _BINARY} for media_type in sorted(SUPPORTED_MEDIA_TYPES)},
    },
}


#: /classify's parameters, parsed by :func:`_classify_parameters` rather than declared in the
#: signature: FastAPI's dependency solving (the state, a query and a header, each validated by
#: pydantic) cost 8 % of the event loop's time per request under the no-op server's load
#: (docs/performance.md). The document says the same as the declared parameters did.
CLASSIFY_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "top_k",
        "in": "query",
        "required": False,
        "description": "How many classes to return.",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 5, "title": "Top K"},
    },
    {
        "name": "x-request-timeout-ms",
        "in": "header",
        "required": False,
        "description": "Deadline for compute to start, in ms from arrival.",
        "schema": {"anyOf": [{"type": "number"}, {"type": "null"}], "title": "X-Request-Timeout-Ms"},
    },
]


def _classify_parameters(request: Request) -> tuple[int, float | None]:
    """``top_k`` (1..MAX_TOP_K, default 5) and ``X-Request-Timeout-Ms`` (a number, or None); a bad
    value is a 422 that names the parameter."""
    raw_k = request.query_params.get("top_k")
    top_k = 5
    if raw_k is not None:
        try:
            top_k = int(raw_k.strip())
        except ValueError:
            raise InvalidParameterError(f"query.top_k: must be an integer, got {raw_k[:40]!r}") from None
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidParameterError(f"query.top_k: must be in [1, {MAX_TOP_K}], got {top_k}")
    raw_timeout = request.headers.get("x-request-timeout-ms")
    if raw_timeout is None:
        return top_k, None
    try:
        return top_k, float(raw_timeout)
    except ValueError:
        raise InvalidParameterError(
            f"header.X-Request-Timeout-Ms: must be a number, got {raw_timeout[:40]!r}"
        ) from None


async def _image_bytes(request: Request, limit: int) -> bytes:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        body = await read_body(request, limit)

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
        return await read_body(request, limit)
    raise UnsupportedMediaTypeError(
        f"content type {media_type or '(none)'!r} is not supported: send multipart/form-data with a "
        "'file' field, or the image itself with its image/* content type"
    )


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=_errors(
        e400="undecodable image",
        e413="body or pixel count too large",
        e415="unsupported media type",
        e422="bad parameter",
        e429="queue full (Retry-After)",
        e503="not ready or draining",
        e504="deadline passed before compute",
        e500="model failure",
    ),
    openapi_extra={"requestBody": CLASSIFY_BODY, "parameters": CLASSIFY_PARAMETERS},
)
async def classify(request: Request) -> Any:
    """Classify one image: multipart field ``file``, or the raw body with an ``image/*`` type."""
    arrival = time.monotonic()
    state = await get_state(request)
    check_serving(state)
    top_k, timeout_ms = _classify_parameters(request)
    deadline = deadline_from(state, arrival, timeout_ms)
    pipeline = state.pipeline
    # Admission before any work: a full queue (queued requests plus those being read and decoded)
    # is a 429 before the body is read or decoded, which also bounds the decode pool's backlog.
    # Leaving the block gives the place back unless submit used it: no leak on any error or 499.
    with pipeline.reserve() as admission:
        data = await _image_bytes(request, state.limits.max_body_bytes)
        answer = await unless_disconnected(
            request, pipeline.classify(data, top_k=top_k, deadline=deadline, admission=admission)
        )
    scope_state = request.scope["state"]
    scope_state[CLASSIFICATION] = answer  # the access middleware records it in the metrics
    energy = answer.energy
    energy_j = energy.joules
    scope_state["log_extra"] = {
        "batch_size": answer.batch_size,
        "energy_j": energy_j,
        "energy_source": answer.energy_source,
    }
    # A plain dict in a JSONResponse: FastAPI would otherwise validate the response model again on
    # the hot path; ClassifyResponse stays the documented schema (response_model above).
    return JSONResponse(
        {
            "model": answer.model,
            "predictions": [
                {"index": p.index, "label": p.label, "score": p.score} for p in answer.predictions
            ],
            "batch_size": answer.batch_size,
            "queue_ms": answer.queue_wait_s * 1000,
            "compute_ms": answer.compute_s * 1000,
            "energy_j": energy_j,
            "energy_parts_j": energy.parts_j(),
            "energy_source": answer.energy_source,
            "energy_idle_included": energy.idle_included,
            "request_id": str(scope_state["request_id"]),
        }
    )


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz", responses=_errors(e503="starting, failed, or draining"))
async def readyz(request: Request) -> JSONResponse:
    """200 once the model is loaded and warmed; 503 while starting, after a failure, or draining."""
    state = getattr(request.app.state, "server", None)
    phase = state.phase if state is not None else Phase.STARTING
    if phase is Phase.READY:
        return JSONResponse({"status": "ready"})
    message = (state.failure if state is not None else None) or f"server is {phase.value}"
    code = "draining" if phase is Phase.DRAINING else "not_ready"
    return error_response(request, 503, code, message)


@router.get("/metrics", response_class=PlainTextResponse, responses=_STARTING)
async def metrics(state: StateDep) -> Response:
    """Prometheus text format (the metrics table in README)."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", responses=_STARTING)
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
    described = state.batcher.policy.describe()
    return BatchingSettings(
        max_batch_size=config.max_batch_size,
        max_wait_ms=config.max_wait_ms,
        max_queue=config.max_queue,
        batching=config.policy,
        slo_p99_ms=config.slo_p99_ms,
        policy_state={k: v for k, v in described.items() if math.isfinite(v)},
    )


@router.get("/v1/batching", response_model=BatchingSettings, responses=_STARTING)
async def get_batching(state: StateDep) -> BatchingSettings:
    return _batching(state)


@router.put(
    "/v1/batching",
    response_model=BatchingSettings,
    dependencies=[AdminDep],
    responses=_errors(
        e400="body cannot be parsed (not UTF-8 text); malformed JSON is 422",
        e401="a bearer token is required",
        e422="invalid settings, or malformed JSON",
        e503="not ready",
    ),
)
async def put_batching(update: BatchingUpdate, state: StateDep) -> BatchingSettings:
    """Change batching settings at runtime; invalid values change nothing (422)."""
    state.batcher.reconfigure(
        max_batch_size=update.max_batch_size,
        max_wait_ms=update.max_wait_ms,
        max_queue=update.max_queue,
        policy=update.batching,
        slo_p99_ms=update.slo_p99_ms,
    )
    return _batching(state)
