"""What the classification routes share (``/classify`` and the Open Inference Protocol's infer):
the serving check, the body read within a limit, the deadline, and watching the client while the
request path works."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from service.errors import (
    ClientClosedRequestError,
    DrainingError,
    InvalidParameterError,
    NotReadyError,
    PayloadTooLargeError,
)
from service.state import Phase, ServerState

T = TypeVar("T")


def check_serving(state: ServerState) -> None:
    """503 ``draining`` or ``not_ready`` unless the server serves."""
    if state.phase is Phase.DRAINING:
        raise DrainingError()
    if state.phase is not Phase.READY:
        raise NotReadyError(state.failure or "model is warming up; retry shortly")


async def read_body(request: Request, limit: int) -> bytes:
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


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (or the response is complete)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """``work``'s result, or :class:`ClientClosedRequestError` when the client goes away first (the
    work is cancelled: its item leaves the queue, never computed). The body must have been read.

    ``work`` runs in the calling task; one watcher task waits for the disconnect and cancels it.
    (A task for the work too and ``asyncio.wait`` over both cost the event loop about 8 % of a
    no-op request: docs/performance.md.)
    """
    this = asyncio.current_task()
    assert this is not None
    gone: list[bool] = []

    async def watch() -> None:
        await wait_for_disconnect(request)
        gone.append(True)
        this.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone and this.uncancel() == 0:
            raise ClientClosedRequestError() from None
        raise
    finally:
        watcher.cancel()


def deadline_from(state: ServerState, arrival: float, timeout_ms: float | None) -> float:
    """The ``time.monotonic()`` instant by which compute must start: ``timeout_ms`` after
    ``arrival`` (the default timeout when None), 422 outside (0, max_timeout_ms]."""
    settings = state.settings
    if timeout_ms is None:
        timeout_ms = settings.default_timeout_ms
    elif not math.isfinite(timeout_ms) or timeout_ms <= 0 or timeout_ms > settings.max_timeout_ms:
        raise InvalidParameterError(
            f"X-Request-Timeout-Ms must be in (0, {settings.max_timeout_ms:g}], got {timeout_ms:g}"
        )
    return arrival + timeout_ms / 1000
