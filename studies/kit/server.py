"""Server subprocesses for benchmarks: loopback only, own process group, always stopped."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"  # loopback only, always
#: How long a server may take to load its model and warm up before the step fails.
READY_TIMEOUT_S = 180.0
#: After SIGTERM, how long a server gets to drain before its process group is killed.
STOP_TIMEOUT_S = 15.0


def greenserve_argv(port: int, **settings: object) -> list[str]:
    """``greenserve serve`` on HOST:port with ``settings`` as flags.

    ``max_batch_size=8`` → ``--max-batch-size 8``; ``True``/``False`` → ``--flag``/``--no-flag``;
    ``None`` is left out.
    """
    script = Path(sys.executable).with_name("greenserve")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]
    argv += ["serve", "--host", HOST, "--port", str(port)]
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


def server_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``GREENSERVE_*`` (a step's flags are the whole config),
    with the repository importable and unbuffered output for the log."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GREENSERVE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class ServerError(RuntimeError):
    """A server could not start, or died; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A server subprocess in its own process group, its output in a log file."""

    def __init__(
        self, argv: Sequence[str], *, name: str, port: int, log_path: Path, env: dict[str, str]
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.port = port
        self.base_url = f"http://{HOST}:{port}"
        self.log_path = log_path
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            # Our own session: stop() can kill the whole group, whatever the server spawned.
            self._proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=self._env,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def exited(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``GET /readyz`` until 200; :class:`ServerError` if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=2.0, trust_env=False) as client:
            while True:
                code = self.exited()
                if code is not None:
                    raise ServerError(
                        f"{self.name} exited with code {code} before it was ready:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/readyz").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise ServerError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to the process group, then SIGKILL after STOP_TIMEOUT_S. Idempotent."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            # Already exited and reaped: its pid (and group id) may belong to someone else now.
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0f s of SIGTERM; killing it", self.name, STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def running_server(
    make_argv: Callable[[int], list[str]], *, name: str, workdir: Path, env: dict[str, str], attempts: int = 3
) -> Iterator[ServerProcess]:
    """A started, ready server on a free loopback port; stopped on exit, whatever happens."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        server = ServerProcess(
            make_argv(port), name=name, port=port, log_path=workdir / f"{name}-{port}.log", env=env
        )
        try:
            server.start()
            server.wait_ready(READY_TIMEOUT_S)
        except ServerError:
            server.stop()
            # Another process may have taken the port between free_port() and the bind: retry.
            if attempt < attempts and "address already in use" in server.log_tail().lower():
                continue
            raise
        except BaseException:
            server.stop()
            raise
        try:
            yield server
        finally:
            server.stop()
        return
    raise AssertionError("unreachable")
