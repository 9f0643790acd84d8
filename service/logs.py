"""The server's logging: plain text (the default) or JSON Lines on stderr (``--log-format json``).

In JSON Lines each record is one object: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, ``request_id`` when the record was logged while a request was being handled (the
access middleware sets it in :data:`REQUEST_ID`, a context variable), and ``exception`` with the
traceback when there is one. A :class:`Structured` message (the access log's) adds its fields as
keys of the object; in text it prints as one JSON object, as the access log always has.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

#: The id of the request being handled in this context (asyncio tasks copy it), else None.
REQUEST_ID: ContextVar[str | None] = ContextVar("greenserve_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Keys every JSON line has; a structured message's fields never replace them.
_RESERVED = frozenset({"time", "level", "logger", "message", "exception"})


class Structured:
    """A log message made of fields: as text, the fields as one JSON object; in JSON Lines, the
    fields are keys of the record's object and ``summary`` is its message."""

    __slots__ = ("fields", "summary")

    def __init__(self, summary: str, fields: Mapping[str, Any]) -> None:
        self.summary = summary
        self.fields = fields

    def __str__(self) -> str:
        return json.dumps(self.fields, separators=(",", ":"))


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.msg
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message.summary if isinstance(message, Structured) else record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        if isinstance(message, Structured):
            entry.update((k, v) for k, v in message.fields.items() if k not in _RESERVED)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, separators=(",", ":"), default=str)


def configure_logging(level: str, log_format: Literal["text", "json"] = "text") -> None:
    """Log records at ``level`` and above to stderr, as text or JSON Lines (like
    :func:`logging.basicConfig`, a no-op where the root logger already has handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonLinesFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler])
