"""A bare FastAPI app: the baseline that greenserve's no-op model is compared against.

``POST /classify`` reads the raw body, decodes it with the same :func:`service.imaging.decode_image`
in a thread pool of the same size as greenserve's decode pool, and returns a small fixed JSON. So
both servers do the same image work, and the throughput ratio (greenserve noop ÷ bare) measures
what greenserve adds on top: request ids and metrics middleware, the batcher and its futures, the
disconnect watcher, energy accounting and the response model.

Run it the way the benchmark does (a factory, so nothing happens at import)::

    python -m uvicorn --factory studies.serving.bare_app:create_app --host 127.0.0.1 --port 8001

``BENCH_BARE_DECODE_WORKERS`` sets the pool size (default: greenserve's ``decode_workers`` default).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from service.imaging import DecodeLimits, decode_image

DECODE_WORKERS_ENV = "BENCH_BARE_DECODE_WORKERS"

#: What every classification answers: the shape of greenserve's response, fixed values.
_RESPONSE: dict[str, Any] = {
    "model": "bare",
    "predictions": [{"index": 0, "label": "0", "score": 1.0}],
    "batch_size": 1,
}


def _default_decode_workers() -> int:
    # Mirrors service.config.Settings.decode_workers without importing the settings class.
    return min(4, os.cpu_count() or 1)


def create_app(decode_workers: int | None = None) -> FastAPI:
    """The bare app; ``decode_workers`` threads decode images (env ``BENCH_BARE_DECODE_WORKERS``)."""
    workers = decode_workers or int(os.environ.get(DECODE_WORKERS_ENV, "0")) or _default_decode_workers()
    limits = DecodeLimits()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="bare", lifespan=lifespan)

    @app.post("/classify")
    async def classify(request: Request) -> dict[str, Any]:
        body = await request.body()
        await asyncio.get_running_loop().run_in_executor(pool, decode_image, body, limits)
        return _RESPONSE

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app
