"""HTTP connections during a drain: no request that reached the server is met by a closed connection.

uvicorn's own shutdown closes every *idle* keep-alive connection at once. A client that had just
written a request on one (it was on the wire, or in the server's socket buffer not yet read) then
reads a closed connection instead of an answer: for a POST it cannot tell whether the request was
processed, so it cannot retry it safely. Measured before this module (64 httpx keep-alive clients,
SIGTERM under load): a handful of requests written before the signal ended in a connection error.

So, from the moment the drain begins:

* the listening sockets close at once (a new connection is refused: nothing was sent, so a client
  can always retry it), but first every connection already waiting in their accept backlog is
  taken and served like the others (:func:`stop_accepting`). Closing a listener resets the
  connections in its backlog, and a client that had already written its request on one read a
  reset: measured with Locust, whose client reconnects at once after a ``Connection: close``,
  7-31 such resets per run before this;

* a connection that is *busy* (a request being read or answered) gets that answer with
  ``Connection: close`` and is closed once the answer is written (uvicorn's behaviour);
* a connection that is *idle* stays open for ``drain_idle_grace_s`` (default 1 s): a request that
  arrives meanwhile is answered (503 ``draining`` with ``Retry-After`` and ``Connection: close``)
  and the connection closes after that answer; one still idle at the end of the grace is closed
  then. The grace only has to outlast the time a request already written spends on the wire and
  in the socket buffer; a Kubernetes ``preStop`` pause (docs) keeps new requests from being sent
  at all once the endpoint is being removed.

Every response written while draining says ``Connection: close`` (added by the access-log
middleware, which sees every response), so each connection closes right after its last answer
and no client sends another request on it.

The connection also tells the app when it is lost before its request was answered: the response
is then never written, and the middleware logs and counts it as such (``written: false``) rather
than as the status the app produced.

These are subclasses of uvicorn's two HTTP protocol classes (``Config(http=...)`` takes a class),
overriding two methods: ``shutdown()``, which uvicorn's server calls once on each connection when it
stops, and asyncio's ``connection_lost()``. Both implementations keep the same per-connection state
(``cycle``, ``transport``, ``loop``); tests/service/test_drain.py runs both against the installed
uvicorn, so an upgrade that changes them fails there, not in production.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

#: Key in the request scope's ``state`` set when the connection was lost before the response to
#: that request was written (read by :class:`service.api.middleware.AccessLogMiddleware`).
CONNECTION_LOST = "greenserve.connection_lost"


class DrainConfig(uvicorn.Config):
    """uvicorn's configuration plus the drain's idle grace, read by the connections."""

    def __init__(self, app: Any, *, drain_idle_grace_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.drain_idle_grace_s = drain_idle_grace_s


class _DrainAwareConnection:
    """Mixin over a uvicorn HTTP protocol class (before it in the bases)."""

    # State of uvicorn's protocol classes that the overrides read.
    config: uvicorn.Config
    cycle: Any  # the request/response cycle in progress, or None
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    _idle_grace: asyncio.TimerHandle | None = None

    def _idle(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def shutdown(self) -> None:
        """The server stops: an idle connection gets the grace, a busy one closes after its answer."""
        grace_s = float(getattr(self.config, "drain_idle_grace_s", 0.0))
        if grace_s > 0 and self._idle() and not self.transport.is_closing():
            self._idle_grace = self.loop.call_later(grace_s, self._end_idle_grace)
            return
        super().shutdown()  # type: ignore[misc]

    def _end_idle_grace(self) -> None:
        self._idle_grace = None
        if not self.transport.is_closing():
            # Idle: closed now. Busy (a request arrived in the grace): closed after its answer.
            super().shutdown()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_grace is not None:
            self._idle_grace.cancel()
            self._idle_grace = None
        if self.cycle is not None and not self.cycle.response_complete:
            state = self.cycle.scope.setdefault("state", {})
            state[CONNECTION_LOST] = True
        super().connection_lost(exc)  # type: ignore[misc]


class DrainAwareH11Protocol(_DrainAwareConnection, H11Protocol):
    """uvicorn's pure-Python HTTP/1.1 connection, drain-aware."""


if importlib.util.find_spec("httptools") is not None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class DrainAwareHttpToolsProtocol(_DrainAwareConnection, HttpToolsProtocol):
        """uvicorn's httptools (C parser) HTTP/1.1 connection, drain-aware."""

    DEFAULT_PROTOCOL: type[asyncio.Protocol] = DrainAwareHttpToolsProtocol
else:  # pragma: no cover - httptools is a dependency; uvicorn's own fallback is h11
    DEFAULT_PROTOCOL = DrainAwareH11Protocol


def stop_accepting(
    servers: Sequence[asyncio.Server], protocol_factory: Callable[[], asyncio.BaseProtocol]
) -> int:
    """Close ``servers``' listening sockets, first serving every connection waiting in their accept
    backlog with ``protocol_factory`` (a closed listener would reset them). Returns how many were
    taken. Runs in the event loop's thread; ``Server.close()`` later is a no-op."""
    loop = asyncio.get_running_loop()
    taken = 0
    for server in servers:
        for listener in server.sockets:
            # asyncio hands out a restricted wrapper of the listening socket; a duplicate of its
            # descriptor can accept (the two share the one non-blocking listening socket).
            with listener.dup() as sock:
                sock.setblocking(False)
                while True:
                    try:
                        connection, _ = sock.accept()
                    except OSError:  # BlockingIOError: the backlog is empty
                        break
                    connection.setblocking(False)
                    adopt = loop.connect_accepted_socket(protocol_factory, connection)
                    task = loop.create_task(adopt, name="accept-backlog")
                    task.add_done_callback(_log_adopt_failure)
                    taken += 1
        server.close()
    return taken


def _log_adopt_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("a connection from the accept backlog could not be served: %s", task.exception())
