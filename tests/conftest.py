"""Shared fixtures: images, an in-process app with its lifespan, and a real server process."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from service.app import create_app
from service.config import Settings
from service.model import Classifier


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def gray_png(tag: int, size: int = 8) -> bytes:
    """A PNG whose green channel (FakeClassifier's tag) is ``tag``."""
    return png_bytes(Image.new("RGB", (size, size), (0, tag, 0)))


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"energy_source": "estimate", "access_log": False, "max_wait_ms": 2}
    base.update(overrides)
    return Settings(**base)


@asynccontextmanager
async def running_app(
    settings: Settings, classifier: Classifier | None = None, *, wait_ready: bool = True
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The app with its lifespan running, and a client that talks to it in-process."""
    app = create_app(settings, classifier=classifier)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            if wait_ready:
                for _ in range(2000):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await _pause()
                else:
                    pytest.fail("app never became ready")
            yield app, client


async def _pause() -> None:
    await asyncio.sleep(0.005)


# --- a real server process -------------------------------------------------------------------


REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@contextmanager
def server_process(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """``greenserve serve`` on 127.0.0.1 and a free port, ready; always stopped afterwards."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "GREENSERVE_ENERGY_SOURCE": "estimate", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=REPO,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in time:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
