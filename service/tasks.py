"""Background tasks that never die silently (the Zeus/uvicorn habit, STYLE.md principle 5)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# asyncio keeps only weak references to tasks: keep a strong one until each task is done.
_background: set[asyncio.Task[Any]] = set()


def _log_failure(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.error("background task %s died", task.get_name(), exc_info=exc)


def create_logged_task(coro: Coroutine[Any, Any, _T], *, name: str) -> asyncio.Task[_T]:
    """Create a task that is referenced until done and whose failure is logged, never lost."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _background.add(task)
    task.add_done_callback(_log_failure)
    return task
