"""The Locust load test: stages, records and the summary in-process; then Locust itself (always a
subprocess: it monkey-patches the standard library with gevent) against real servers on 127.0.0.1."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadgen import loadtest
from loadgen.errors import LoadgenError
from loadgen.figures import RunFigures
from loadgen.loadtest import NOT_SENT, UNFINISHED, RequestRecord, Stage, parse_stages, stage_target
from loadgen.metrics import parse_metrics
from loadgen.trace import Trace, write_trace
from tests.conftest import server_process

SLOW_MODEL = ("--model", "tests.fakes:slow_classifier", "--max-batch-size", "1", "--no-access-log")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _locust_requests(csv_prefix: Path) -> int:
    """Requests that Locust's own statistics counted for POST /classify."""
    rows = _rows(Path(f"{csv_prefix}_stats.csv"))
    return int(next(r for r in rows if r["Name"] == "/classify")["Request Count"])


# --- in-process: stages, records, summary ------------------------------------------------------


def test_parse_stages_reads_durations_users_and_rates() -> None:
    assert parse_stages("10s:5, 1.5m:20@2,500ms:0") == (
        Stage(10.0, 5),
        Stage(90.0, 20, 2.0),
        Stage(0.5, 0),
    )


@pytest.mark.parametrize("spec", ["10s", "10x:5", "10s:five", "0s:5", "10s:-1", "10s:5@0", "10s:5@nan", ""])
def test_parse_stages_refuses_malformed_specs_naming_the_stage(spec: str) -> None:
    with pytest.raises(LoadgenError, match="stage 1"):
        parse_stages(spec)


def test_step_stages_hold_users_and_end() -> None:
    stages = parse_stages("10s:5,20s:20@2,10s:5")
    assert stage_target(stages, "step", 0.0) == (5, 5.0)
    assert stage_target(stages, "step", 10.0) == (20, 2.0)
    assert stage_target(stages, "step", 39.9) == (5, 5.0)
    assert stage_target(stages, "step", 40.0) is None


def test_ramp_stages_follow_the_line_one_tick_ahead() -> None:
    stages = parse_stages("10s:10,10s:0")
    # From 0 towards 10 over 10 s: the count due at the next tick, at least 1 user/s.
    assert stage_target(stages, "ramp", 0.0) == (1, 1.0)
    assert stage_target(stages, "ramp", 4.0) == (5, 1.0)
    assert stage_target(stages, "ramp", 9.5) == (10, 1.0)  # not past the stage's end
    assert stage_target(stages, "ramp", 14.0) == (5, 1.0)  # and back down
    assert stage_target(stages, "ramp", 20.0) is None


def test_figures_count_unsent_and_unfinished_as_errors_and_time_latency_from_the_schedule() -> None:
    records = [
        RequestRecord(0, "a", scheduled_s=0.0, start_s=0.001, end_s=0.101, status="200"),
        RequestRecord(1, "b", scheduled_s=0.5, start_s=0.530, end_s=1.0, status="200"),
        RequestRecord(2, "c", scheduled_s=0.6, start_s=0.6, end_s=0.61, status="429"),
        RequestRecord(3, "d", scheduled_s=0.7, start_s=0.7, end_s=0.75, status="504"),
        RequestRecord(4, "e", scheduled_s=0.8, start_s=0.8, end_s=0.85, status="ConnectionRefusedError"),
        RequestRecord(5, "f", scheduled_s=0.9, start_s=0.9, status=UNFINISHED),
        RequestRecord(6, "g", scheduled_s=5.0, status=NOT_SENT),
    ]
    figures = loadtest.run_figures(records, server=None)
    assert (figures.requests, figures.completed) == (7, 2)
    assert (figures.rejected_queue_full, figures.rejected_deadline, figures.errors) == (1, 1, 3)
    assert figures.latency_p50_ms == pytest.approx(300.5)  # 100.5 ms and 500 ms from the schedule
    assert figures.throughput_rps == pytest.approx(2 / 1.0)
    lag = loadtest.lag_stats(records, threshold_ms=10.0)
    assert (lag.late, lag.started) == (1, 6)
    assert lag.max_ms == pytest.approx(30.0)
    assert lag.warning is not None and "1 of 6" in lag.warning


METRICS_BEFORE = """
greenserve_requests_total{status="200"} 10
greenserve_rejected_total{reason="queue_full"} 1
greenserve_rejected_total{reason="deadline"} 0
greenserve_batch_energy_joules_total{source="estimate"} 2.0
greenserve_device_energy_joules_total{source="estimate",device="estimate:boot:1"} 3.0
greenserve_batch_size_count 5
greenserve_batch_size_sum 10
"""
METRICS_AFTER = """
greenserve_requests_total{status="200"} 30
greenserve_requests_total{status="429"} 3
greenserve_rejected_total{reason="queue_full"} 4
greenserve_rejected_total{reason="deadline"} 0
greenserve_batch_energy_joules_total{source="estimate"} 6.0
greenserve_device_energy_joules_total{source="estimate",device="estimate:boot:1"} 13.0
greenserve_batch_size_count 10
greenserve_batch_size_sum 30
"""

#: A GPU server: the GPU's nvml and the CPU's rapl, two RAPL zones, and read errors during the run.
GPU_BEFORE = """
greenserve_requests_total{status="200"} 0
greenserve_batch_energy_joules_total{source="nvml"} 0
greenserve_batch_energy_joules_total{source="rapl"} 0
greenserve_device_energy_joules_total{source="nvml",device="GPU-1"} 1000.0
greenserve_device_energy_joules_total{source="rapl",device="boot:package-0"} 500.0
greenserve_device_energy_joules_total{source="rapl",device="boot:dram-0"} 50.0
greenserve_energy_read_errors_total{source="nvml"} 0
greenserve_energy_read_errors_total{source="rapl"} 0
"""
GPU_AFTER = """
greenserve_requests_total{status="200"} 100
greenserve_batch_energy_joules_total{source="nvml"} 30.0
greenserve_batch_energy_joules_total{source="rapl"} 10.0
greenserve_device_energy_joules_total{source="nvml",device="GPU-1"} 1200.0
greenserve_device_energy_joules_total{source="rapl",device="boot:package-0"} 580.0
greenserve_device_energy_joules_total{source="rapl",device="boot:dram-0"} 70.0
greenserve_energy_read_errors_total{source="nvml"} 2
greenserve_energy_read_errors_total{source="rapl"} 0
"""


def test_server_delta_gives_joules_per_200_and_mean_batch_size() -> None:
    delta = loadtest.server_delta(parse_metrics(METRICS_BEFORE), parse_metrics(METRICS_AFTER))
    assert delta.requests_by_status == {"200": 20, "429": 3}
    assert delta.rejected_by_reason == {"queue_full": 3}
    assert delta.j_per_request == pytest.approx(4.0 / 20)
    assert delta.energy_source == "estimate"
    assert delta.batches == 5
    assert delta.mean_batch_size == pytest.approx(4.0)
    # Attributed (batch energy) and amortised (device energy, idle included where the meter has it).
    assert delta.j_per_request_label == "attributed, idle excluded"
    assert delta.device_energy_j == {"estimate:boot:1": pytest.approx(10.0)}
    assert delta.amortised_j_per_request == pytest.approx(10.0 / 20)
    assert delta.amortised_energy_source == "estimate"
    assert delta.amortised_label == "amortised, idle not included"  # the estimate has no idle draw


def test_server_delta_on_a_gpu_counts_each_device_once_and_labels_both_figures() -> None:
    delta = loadtest.server_delta(parse_metrics(GPU_BEFORE), parse_metrics(GPU_AFTER))
    assert delta.j_per_request == pytest.approx(40.0 / 100)
    assert delta.energy_source == "nvml+rapl"
    assert (
        delta.j_per_request_label == "attributed, idle excluded except the GPU's static draw during batches"
    )
    assert delta.device_energy_j == {
        "GPU-1": pytest.approx(200.0),
        "boot:dram-0": pytest.approx(20.0),
        "boot:package-0": pytest.approx(80.0),
    }
    assert delta.amortised_j_per_request == pytest.approx(300.0 / 100)
    assert (delta.amortised_energy_source, delta.amortised_label) == ("nvml+rapl", "amortised, idle included")
    assert delta.energy_read_errors == {"nvml": 2}
    # A device that two scrapes list under two sources (never one server's doing) is counted once.
    line = 'greenserve_device_energy_joules_total{source="synthetic",device="GPU-1"} %s\n'
    doubled = loadtest.server_delta(
        parse_metrics(GPU_BEFORE + line % 1000), parse_metrics(GPU_AFTER + line % 1150)
    )
    assert doubled.device_energy_j["GPU-1"] == pytest.approx(200.0)
    assert doubled.amortised_j_per_request == pytest.approx(3.0)
    records = [RequestRecord(0, "a", scheduled_s=0.0, start_s=0.0, end_s=0.1, status="200")]
    raw = loadtest.build_summary(
        records,
        mode="trace",
        server=delta,
        lag_threshold_ms=10.0,
        finished=True,
        duration_s=1.0,
        settings={},
        files={},
    )
    assert raw["figures"]["amortised_j_per_request"] == pytest.approx(3.0)
    assert any("read errors" in w and "nvml × 2" in w for w in raw["warnings"])
    report = loadtest.format_report(raw)
    assert "0.4 J/request (nvml+rapl, attributed, idle excluded except" in report
    assert "3 J/request (nvml+rapl, amortised, idle included)" in report


def test_summary_round_trips_through_json(tmp_path: Path) -> None:
    records = [RequestRecord(0, "a", scheduled_s=0.0, start_s=0.0, end_s=0.1, status="200")]
    delta = loadtest.server_delta(parse_metrics(METRICS_BEFORE), parse_metrics(METRICS_AFTER))
    raw = loadtest.build_summary(
        records,
        mode="trace",
        server=delta,
        lag_threshold_ms=10.0,
        finished=True,
        duration_s=1.0,
        settings={"top_k": 1},
        files={"request_log": None},
    )
    summary = loadtest.LoadtestSummary.from_json(loadtest.write_summary(raw, tmp_path / "s.json"))
    assert set(raw["figures"]) == set(RunFigures.field_names())
    assert summary.figures.j_per_request == pytest.approx(0.2)
    assert (summary.late_requests, summary.finished, summary.warnings) == (0, True, ())
    assert summary.figures.amortised_j_per_request == pytest.approx(0.5)
    report = loadtest.format_report(raw)
    assert "0.2 J/request (estimate, attributed, idle excluded)" in report
    assert "0.5 J/request (estimate, amortised, idle not included)" in report
    # A summary written before the amortised figure existed still reads.
    for name in RunFigures.optional_field_names():
        del raw["figures"][name]
    old = loadtest.LoadtestSummary.from_json(loadtest.write_summary(raw, tmp_path / "old.json"))
    assert old.figures.j_per_request == pytest.approx(0.2)
    assert old.figures.amortised_j_per_request is None


def test_a_request_without_energy_is_recorded_and_warned_about(tmp_path: Path) -> None:
    records = [
        RequestRecord(0, "a", start_s=0.0, end_s=0.1, status="200", energy_j=0.01, energy_source="estimate"),
        RequestRecord(
            1, "b", start_s=0.0, end_s=0.1, status="200", energy_source="unknown: rapl meter stalled"
        ),
    ]
    records[0].energy_idle_included = False
    raw = loadtest.build_summary(
        records,
        mode="closed",
        server=None,
        lag_threshold_ms=10.0,
        finished=True,
        duration_s=1.0,
        settings={},
        files={},
    )
    assert any("1 requests answered 200 without an energy figure" in w for w in raw["warnings"])
    rows = _rows(loadtest.write_request_log(records, tmp_path / "requests.csv"))
    assert [(r["energy_j"], r["energy_source"], r["energy_idle_included"]) for r in rows] == [
        ("0.010000", "estimate", "false"),
        ("", "unknown: rapl meter stalled", ""),
    ]


# --- Locust against real servers ---------------------------------------------------------------


@pytest.mark.server
def test_open_loop_replay_keeps_the_schedule_while_answers_fall_behind(tmp_path: Path) -> None:
    # 15 arrivals 50 ms apart; the model answers one request per 200 ms, so the queue grows.
    trace = write_trace(Trace.from_times(i * 0.05 for i in range(15)), tmp_path / "trace.jsonl")
    out = tmp_path / "run"
    with server_process(tmp_path, *SLOW_MODEL, env={"FAKE_DELAY_S": "0.2"}) as server:
        summary = loadtest.run_trace(server.url, trace, out, images="digits")

    rows = _rows(out / "requests.csv")
    assert [r["status"] for r in rows] == ["200"] * 15
    scheduled = [float(r["scheduled_s"]) for r in rows]
    starts = [float(r["start_s"]) for r in rows]
    ends = [float(r["end_s"]) for r in rows]
    latencies_ms = [float(r["latency_ms"]) for r in rows]
    # Every request started on time although answers took far longer than the gaps ...
    assert max(abs(s - t) for s, t in zip(starts, scheduled, strict=True)) < 0.05, rows
    in_flight_at_last_start = sum(1 for s, e in zip(starts, ends, strict=True) if s <= starts[-1] < e)
    assert in_flight_at_last_start >= 8, rows
    # ... and latency, from the schedule, grows with the queue.
    assert latencies_ms[-1] > latencies_ms[0] + 1500, latencies_ms
    assert all(
        float(r["latency_ms"]) == pytest.approx((e - t) * 1000, abs=0.01)
        for r, e, t in zip(rows, ends, scheduled, strict=True)
    )

    figures = summary.figures
    assert (summary.mode, summary.finished) == ("trace", True)
    assert (figures.requests, figures.completed, figures.errors) == (15, 15, 0)
    assert figures.latency_p99_ms is not None and figures.latency_p99_ms > 1500
    assert figures.mean_batch_size == 1.0
    assert summary.max_lag_ms is not None and summary.max_lag_ms < 50
    assert summary.energy_source == "estimate"
    assert _locust_requests(out / "locust") == 15  # Locust's own statistics saw every request


@pytest.mark.server
def test_closed_loop_plain_and_staged_runs_write_csv_and_joules_from_metrics(tmp_path: Path) -> None:
    with server_process(tmp_path, "--no-access-log") as server:
        # Plain -u/-t with the shape class in the locustfile: Locust's usual meaning, no warning.
        plain = tmp_path / "plain"
        started = time.monotonic()
        result = subprocess.run(
            [
                *loadtest.locust_argv(server.url, plain, images="digits", top_k=3, timeout_ms=None, max_s=2),
                "--users",
                "2",
                "--spawn-rate",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert time.monotonic() - started < 30
        assert "no impact on LoadShapes" not in result.stderr
        assert '"ClassifyUser": 2' in result.stderr
        assert "J/request (estimate, attributed, idle excluded)" in result.stdout
        assert "J/request (estimate, amortised, idle not included)" in result.stdout
        raw = json.loads((plain / "summary.json").read_text())
        assert raw["settings"]["users"] == 2 and raw["mode"] == "closed"

        staged = loadtest.run_closed(server.url, tmp_path / "staged", images="digits", stages="1s:1,2s:3")

    assert _locust_requests(tmp_path / "staged" / "locust") > 0
    figures = staged.figures
    assert staged.mode == "closed" and figures.completed > 0
    assert set(staged.requests_by_status) == {"200"}
    assert figures.j_per_request is not None and figures.j_per_request > 0
    assert figures.energy_source == staged.energy_source == "estimate"
    # The device's energy (the whole process's CPU time, for the estimate) holds the attributed.
    assert figures.amortised_j_per_request is not None
    assert figures.amortised_j_per_request >= 0.9 * figures.j_per_request
    assert (figures.j_per_request_label, figures.amortised_label) == (
        "attributed, idle excluded",
        "amortised, idle not included",
    )
    assert staged.request_log_path is not None
    assert {row["energy_idle_included"] for row in _rows(staged.request_log_path)} == {"false"}
    assert figures.mean_batch_size is not None and figures.mean_batch_size >= 1
    assert staged.raw["server"]["requests_by_status"]["200"] >= figures.completed
    assert staged.raw["settings"]["stages"] == "1s:1,2s:3"
    assert 2.5 < staged.raw["duration_s"] < 10  # the stages ended the test


@pytest.mark.server
def test_rejections_and_deadlines_are_counted_by_status_on_both_sides(tmp_path: Path) -> None:
    # 8 arrivals at once into a queue of 2 behind a 300 ms model with a 150 ms deadline: the
    # overflow gets 429, the queued ones 504; a late arrival finds the server idle (200).
    trace = write_trace(Trace.from_times([0.0] * 8 + [1.5]), tmp_path / "trace.csv")
    out = tmp_path / "run"
    args = (*SLOW_MODEL, "--max-queue", "2")
    with server_process(tmp_path, *args, env={"FAKE_DELAY_S": "0.3"}) as server:
        summary = loadtest.run_trace(server.url, trace, out, images="digits", timeout_ms=150)

    counts = summary.requests_by_status
    assert set(counts) == {"200", "429", "504"} and sum(counts.values()) == 9, counts
    figures = summary.figures
    assert figures.completed == counts["200"]
    assert (figures.rejected_queue_full, figures.rejected_deadline, figures.errors) == (
        counts["429"],
        counts["504"],
        0,
    )
    server_side = summary.raw["server"]
    assert server_side["requests_by_status"] == counts
    assert server_side["rejected_by_reason"] == {"queue_full": counts["429"], "deadline": counts["504"]}
    assert {r["Name"] for r in _rows(out / "locust_failures.csv")} == {"/classify"}


def test_an_image_id_missing_from_the_images_is_a_clear_error_before_any_load(tmp_path: Path) -> None:
    trace = write_trace(Trace.from_times([0.0, 0.1], ["digits-1", "digits-9999"]), tmp_path / "t.jsonl")
    # Nothing listens on the port: the trace is checked against the images before any request.
    with pytest.raises(LoadgenError, match=r"image_id digits-9999 not in the images 'digits'") as info:
        loadtest.run_trace("http://127.0.0.1:9", trace, tmp_path / "run", images="digits")
    assert "exit code 2" in str(info.value)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_locust_is_never_imported_by_the_runner() -> None:
    code = "import sys, loadgen.loadtest; sys.exit('locust' in sys.modules or 'gevent' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
