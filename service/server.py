"""Running the app under uvicorn with a graceful drain.

On SIGTERM/SIGINT the server marks itself draining (``/readyz`` → 503, new ``/classify`` → 503
``draining``, every response ``Connection: close``) and fixes one deadline, ``drain_timeout_s``
from the signal. Then, together, uvicorn stops accepting connections and waits for the open ones,
and the batcher drains: it answers what it had accepted, cutting batches without waiting, until
the deadline, when whatever is still queued or computing is answered 503 ``draining``. Idle
keep-alive connections stay open for ``drain_idle_grace_s`` so that a request already on the wire
is answered rather than met by a close (:mod:`service.connections`). So the connections close by
the later of the two, and the process exits within it plus the batch computing at the deadline
(the model thread finishes it). Nothing that reached the server is dropped silently: the shutdown
log and ``greenserve_drain_responses_total`` count what was answered and what could not be written.

uvicorn's own connection timeout is the same deadline plus :data:`RESPONSE_GRACE_S`, a backstop for
connections the batcher cannot answer (a body still uploading): at its end uvicorn cancels their
requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from types import FrameType
from typing import cast

import uvicorn
from starlette.types import ASGIApp

from energy.allocator import configure_allocator
from service.app import create_app
from service.config import Settings
from service.connections import DEFAULT_PROTOCOL, DrainConfig, stop_accepting
from service.errors import ConfigurationError
from service.model import load_classifier
from service.recording import check_trace_file
from service.state import ServerState
from service.tasks import create_logged_task

logger = logging.getLogger(__name__)

#: After the drain deadline, how long uvicorn still waits for connections: for the 503 answers
#: the batcher gave at the deadline to be written. Only a connection the batcher cannot answer
#: (a request body still arriving) is held this long.
RESPONSE_GRACE_S = 1.0


def _uvicorn_timeout(seconds: float) -> int:
    # uvicorn annotates timeout_graceful_shutdown as int, but only hands it to asyncio.wait_for
    # (uvicorn/server.py, Server.shutdown), which takes any float: int() turned 0.5 s into 0,
    # which uvicorn reads as "no timeout" (wait forever).
    return cast(int, seconds)


class GreenServer(uvicorn.Server):
    """uvicorn's server, telling the app it is draining as soon as a signal arrives."""

    def __init__(self, config: uvicorn.Config, app: ASGIApp) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def _state(self) -> ServerState | None:
        state = getattr(getattr(self._app, "state", None), "server", None)
        return state if isinstance(state, ServerState) else None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = self._state()
        if state is not None:
            state.begin_draining()  # the drain deadline counts from the signal
        if not self.should_exit and self._loop is not None:
            # Stop accepting now rather than at uvicorn's next check (up to 100 ms later), in the
            # loop's thread (a signal handler may only schedule; call_soon_threadsafe may).
            self._loop.call_soon_threadsafe(self.stop_accepting)
        super().handle_exit(sig, frame)

    def stop_accepting(self) -> None:
        """Close the listening sockets, serving the connections already in their accept backlog
        (:func:`service.connections.stop_accepting`). In the event loop's thread."""
        servers = getattr(self, "servers", None)
        if not servers:
            return  # the signal came during start-up: uvicorn stops before it listens
        factory = functools.partial(  # uvicorn's own protocol factory (Server.startup)
            self.config.http_protocol_class,  # type: ignore[call-arg]
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        taken = stop_accepting(servers, factory)
        logger.info("stopped accepting connections (%d taken from the accept backlog)", taken)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = self._state()
        if state is not None:
            state.begin_draining()  # (a no-op after a signal; uvicorn may also stop by itself)
            # The batcher drains while uvicorn waits for connections, so that at the deadline the
            # requests still waiting get their 503 and their connections close; uvicorn then waits
            # no longer than the same deadline (plus the time to write those answers).
            create_logged_task(state.batcher.close(state.drain_remaining_s()), name="drain")
            self.config.timeout_graceful_shutdown = _uvicorn_timeout(
                max(state.drain_remaining_s(), state.settings.drain_idle_grace_s) + RESPONSE_GRACE_S
            )
        await super().shutdown(sockets)


def serve(settings: Settings) -> int:
    """Run until a signal. Exit status: 0 after a graceful shutdown, 2 for a bad model setting
    or an unusable record_trace file,
    3 when start-up fails otherwise (uvicorn's own code, e.g. an energy source that is unavailable)."""
    # Before the model allocates anything, and before any thread but this one does.
    configure_allocator(settings.allocator, thread_heaps=settings.thread_heaps())
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
    config = DrainConfig(
        app,
        # Idle keep-alive connections stay open this long once the drain begins (service.connections).
        drain_idle_grace_s=settings.drain_idle_grace_s,
        http=DEFAULT_PROTOCOL,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # JSON Lines: uvicorn's own records go to the root logger's handler (service.logs) instead
        # of uvicorn's text handlers, so that every line on stderr is one JSON object.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        access_log=False,  # ours is structured and carries the request id
        # Replaced by what is left of the drain deadline when shutdown begins (GreenServer).
        timeout_graceful_shutdown=_uvicorn_timeout(
            max(settings.drain_timeout_s, settings.drain_idle_grace_s) + RESPONSE_GRACE_S
        ),
        # uvicorn's 5 s default equals httpx's pool expiry: a client reusing a connection idle for
        # about 5 s raced the server closing it and got a reset (ECONNRESET) instead of an answer.
        timeout_keep_alive=settings.keep_alive_s,
        lifespan="on",
    )
    server = GreenServer(config, app)
    server.run()
    return 0 if server.started else 2
