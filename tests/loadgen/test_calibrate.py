"""Calibrating the simulator on one measured run: the formulas by hand, then against a real server."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from loadgen.calibrate import calibrate
from loadgen.cli import main as loadgen_main
from loadgen.errors import LoadgenError
from loadgen.loadtest import SCHEMA
from loadgen.simulate import SimConfig, simulate
from loadgen.trace import Trace, read_trace, write_trace
from studies.profile.format import ModelProfile, ProfilePoint, write_profile
from studies.profile.run import profile_model
from studies.sweep.run import run_sweep
from studies.sweep.settings import SweepSettings
from studies.sweep.table import read_rows


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


def _write_requests(run: Path, rows: list[list[object]]) -> None:
    """``requests.csv`` as the locustfile writes it (the columns calibration reads)."""
    columns = ["index", "status", "batch_size", "latency_ms", "queue_ms", "compute_ms", "energy_j"]
    with (run / "requests.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, "start_s", "end_s"])
        writer.writerows(rows)


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
    rows = []
    for i, compute in enumerate(compute_ms):
        # latency = 1 ms decode (the profile's) + 0.5 ms queue + compute + 6 ms of HTTP and client
        latency = 1.0 + 0.5 + compute + 6.0
        start = i * 0.1
        rows.append([i, "200", "1", latency, 0.5, compute, j_per_request, start, start + latency / 1000])
    _write_requests(run, rows)
    return run


def test_calibration_formulas_by_hand(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, [11.0, 13.0, 11.0, 13.0])
    cal = calibrate(PROFILE, [run], source_keys=["m|b8|greedy"])
    # One batch size and no arrival during a batch: a ratio through 0, served 12 ms against 10.
    assert cal.compute_scale == pytest.approx(12.0 / 10.0)
    assert cal.batch_overhead_ms == 0.0 and cal.arrival_delay_ms == 0.0
    assert cal.service_cv == pytest.approx(1.0 / 12.0)  # residuals ±1 ms around 12 ms
    # 0.2 J per batch over 12 ms, against the profile's 0.1 J per 10 ms (10 W): 1.667 × 10 W.
    assert cal.energy_scale == pytest.approx(0.2 / (10.0 * 0.012))
    # latency − queue − compute − the profile's 1 ms decode
    assert cal.post_batch_samples_ms == pytest.approx((6.0,) * 4)
    assert cal.source_keys == ("m|b8|greedy",) and cal.batches == 4 and cal.batch_sizes == (1,)
    config = cal.apply(SimConfig(max_batch_size=8, max_wait_ms=0).with_profile_overheads(PROFILE))
    predicted = simulate(read_trace(tmp_path / "trace.jsonl"), PROFILE, config).figures
    assert predicted.j_per_request == pytest.approx(0.2, rel=0.15)  # gamma-distributed batch times
    assert predicted.latency_p50_ms == pytest.approx(1.0 + 12.0 + 6.0, rel=0.2)


def test_calibration_fits_size_and_arrival_costs_by_hand(tmp_path: Path) -> None:
    """Batches of 1 and 2; some with a request arriving while they compute. Served time =
    1.5 × profile + 2 ms + 3 ms per arrival; energy = 0.8 × the profile's 10 W over that time +
    0.05 J per request of the batch (its own decode and serving); a batch's second answer leaves
    0.5 ms after its first, each 6 ms after the batch. Exactly: the fits must find those numbers."""
    run = tmp_path / "run"
    _run_dir(tmp_path, [10.0])  # the summary and trace; requests rewritten below
    rows = []
    t = 0.0
    index = 0
    for size, arrival in [(1, False), (2, False), (1, True), (2, True), (1, False), (2, True)]:
        profile_ms = 10.0 if size == 1 else 16.0
        compute = 1.5 * profile_ms + 2.0 + (3.0 if arrival else 0.0)
        energy = 0.8 * 10.0 * compute / 1000 + 0.05 * size
        for rank in range(size):  # sent at t, decoded by t + 1 ms, computing from t + 1.5 ms
            latency = 1.0 + 0.5 + compute + 6.0 + 0.5 * rank
            rows.append([index, "200", size, latency, 0.5, compute, energy / size, t, t + latency / 1000])
            index += 1
        if arrival:  # one more request, decoded 2.5 ms after this batch started (any answer)
            rows.append([index, "404", 1, 0, 0, 0, 0, t + 0.003, 0])
            index += 1
        t += 1.0
    _write_requests(run, rows)
    cal = calibrate(PROFILE, [run])
    assert cal.batches == 6 and cal.batch_sizes == (1, 2)
    assert cal.compute_scale == pytest.approx(1.5)
    assert cal.batch_overhead_ms == pytest.approx(2.0)
    assert cal.arrival_delay_ms == pytest.approx(3.0)
    assert cal.service_cv == pytest.approx(0.0, abs=1e-9)
    assert cal.energy_scale == pytest.approx(0.8)
    assert cal.arrival_energy_j == pytest.approx(0.05)
    assert cal.post_per_rank_ms == pytest.approx(0.5)
    assert cal.post_batch_samples_ms == pytest.approx((6.0,) * 9)
    config = cal.apply(SimConfig())
    assert (config.overhead_j_per_request, config.post_per_rank_ms) == (
        cal.arrival_energy_j,
        cal.post_per_rank_ms,
    )


def test_calibration_refuses_a_run_of_another_meter_or_without_answers(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, [10.0, 10.0])
    other = ModelProfile("m", "cpu", "rapl", (ProfilePoint(1, 1, 10, 10, 10, 0, 0.1, 0.1, 100, "rapl"),))
    with pytest.raises(LoadgenError, match="measured with estimate, the profile with rapl"):
        calibrate(other, [run])
    (run / "requests.csv").write_text("index,status\n")
    with pytest.raises(LoadgenError, match=r"answered requests|no answered request"):
        calibrate(PROFILE, [run])
    with pytest.raises(LoadgenError, match="summary"):
        calibrate(PROFILE, [tmp_path / "nowhere"])
    with pytest.raises(LoadgenError, match="no run"):
        calibrate(PROFILE, [])


@pytest.mark.server
def test_calibrated_simulator_predicts_a_real_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Profile the embedded model, serve it greedy and with a 100 ms wait, calibrate on both, and
    predict the waiting one: its batch sizes follow from the arrivals and the wait (tight), its p99
    from the wait plus the calibrated costs, its J/request from the fitted batch costs (looser: a
    shared 2-core machine)."""
    trace_path = write_trace(Trace.from_times(i / 20 for i in range(60)), tmp_path / "trace.jsonl")
    profile = profile_model("digits_cnn", batch_sizes=(1, 2, 4, 8), warmup=2, repeats=5, min_time_s=0.2)
    profile_path = write_profile(profile, tmp_path / "profile.csv")
    settings = SweepSettings(batch_sizes=("8", "greedy"), max_waits_ms=(100,), energy_source="estimate")
    result = run_sweep(settings, trace_path, tmp_path / "sweep", progress=False)
    assert result.failed == 0
    rows = {row["key"]: row for row in read_rows(result.csv_path)}
    greedy, waiting = rows["digits_cnn|b8|greedy"], rows["digits_cnn|b8|w100"]
    runs = tmp_path / "sweep" / "runs"
    calibration = calibrate(profile, [runs / "digits_cnn_b8_greedy", runs / "digits_cnn_b8_w100"])
    config = calibration.apply(SimConfig(max_batch_size=8, max_wait_ms=100).with_profile_overheads(profile))
    predicted = simulate(read_trace(trace_path), profile, config).figures
    assert predicted.mean_batch_size == pytest.approx(float(waiting["mean_batch_size"]), rel=0.15)
    assert predicted.latency_p99_ms == pytest.approx(float(waiting["latency_p99_ms"]), rel=0.3)
    assert predicted.j_per_request == pytest.approx(float(waiting["j_per_request"]), rel=0.5)
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
