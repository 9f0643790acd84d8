"""``--record-trace``: the server writes each POST /classify arrival as a replayable trace."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from loadgen.trace import read_trace
from service import cli, recording
from service.app import create_app
from service.config import Settings
from service.errors import ConfigurationError
from service.recording import ArrivalRecorder, ArrivalRecordingMiddleware
from tests.conftest import gray_png, make_settings, running_app, server_process
from tests.fakes import FakeClassifier


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def wait_for_lines(path: Path, count: int) -> list[str]:
    """The file's lines once it has ``count`` of them (the flusher writes in the background)."""
    for _ in range(400):
        lines = await asyncio.to_thread(read_lines, path)
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.005)
    pytest.fail(f"{path} never had {count} lines")


async def test_every_classify_arrival_is_recorded_and_replayable(tmp_path: Path) -> None:
    path = tmp_path / "arrivals.jsonl"
    async with running_app(make_settings(record_trace=path), FakeClassifier()) as (_, client):
        for tag in range(5):
            response = await client.post(
                "/classify", content=gray_png(tag), headers={"content-type": "image/png"}
            )
            assert response.status_code == 200
        # Refused requests were offered load too: recorded, so that a replay offers them again.
        assert (
            await client.post("/classify", content=b"x", headers={"content-type": "text/plain"})
        ).status_code == 415
        assert (await client.post("/classify?top_k=0", content=gray_png(1))).status_code == 422
        assert (await client.get("/healthz")).status_code == 200  # not a classify request
        assert (await client.get("/classify")).status_code == 405
    trace = read_trace(path)  # the lifespan flushed and closed the file
    assert len(trace) == 7
    assert trace.times[0] == 0.0
    assert all(b >= a for a, b in zip(trace.times, trace.times[1:], strict=False))
    assert trace.times[-1] > 0


def middleware_names(settings: Settings) -> list[str]:
    return [getattr(m.cls, "__name__", "") for m in create_app(settings).user_middleware]


def test_off_by_default(tmp_path: Path) -> None:
    assert Settings().record_trace is None
    assert ArrivalRecordingMiddleware.__name__ not in middleware_names(make_settings())
    on = middleware_names(make_settings(record_trace=tmp_path / "t.jsonl"))
    assert on[0] == ArrivalRecordingMiddleware.__name__  # outermost: sees every request first


async def test_recorder_flushes_periodically_and_on_close(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    recorder = ArrivalRecorder(path, flush_interval_s=0.01)
    await recorder.start()
    recorder.record(100.0)
    recorder.record(100.25)
    assert await wait_for_lines(path, 2) == ['{"t": 0.000000}', '{"t": 0.250000}']
    recorder.record(101.5)
    await recorder.close()
    assert read_trace(path).times == (0.0, 0.25, 1.5)
    recorder.record(102.0)  # after close: ignored, not an error
    await recorder.close()
    assert recorder.written == 3


async def test_recorder_writes_early_when_many_lines_wait(tmp_path: Path) -> None:
    path = tmp_path / "t.ndjson"
    recorder = ArrivalRecorder(path, flush_interval_s=3600, flush_lines=3)
    await recorder.start()
    try:
        for t in (5.0, 5.5, 6.0):
            recorder.record(t)
        assert len(await wait_for_lines(path, 3)) == 3
    finally:
        await recorder.close()


async def test_an_existing_trace_is_continued_after_its_last_arrival(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"t": 0.0}\n{"t": 2.5, "image_id": "cat.jpg"}')  # no final newline
    recorder = ArrivalRecorder(path)
    await recorder.start()
    recorder.record(50.0)
    recorder.record(51.0)
    await recorder.close()
    assert read_trace(path).times == (0.0, 2.5, 2.5, 3.5)


async def test_an_existing_file_that_is_not_a_trace_stops_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text("remember the milk\n")
    with pytest.raises(ConfigurationError, match="its last line is not a trace arrival"):
        async with running_app(make_settings(record_trace=path), FakeClassifier()):
            pass
    assert f"cannot start: record_trace {str(path)!r} already exists" in caplog.text
    assert path.read_text() == "remember the milk\n"


async def test_a_file_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "t.jsonl"
    with pytest.raises(ConfigurationError, match=r"cannot open record_trace .*No such file or directory"):
        await ArrivalRecorder(missing).start()


async def test_a_failing_disk_stops_recording_not_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(file: object, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    recorder = ArrivalRecorder(tmp_path / "t.jsonl", flush_interval_s=3600)
    await recorder.start()
    monkeypatch.setattr(recording, "_append", full)
    recorder.record(1.0)
    with caplog.at_level(logging.ERROR):
        await recorder.flush()
    assert "recording stopped after 0 arrivals" in caplog.text
    assert not recorder.active
    recorder.record(2.0)  # a no-op now
    await recorder.close()
    assert recorder.recorded == 1 and recorder.written == 0


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("no-such-dir/t.jsonl", "does not exist"),
        ("t.csv", "must end in .jsonl or .ndjson"),
        ("dir.jsonl", "is a directory"),
    ],
)
def test_bad_record_trace_settings_are_refused(tmp_path: Path, name: str, fragment: str) -> None:
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(ValidationError, match=fragment):
        Settings(record_trace=tmp_path / name)


def test_record_trace_is_a_flag_and_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GREENSERVE_RECORD_TRACE", str(tmp_path / "env.jsonl"))
    assert Settings().record_trace == tmp_path / "env.jsonl"
    args = cli.build_parser().parse_args(["serve", "--record-trace", str(tmp_path / "flag.jsonl")])
    assert cli.settings_from_args(args).record_trace == tmp_path / "flag.jsonl"
    assert cli.main(["serve", "--record-trace", str(tmp_path / "nowhere" / "t.jsonl")]) == 2
    assert "record_trace" in capsys.readouterr().err


@pytest.mark.server
def test_a_real_server_writes_the_trace_by_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "traffic.jsonl"
    args = ("--model", "tests.fakes:slow_classifier", "--record-trace", str(path))
    with server_process(tmp_path, *args, env={"FAKE_DELAY_S": "0"}) as server:
        for tag in range(3):
            response = httpx.post(
                f"{server.url}/classify", content=gray_png(tag), headers={"content-type": "image/png"}
            )
            assert response.status_code == 200, response.text
        server.stop()
        log = server.log()
    assert "record_trace" in log and "3 arrivals written" in log, log
    trace = read_trace(path)
    assert len(trace) == 3 and trace.times[0] == 0.0


async def test_a_restarted_recorder_continues_its_file(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    recorder = ArrivalRecorder(path, flush_interval_s=0.01)
    for arrivals in ((10.0, 11.0), (500.0, 500.5)):
        await recorder.start()
        for t in arrivals:
            recorder.record(t)
        await recorder.close()
    assert read_trace(path).times == (0.0, 1.0, 1.0, 1.5)


def test_serve_with_an_unusable_trace_file_exits_2_with_one_line_before_listening(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text("remember the milk\n")
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", "0", "--record-trace", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GREENSERVE_ENERGY_SOURCE": "estimate"},
    )
    assert done.returncode == 2, done.stderr
    assert "cannot start: record_trace" in done.stderr
    assert "Traceback" not in done.stderr and "Uvicorn running" not in done.stderr
    assert path.read_text() == "remember the milk\n"
