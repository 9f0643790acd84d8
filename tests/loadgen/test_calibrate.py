"""Calibrating the simulator on one measured run: the formulas by hand, then against a real server."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from loadgen import sweep
from loadgen.calibrate import calibrate
from loadgen.cli import main as loadgen_main
from loadgen.errors import LoadgenError
from loadgen.loadtest import SCHEMA
from loadgen.profile import ModelProfile, ProfilePoint, profile_model, write_profile
from loadgen.simulate import SimConfig, simulate
from loadgen.trace import Trace, read_trace, write_trace


def _point(size: int, ms: float, joules: float) -> ProfilePoint:
    return ProfilePoint(size, 10, ms, ms, ms, 0.0, joules, joules / size, size / ms * 1000, "estimate")


PROFILE = ModelProfile(
    "m",
    "cpu",
    "estimate",
    (_point(1, 10.0, 0.1), _point(2, 16.0, 0.16)),
    preprocess_ms_per_image=1.0,
    preprocess_j_per_image=0.0,
)


def _run_dir(tmp_path: Path, compute_ms: list[float], *, j_per_request: float = 0.2) -> Path:
    """A load test's output as the locustfile writes it: 4 arrivals 100 ms apart, greedy, batches of 1."""
    trace = write_trace(Trace.from_times([0.0, 0.1, 0.2, 0.3]), tmp_path / "trace.jsonl")
    run = tmp_path / "run"
    run.mkdir()
    figures = {
        "requests": 4,
        "completed": 4,
        "throughput_rps": 12.0,
        "latency_p50_ms": 20.0,
        "latency_p90_ms": 20.0,
        "latency_p99_ms": 20.0,
        "mean_batch_size": 1.0,
        "j_per_request": j_per_request,
        "energy_source": "estimate",
        "rejected_queue_full": 0,
        "rejected_deadline": 0,
        "errors": 0,
    }
    summary = {
        "schema": SCHEMA,
        "mode": "trace",
        "finished": True,
        "settings": {
            "trace": str(trace),
            "batching": {"max_batch_size": 8, "max_wait_ms": 0.0, "max_queue": 100},
            "timeout_ms": None,
        },
        "requests": {"by_status": {"200": 4}},
        "lag": {"late": 0, "max_ms": 0.5},
        "server": {"mean_batch_size": 1.0, "mean_batch_ms": sum(compute_ms) / len(compute_ms)},
        "figures": figures,
        "warnings": [],
        "files": {},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    with (run / "requests.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "status", "batch_size", "latency_ms", "queue_ms", "compute_ms"])
        for i, compute in enumerate(compute_ms):
            # latency = 1 ms decode (the profile's) + 0.5 ms queue + compute + 6 ms of HTTP and client
            writer.writerow([i, "200", "1", 1.0 + 0.5 + compute + 6.0, 0.5, compute])
    return run


def test_calibration_formulas_by_hand(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, [11.0, 13.0, 11.0, 13.0])
    cal = calibrate(PROFILE, run, source_key="m|b8|greedy")
    assert cal.compute_scale == pytest.approx(12.0 / 10.0)  # served 12 ms against the profile's 10
    assert cal.post_batch_ms == pytest.approx(6.0)  # latency − queue − compute − the profile's 1 ms decode
    assert cal.service_cv == pytest.approx(1.0 / 12.0)  # population std 1 ms over mean 12 ms
    # Simulated with energy_scale 1 each batch of 1 costs the profile's 0.1 J; measured 0.2 J/request.
    assert cal.energy_scale == pytest.approx(2.0)
    assert cal.source_key == "m|b8|greedy"
    config = cal.apply(SimConfig(max_batch_size=8, max_wait_ms=0).with_profile_overheads(PROFILE))
    predicted = simulate(read_trace(tmp_path / "trace.jsonl"), PROFILE, config).figures
    assert predicted.j_per_request == pytest.approx(0.2)
    assert predicted.latency_p50_ms == pytest.approx(1.0 + 12.0 + 6.0, rel=0.2)


def test_calibration_refuses_a_run_of_another_meter_or_without_server_figures(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, [10.0, 10.0])
    other = ModelProfile("m", "cpu", "rapl", (ProfilePoint(1, 1, 10, 10, 10, 0, 0.1, 0.1, 100, "rapl"),))
    with pytest.raises(LoadgenError, match="measured with estimate, the profile with rapl"):
        calibrate(other, run)
    summary = json.loads((run / "summary.json").read_text())
    summary["server"] = None
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(LoadgenError, match="no batch figures"):
        calibrate(PROFILE, run)
    with pytest.raises(LoadgenError, match="summary"):
        calibrate(PROFILE, tmp_path / "nowhere")


@pytest.mark.server
def test_calibrated_simulator_predicts_a_real_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Profile the embedded model, serve it greedy and with a 100 ms wait, calibrate on the greedy
    run, and predict the other: batch sizes follow from the arrivals and the wait (tight), p99
    from the wait plus the calibrated costs (looser: a shared 2-core machine)."""
    trace_path = write_trace(Trace.from_times(i / 20 for i in range(60)), tmp_path / "trace.jsonl")
    profile = profile_model("digits_cnn", batch_sizes=(1, 2, 4, 8), warmup=2, repeats=5, min_time_s=0.2)
    profile_path = write_profile(profile, tmp_path / "profile.csv")
    settings = sweep.SweepSettings(batch_sizes=("8", "greedy"), max_waits_ms=(100,), energy_source="estimate")
    result = sweep.run_sweep(settings, trace_path, tmp_path / "sweep", progress=False)
    assert result.failed == 0
    rows = {row["key"]: row for row in sweep.read_rows(result.csv_path)}
    greedy, waiting = rows["digits_cnn|b8|greedy"], rows["digits_cnn|b8|w100"]
    calibration = calibrate(profile, tmp_path / "sweep" / "runs" / "digits_cnn_b8_greedy")
    config = calibration.apply(SimConfig(max_batch_size=8, max_wait_ms=100).with_profile_overheads(profile))
    predicted = simulate(read_trace(trace_path), profile, config).figures
    assert predicted.mean_batch_size == pytest.approx(float(waiting["mean_batch_size"]), rel=0.15)
    assert predicted.latency_p99_ms == pytest.approx(float(waiting["latency_p99_ms"]), rel=0.3)
    assert float(greedy["mean_batch_size"]) < float(waiting["mean_batch_size"])
    # The CLI does the same from the run directory.
    argv = ["--trace", str(trace_path), "--profile", str(profile_path), "--max-batch-size", "8"]
    argv += [
        "--max-wait-ms",
        "100",
        "--calibrate-from",
        str(tmp_path / "sweep" / "runs" / "digits_cnn_b8_greedy"),
    ]
    assert loadgen_main("simulate", argv) == 0
    assert "calibrated on" in capsys.readouterr().out
