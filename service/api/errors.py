"""The one place where errors become HTTP responses: ``{"error": {"code", "message", "request_id"}}``,
and under ``/v2`` (the Open Inference Protocol) the protocol's own shape, ``{"error": "<message>"}``,
which its clients read (``tritonclient`` raises it as the exception's message); the request id is
in the ``X-Request-ID`` header either way."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import GreenserveError

logger = logging.getLogger(__name__)

#: The Open Inference Protocol's routes (service.api.oip) live under this path.
OIP_ROOT = "/v2"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "body_too_large"}


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, object]
    if request.url.path == OIP_ROOT or request.url.path.startswith(OIP_ROOT + "/"):
        body = {"error": message}
    else:
        body = {"error": {"code": code, "message": message, "request_id": request_id_of(request)}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _greenserve_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GreenserveError)
    if exc.status_code >= 500 and exc.status_code != 503 and exc.status_code != 504:
        logger.error("request %s failed: %s", request_id_of(request), exc.message)
    return error_response(request, exc.status_code, exc.code, exc.message, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response(request, 422, "invalid_parameter", "; ".join(parts))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(request, exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    logger.error("request %s: unhandled error", request_id_of(request), exc_info=exc)
    return error_response(request, 500, "internal_error", "internal server error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GreenserveError, _greenserve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
