"""``--log-format json``: JSON Lines on stderr, one object per record, with the request id."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.logs import REQUEST_ID, JsonLinesFormatter, Structured
from tests.conftest import gray_png, server_process


def _record(message: Any, *args: Any, exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord("greenserve.test", logging.WARNING, __file__, 1, message, args, exc_info)


def test_a_record_is_one_object_with_time_level_logger_message() -> None:
    line = JsonLinesFormatter().format(_record("took %.1f ms", 2.5))
    entry = json.loads(line)
    assert entry.keys() == {"time", "level", "logger", "message"}  # no request: no request_id
    assert entry["level"] == "warning" and entry["logger"] == "greenserve.test"
    assert entry["message"] == "took 2.5 ms"
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]


def test_the_request_id_of_the_request_being_handled_and_structured_fields() -> None:
    token = REQUEST_ID.set("req-1")
    try:
        fields = {"request_id": "req-1", "path": "/classify", "status": 200, "level": "not this"}
        entry = json.loads(JsonLinesFormatter().format(_record(Structured("POST /classify 200", fields))))
    finally:
        REQUEST_ID.reset(token)
    assert entry["request_id"] == "req-1" and entry["path"] == "/classify" and entry["status"] == 200
    assert entry["message"] == "POST /classify 200"
    assert entry["level"] == "warning"  # a field never replaces the record's own keys
    # As text, a structured message is one JSON object (what the text access log has always been).
    assert json.loads(_record(Structured("x", fields)).getMessage()) == fields


def test_an_exception_travels_in_the_object() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        entry = json.loads(JsonLinesFormatter().format(_record("failed", exc_info=sys.exc_info())))
    assert entry["message"] == "failed" and "RuntimeError: boom" in entry["exception"]


@pytest.mark.server
def test_a_server_started_with_log_format_json_writes_json_lines(tmp_path: Path) -> None:
    with server_process(tmp_path, "--log-format", "json") as server:
        response = httpx.post(
            f"{server.url}/classify",
            content=gray_png(3),
            headers={"content-type": "image/png", "x-request-id": "json-log-1"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        returncode = server.stop()
    assert returncode in (0, -signal.SIGTERM)
    lines = [line for line in server.log().splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\n{server.log()}")
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    access = [e for e in entries if e["logger"] == "greenserve.access" and e.get("path") == "/classify"]
    assert len(access) == 1, entries
    assert access[0]["request_id"] == "json-log-1" and access[0]["status"] == 200
    assert access[0]["message"] == "POST /classify 200" and access[0]["energy_j"] > 0
    # uvicorn's own records are JSON lines too (not its text handlers).
    assert any(e["logger"].startswith("uvicorn") for e in entries), entries
    assert any("shutdown" in e["message"].lower() for e in entries), entries
