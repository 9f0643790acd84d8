"""``make loadtest`` / ``greenserve loadtest``: its settings, flags (with the common names' aliases),
the plan it announces, one-line errors, and a whole run through ``python -m loadgen.loadtest``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.errors import LoadgenError
from loadgen.loadtest import LoadtestSettings, build_parser, main, plan, write_request_log, write_summary
from loadgen.loadtest.records import RequestRecord
from loadgen.trace import Trace
from studies.kit.flags import dataclass_from_args
from tests.conftest import server_process

REPO = Path(__file__).resolve().parents[2]


def _settings(*argv: str) -> LoadtestSettings:
    settings: LoadtestSettings = dataclass_from_args(LoadtestSettings, build_parser().parse_args(list(argv)))
    return settings


def test_defaults_are_the_documented_open_loop_run() -> None:
    settings = _settings()
    assert settings == LoadtestSettings()
    assert (settings.rate, settings.jitter, settings.duration_s, settings.closed) == (16.0, 0.2, 30.0, False)
    assert settings.out == Path("results/loadtest")


def test_duration_takes_its_common_name_and_the_old_spelling() -> None:
    assert _settings("--duration-s", "12").duration_s == 12.0
    assert _settings("--duration", "7").duration_s == 7.0
    assert "[alias: --duration]" in build_parser().format_help()


def test_users_or_stages_make_a_closed_loop() -> None:
    assert _settings("--users", "4").closed
    staged = _settings("--stages", "1s:1,2s:3", "--stage-mode", "ramp")
    assert staged.closed and staged.stage_mode == "ramp"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--trace", "t.jsonl", "--users", "2"], "--trace replays open-loop"),
        (["--stages", "10x:5"], "stage 1"),
        (["--stage-mode", "zigzag"], "--stage-mode must be one of step, ramp"),
        (["--spawn-rate", "0"], "--spawn-rate must be a number > 0"),
        (["--users", "0"], "--users must be ≥ 1"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(LoadgenError, match=r"\S"):
        _settings(*argv)
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loadtest: ") and fragment in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_plan_says_what_runs_and_how_long(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    trace = Trace.from_times([0.0, 0.5, 1.0, 9.5])
    line = plan(_settings("--host", "http://h:1"), trace)
    assert line == (
        "loadtest: open loop, 4 arrivals over 9.5 s against http://h:1 (then the answers are awaited), "
        "about 10 s to go"
    )
    assert line in caplog.messages
    assert "about 5 s to go" in plan(_settings("--max-s", "5"), trace)
    closed = plan(_settings("--stages", "1m:5,30s:10"), None)
    assert closed.startswith("loadtest: closed loop, stages 1m:5,30s:10 (step)") and "1 min 30 s" in closed
    assert "8 users" in plan(_settings("--users", "8", "--run-time-s", "20"), None)


def test_result_files_are_written_atomically(tmp_path: Path) -> None:
    log = write_request_log(
        [RequestRecord(0, "digits-0", 0.0, 0.01, 0.02, "200")], tmp_path / "r" / "requests.csv"
    )
    summary = write_summary({"schema": "x", "n": 1}, tmp_path / "r" / "summary.json")
    assert json.loads(summary.read_text()) == {"schema": "x", "n": 1}
    assert (
        log.read_text()
        .splitlines()[1]
        .startswith("0,digits-0,0.000000,0.010000,0.020000,10.000000,20.000000,200")
    )
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["requests.csv", "summary.json"]


@pytest.mark.server
def test_make_loadtest_runs_a_generated_trace_as_a_module(tmp_path: Path) -> None:
    out = tmp_path / "lt"
    with server_process(tmp_path, "--no-access-log") as server:
        make_loadtest = [sys.executable, "-m", "loadgen.loadtest", "--host", server.url, "--images", "digits"]
        # --duration: the old spelling of --duration-s.
        argv = [*make_loadtest, "--rate", "8", "--duration", "1", "--out", str(out)]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loadtest: open loop, 8 arrivals over 0.8" in done.stderr  # the plan, before Locust starts
    assert f"Results: {out / 'summary.json'}" in done.stdout
    raw = json.loads((out / "summary.json").read_text())
    assert raw["mode"] == "trace" and raw["requests"]["by_status"] == {"200": 8}
    assert (out / "trace.jsonl").exists() and (out / "requests.csv").exists()
