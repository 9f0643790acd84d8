"""Recording real traffic as an arrival trace, so that it can be replayed (``--record-trace``).

Each ``POST /classify`` that reaches the app is one arrival, recorded by a small ASGI middleware
*before* anything can reject it: a replay should offer the load that was offered, including the
requests that were later refused (429, 503, 4xx). Times come from ``time.monotonic()`` and are
written in seconds from the first recorded arrival: a new file starts with ``{"t": 0.000000}``.

The file is the JSON Lines trace format of :mod:`loadgen.trace` (one ``{"t": …}`` per line, in
time order), written here with the standard library only: the service talks to the load generator
through files and HTTP, never through imports. ``read_trace`` reads it as it is.

Cost on the hot path: ``record`` appends a float to a list. A background task writes the list out
in a worker thread every ``flush_interval_s`` (or sooner, once ``flush_lines`` are waiting), so
the event loop never waits for the disk; ``close`` (from the lifespan, after the drain) writes the
rest. A file that already holds arrivals is continued: new times start at its last time, so the
file stays one sorted trace (the time between server runs is left out).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import IO, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ConfigurationError
from service.tasks import create_logged_task

logger = logging.getLogger(__name__)

#: Suffixes that :func:`loadgen.trace.read_trace` reads as JSON Lines.
TRACE_SUFFIXES = (".jsonl", ".ndjson")
RECORDED_PATH = "/classify"
_TAIL_BYTES = 64 * 1024  # enough for the last line of any trace file
_App = TypeVar("_App")


def _last_time(path: Path, tail: bytes) -> float | None:
    """The ``t`` of the last non-blank line of an existing trace file (``None`` when it has none)."""
    lines = [line for line in tail.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        return None
    try:
        last = float(json.loads(lines[-1])["t"])
    except (ValueError, TypeError, KeyError, IndexError):
        raise ConfigurationError(
            f"record_trace {str(path)!r} already exists and its last line is not a trace arrival "
            f"({lines[-1][:80]!r}); move it away or choose another file"
        ) from None
    if not math.isfinite(last) or last < 0:
        raise ConfigurationError(f"record_trace {str(path)!r} ends with a bad time {last!r}")
    return last


def _open(path: Path) -> tuple[IO[str], float]:
    """Open ``path`` for appending; the time its arrivals end at (0 for a new or empty file)."""
    try:
        handle = path.open("a", encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot open record_trace {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with path.open("rb") as reader:
            size = reader.seek(0, os.SEEK_END)
            reader.seek(max(0, size - _TAIL_BYTES))
            tail = reader.read()
        last = _last_time(path, tail)
        if tail and not tail.endswith(b"\n"):
            handle.write("\n")  # a hand-written file without a final newline: keep lines apart
    except OSError as exc:
        handle.close()
        raise ConfigurationError(f"cannot read record_trace {str(path)!r}: {exc.strerror or exc}") from None
    except BaseException:
        handle.close()
        raise
    return handle, last or 0.0


def check_trace_file(path: Path) -> None:
    """:class:`ConfigurationError` unless ``path`` can be opened and continued (checked at start-up)."""
    handle, _ = _open(path)
    handle.close()


class ArrivalRecorder:
    """Buffers arrival times and appends them to a JSON Lines trace file.

    ``start`` opens the file (a :class:`ConfigurationError` when it cannot) and starts the
    flusher; ``record`` is called on the event loop for each arrival; ``close`` writes what is
    left and closes the file. Nothing recorded is lost at shutdown unless the process is killed;
    a write that fails (a full disk) stops the recording with one error line, never the server.
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_interval_s: float = 1.0,
        flush_lines: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        self.flush_lines = flush_lines
        self.clock = clock
        self.recorded = 0  # arrivals accepted by record()
        self.written = 0  # arrivals written to the file
        self._pending: list[float] = []
        self._origin: float | None = None  # the monotonic time of the first arrival
        self._offset_s = 0.0  # where this run's times start: the file's last time, or 0
        self._last_t = 0.0
        self._file: IO[str] | None = None
        self._failed = False
        self._stopping = False
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self._file is not None and not self._failed

    async def start(self) -> None:
        """Open the file (in a thread: it may be on a slow disk) and start flushing."""
        self._file, self._offset_s = await asyncio.to_thread(_open, self.path)
        # A second start (the same app's lifespan run again) continues the file like a new server.
        self._origin, self._last_t, self._failed, self._stopping = None, self._offset_s, False, False
        if self._offset_s:
            logger.info(
                "record_trace %s: continuing after its last arrival (t=%g s)", self.path, self._offset_s
            )
        else:
            logger.info("recording each POST %s arrival to %s", RECORDED_PATH, self.path)
        self._flusher = create_logged_task(self._flush_periodically(), name="record-trace")

    def record(self, arrival: float | None = None) -> None:
        """Note one arrival at monotonic time ``arrival`` (default: now). Cheap; never blocks."""
        if not self.active:
            return
        now = self.clock() if arrival is None else arrival
        if self._origin is None:
            self._origin = now
        # max(): one monotonic clock never goes back, but an explicit ``arrival`` might.
        self._last_t = max(now - self._origin + self._offset_s, self._last_t)
        self._pending.append(self._last_t)
        self.recorded += 1
        if len(self._pending) >= self.flush_lines:
            self._wake.set()

    async def flush(self) -> None:
        """Write the arrivals recorded so far, in a worker thread."""
        async with self._write_lock:
            file = self._file
            if not self._pending or file is None or self._failed:
                return
            batch, self._pending = self._pending, []
            # Rounded to the microsecond, like write_trace; rounding keeps sorted times sorted.
            text = "".join(f'{{"t": {t:.6f}}}\n' for t in batch)
            try:
                await asyncio.to_thread(_append, file, text)
            except OSError as exc:
                self._failed = True
                logger.error(
                    "cannot write record_trace %s (%s); recording stopped after %d arrivals",
                    self.path,
                    exc,
                    self.written,
                )
                return
            self.written += len(batch)

    async def _flush_periodically(self) -> None:
        while not self._stopping:
            with suppress(asyncio.TimeoutError):  # the interval passed: flush anyway
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            await self.flush()

    async def close(self) -> None:
        """Write what is left and close the file; safe to call twice."""
        if self._file is None:
            return
        self._stopping = True
        self._wake.set()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush()
        file, self._file = self._file, None
        await asyncio.to_thread(file.close)
        logger.info("record_trace %s: %d arrivals written", self.path, self.written)


def _append(file: IO[str], text: str) -> None:
    file.write(text)
    file.flush()


class ArrivalRecordingMiddleware:
    """Records each ``POST /classify`` as it reaches the app, before routing or validation."""

    def __init__(self, app: ASGIApp, *, recorder: ArrivalRecorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == RECORDED_PATH:
            self.recorder.record()
        await self.app(scope, receive, send)


def recording_lifespan(
    recorder: ArrivalRecorder, inner: Callable[[_App], AbstractAsyncContextManager[None]]
) -> Callable[[_App], AbstractAsyncContextManager[None]]:
    """``inner`` (the app's lifespan) with the recorder opened before it and closed after it.

    Opened first, so that a file that cannot be written stops start-up before the model loads;
    closed last, so that arrivals during the drain are in the file too.
    """

    @asynccontextmanager
    async def lifespan(app: _App) -> AsyncIterator[None]:
        try:
            await recorder.start()
        except ConfigurationError as exc:
            logger.error("cannot start: %s", exc)
            raise
        try:
            async with inner(app):
                yield
        finally:
            await recorder.close()

    return lifespan
