"""The drain's connection rules on a real uvicorn, in-process, with both of its HTTP implementations
(httptools and h11) and a minimal ASGI app: idle connections get their grace, a lost connection is
reported to the app, the accept backlog is served rather than reset."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from service.connections import CONNECTION_LOST, DrainAwareH11Protocol, DrainConfig
from service.server import GreenServer

try:
    from service.connections import DrainAwareHttpToolsProtocol

    PROTOCOLS: list[type[asyncio.Protocol]] = [DrainAwareHttpToolsProtocol, DrainAwareH11Protocol]
except ImportError:  # pragma: no cover - httptools is a dependency
    PROTOCOLS = [DrainAwareH11Protocol]

GET = b"GET /%s HTTP/1.1\r\nHost: test\r\n\r\n"


class App:
    """``/`` answers at once; ``/slow`` after 0.4 s, noting whether its connection was lost."""

    def __init__(self) -> None:
        self.lost: list[bool] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/slow":
            await asyncio.sleep(0.4)
            self.lost.append(bool(scope.get("state", {}).get(CONNECTION_LOST)))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def serving(protocol: type[asyncio.Protocol], grace_s: float, app: App) -> Iterator[tuple[GreenServer, int]]:
    """``GreenServer`` on 127.0.0.1 in a thread (no signal handlers there); stopped afterwards."""
    config = DrainConfig(
        app,
        host="127.0.0.1",
        port=0,
        http=protocol,
        drain_idle_grace_s=grace_s,
        lifespan="off",
        log_level="warning",
        timeout_graceful_shutdown=10,
    )
    server = GreenServer(config, app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    else:
        pytest.fail("uvicorn did not start")
    port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield server, port
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive()


def read_response(sock: socket.socket) -> bytes:
    """One response (headers and the 2-byte body); b"" when the connection closed first."""
    data = b""
    while not (b"\r\n\r\n" in data and data.endswith(b"ok")):
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def wait_refused(port: int, timeout_s: float = 5.0) -> float:
    """Until the listener is closed (uvicorn's shutdown has begun); the time it was seen.

    A probe whose handshake meets the close itself (after the backlog was served, before the
    listening socket is gone: microseconds) is reset rather than refused; it never carried a
    request, and it too says the listener is closed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError):
            return time.monotonic()
        time.sleep(0.01)
    pytest.fail("the server kept accepting connections")


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("grace_s", [1.0, 0.0])
def test_idle_connection_is_answered_during_the_grace_then_closed(
    protocol: type[asyncio.Protocol], grace_s: float
) -> None:
    with (
        serving(protocol, grace_s, App()) as (server, port),
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        sock.sendall(GET % b"")
        assert read_response(sock).startswith(b"HTTP/1.1 200")  # now idle, kept alive
        server.handle_exit(signal.SIGTERM, None)
        stopped = wait_refused(port)
        time.sleep(0.2)
        # A request written on the idle connection after the drain began.
        try:
            sock.sendall(GET % b"")
            answer = read_response(sock)
        except ConnectionError:
            answer = b""
        if grace_s == 0:
            # uvicorn's own behaviour: the idle connection was closed at once, and the request
            # met a closed connection.
            assert answer == b""
            return
        assert answer.startswith(b"HTTP/1.1 200"), answer
        # Still idle at the end of the grace: closed then, not before.
        assert sock.recv(1) == b""
        closed_after = time.monotonic() - stopped
        assert grace_s - 0.15 <= closed_after <= grace_s + 1.0, closed_after


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_busy_connection_gets_its_answer_then_closes(protocol: type[asyncio.Protocol]) -> None:
    # (The Connection: close header on it comes from greenserve's middleware while draining:
    # uvicorn's h11 protocol closes without saying so. tests/service/test_drain.py checks it.)
    with (
        serving(protocol, 1.0, App()) as (server, port),
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        sock.sendall(GET % b"slow")
        time.sleep(0.1)
        server.handle_exit(signal.SIGTERM, None)
        answer = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 200")
        assert sock.recv(1) == b""  # closed after its last answer, without waiting for the grace


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_a_lost_connection_is_reported_to_the_request(protocol: type[asyncio.Protocol]) -> None:
    app = App()
    with serving(protocol, 1.0, app) as (_, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(GET % b"slow")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(GET % b"slow")
            time.sleep(0.1)  # the client goes away before the answer
        for _ in range(200):
            if len(app.lost) == 2:
                break
            time.sleep(0.01)
    assert app.lost == [False, True]


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_connections_waiting_in_the_accept_backlog_are_served_not_reset(
    protocol: type[asyncio.Protocol],
) -> None:
    with serving(protocol, 1.0, App()) as (server, port):
        assert server._loop is not None

        def held_then_stop() -> None:
            time.sleep(0.4)  # the event loop is held: a new connection waits in the backlog
            server.stop_accepting()
            server.should_exit = True

        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            server._loop.call_soon_threadsafe(held_then_stop)
            time.sleep(0.1)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as queued:
                queued.sendall(GET % b"")
                # A plain close of the listener would reset this connection (ConnectionResetError).
                assert read_response(queued).startswith(b"HTTP/1.1 200")
            idle.sendall(GET % b"")  # accepted before, idle at the stop: within its grace
            assert read_response(idle).startswith(b"HTTP/1.1 200")
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=1)
