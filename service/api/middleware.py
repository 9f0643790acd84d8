"""Request ids, the classification metrics that must count every outcome, and the access log.

A pure ASGI middleware (not ``BaseHTTPMiddleware``, which adds a task and a copy per request):
it gives each request an id (the client's ``X-Request-ID`` when it is sane), echoes it in the
response, records each finished ``/classify`` and Open Inference Protocol infer request in the
metrics (its final status, duration and protocol and, when answered, its images and the energy the
route left in :data:`CLASSIFICATION`), and writes one JSON log line. It sees every response, so it
is also where the drain shows: once the server is draining each response says ``Connection:
close`` and is counted by status and by whether it could be written (the
connection tells it when the client was gone: :mod:`service.connections`); the log line then
carries ``"written": false``.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.connections import CONNECTION_LOST
from service.logs import REQUEST_ID, Structured
from service.pipeline import Classification, Inference
from service.state import Phase

access_logger = logging.getLogger("greenserve.access")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CLASSIFY_PATH = "/classify"
#: The request state's key for the route's answer: a :class:`service.pipeline.Classification`
#: (``/classify``) or :class:`service.pipeline.Inference` (an Open Inference Protocol infer).
CLASSIFICATION = "classification"

# A request id: 16 random hex digits drawn once per process, then a counter (32 hex digits, the
# shape of a uuid4's hex). uuid4() reads os.urandom for every request: 7 % of the event loop's
# samples under the no-op server's load (py-spy, docs/performance.md), where the counter costs
# nothing. Unique within the process; across processes, as unique as 64 random bits.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def protocol_of(path: str) -> str | None:
    """The classification protocol a path speaks (``classify``, ``v2``), None for other routes."""
    if path == CLASSIFY_PATH:
        return "classify"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return None


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, *, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        server = getattr(scope["app"].state, "server", None) if "app" in scope else None
        if server is not None:
            # Every request the event loop takes shares its CPU time (energy.CpuSpread).
            server.serving.count()
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                request_id = candidate if _SANE_ID.match(candidate) else ""
                break
        request_id = request_id or new_request_id()
        # Every record logged while handling this request carries its id (JSON Lines logs).
        request_id_token = REQUEST_ID.set(request_id)
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if server is not None and server.phase is Phase.DRAINING:
                    # The connection closes after this answer: the client sends nothing more on it.
                    headers = [(k, v) for k, v in headers if k.lower() != b"connection"]
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration_s = time.perf_counter() - started
            path = scope["path"]
            server = getattr(scope["app"].state, "server", None) if "app" in scope else None
            written = not state.get(CONNECTION_LOST, False)
            if server is not None:
                server.observe_response(status, written)
                protocol = protocol_of(path)
                if protocol is not None:
                    answered: Classification | Inference | None = state.get(CLASSIFICATION)
                    server.metrics.observe_classify(
                        status,
                        duration_s,
                        answered.energy if answered is not None else None,
                        answered.energy_source if answered is not None else "",
                        protocol=protocol,
                        images=answered.images if isinstance(answered, Inference) else 1,
                    )
            if self.enabled and access_logger.isEnabledFor(logging.INFO):
                record = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_ms": round(duration_s * 1000, 3),
                    "client": (scope.get("client") or ("", 0))[0],
                }
                if not written:
                    record["written"] = False
                record.update(state.get("log_extra", {}))
                summary = f"{scope['method']} {path} {status}"
                access_logger.info(Structured(summary, record))
            REQUEST_ID.reset(request_id_token)
