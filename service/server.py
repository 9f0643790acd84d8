"""Running the app under uvicorn with a graceful drain.

On SIGTERM/SIGINT the server first marks itself draining (``/readyz`` → 503, new ``/classify``
→ 503 ``draining``), then uvicorn stops accepting connections and waits up to
``drain_timeout_s`` for in-flight requests, then the lifespan closes the batcher, which answers
whatever it had accepted. Nothing accepted is dropped silently.
"""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn
from fastapi import FastAPI

from energy.allocator import configure_allocator
from service.app import create_app
from service.config import Settings
from service.errors import ConfigurationError
from service.model import load_classifier
from service.recording import check_trace_file
from service.state import ServerState

logger = logging.getLogger(__name__)


class GreenServer(uvicorn.Server):
    """uvicorn's server, telling the app it is draining as soon as a signal arrives."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = getattr(self._app.state, "server", None)
        if isinstance(state, ServerState):
            state.begin_draining()
        super().handle_exit(sig, frame)


def serve(settings: Settings) -> int:
    """Run until a signal. Exit status: 0 after a graceful shutdown, 2 for a bad model setting
    or an unusable record_trace file,
    3 when start-up fails otherwise (uvicorn's own code, e.g. an energy source that is unavailable)."""
    configure_allocator(settings.allocator)  # before the model allocates anything
    try:
        # Loaded before uvicorn starts so that a bad model or weights setting ends in one clear
        # line and exit status 2, not in a lifespan traceback.
        classifier = load_classifier(settings)
        if settings.record_trace is not None:
            check_trace_file(settings.record_trace)
    except ConfigurationError as exc:
        logger.error("cannot start: %s", exc)
        return 2
    app = create_app(settings, classifier=classifier)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # ours is structured and carries the request id
        timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
        # uvicorn's 5 s default equals httpx's pool expiry: a client reusing a connection idle for
        # about 5 s raced the server closing it and got a reset (ECONNRESET) instead of an answer.
        timeout_keep_alive=settings.keep_alive_s,
        lifespan="on",
    )
    server = GreenServer(config, app)
    server.run()
    return 0 if server.started else 2
