"""Arrival traces: each generator's statistics, the file format's round trip and its errors, and
``greenserve trace``.

The generators are seeded, so every figure here is deterministic; the tolerances are set at about
four standard deviations of the estimate, wide enough to survive a change of numpy's streams and
narrow enough that a wrong formula (a reversed ramp, a constant rate, the wrong mean) fails.
"""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadgen import cli
from loadgen.errors import TraceError
from loadgen.trace import (
    GENERATORS,
    Trace,
    bursty,
    bursty_mean_rate,
    diurnal,
    generate,
    poisson,
    ramp,
    read_trace,
    step,
    trace_stats,
    uniform_jitter,
    window_rates,
    write_trace,
)

REPO = Path(__file__).resolve().parents[2]


def gaps(trace: Trace) -> np.ndarray:
    return np.diff(np.asarray(trace.times))


# --- generators ------------------------------------------------------------------------------------


def test_poisson_rate_and_memoryless_gaps() -> None:
    trace = poisson(rate=20, duration_s=500, seed=1)
    stats = trace_stats(trace, duration_s=500)
    assert stats.mean_rate_rps == pytest.approx(20, rel=0.04)  # σ ≈ 1 %
    assert stats.interarrival_cv == pytest.approx(1.0, abs=0.05)  # exponential gaps: CV 1
    assert stats.interarrival_mean_s == pytest.approx(1 / 20, rel=0.04)
    # Counts per second are Poisson too: variance ≈ mean (a periodic trace would give ≈ 0).
    counts = window_rates(trace, 1.0, 500)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.2)


def test_uniform_jitter_gaps_stay_within_bounds() -> None:
    trace = uniform_jitter(rate=16, jitter=0.2, duration_s=300, seed=2)
    g = gaps(trace)
    assert trace.times[0] == 0.0
    assert g.min() >= 0.8 / 16 - 1e-12 and g.max() <= 1.2 / 16 + 1e-12
    assert g.mean() == pytest.approx(1 / 16, rel=0.01)
    assert float(g.std() / g.mean()) == pytest.approx(0.2 / math.sqrt(3), rel=0.1)  # uniform: jitter/√3
    assert len(trace) == pytest.approx(16 * 300, rel=0.01)


def test_uniform_jitter_zero_is_periodic() -> None:
    trace = uniform_jitter(rate=8, jitter=0, duration_s=10, seed=0)
    assert len(trace) == 80
    assert np.allclose(gaps(trace), 1 / 8, atol=1e-12)


@pytest.mark.parametrize(
    ("rate_on", "rate_off", "mean_on_s", "mean_off_s"), [(40.0, 0.0, 1.0, 2.0), (30.0, 5.0, 2.0, 3.0)]
)
def test_bursty_mean_rate_and_burstiness(
    rate_on: float, rate_off: float, mean_on_s: float, mean_off_s: float
) -> None:
    trace = bursty(rate_on, rate_off, mean_on_s, mean_off_s, duration_s=10_000, seed=3)
    stats = trace_stats(trace, duration_s=10_000)
    expected = bursty_mean_rate(rate_on, rate_off, mean_on_s, mean_off_s)
    assert expected == pytest.approx((rate_on * mean_on_s + rate_off * mean_off_s) / (mean_on_s + mean_off_s))
    assert stats.mean_rate_rps == pytest.approx(expected, rel=0.06)  # σ ≈ 1.5 %
    assert stats.interarrival_cv is not None and stats.interarrival_cv > 1.3  # burstier than Poisson


def test_bursty_off_state_can_be_silent() -> None:
    trace = bursty(rate_on=50, rate_off=0, mean_on_s=0.5, mean_off_s=5, duration_s=600, seed=4)
    # Long silences (off periods) between dense bursts: some gaps far above the on-state mean.
    assert gaps(trace).max() > 20 / 50


def test_ramp_rate_per_window_follows_the_line() -> None:
    trace = ramp(start_rate=0, end_rate=40, duration_s=200, seed=5)
    rates = window_rates(trace, 20.0, 200)
    for k, measured in enumerate(rates):
        expected = 40 * (k + 0.5) * 20 / 200  # the rate at the window's centre
        sigma = math.sqrt(expected * 20) / 20
        assert abs(measured - expected) <= 4 * sigma + 0.05, (k, measured, expected)
    falling = ramp(start_rate=40, end_rate=0, duration_s=200, seed=5)
    assert window_rates(falling, 100.0, 200)[0] > 2 * window_rates(falling, 100.0, 200)[1]


def test_step_rates_per_step() -> None:
    rates = [5.0, 20.0, 0.0, 10.0]
    trace = step(rates, step_s=50, seed=6)
    measured = window_rates(trace, 50.0, 200)
    assert measured[2] == 0  # a pause is silent
    for rate, got in zip(rates, measured, strict=True):
        assert abs(got - rate) <= 4 * math.sqrt(rate * 50) / 50 + 1e-9, (rate, got)
    assert trace.duration_s < 200


def test_diurnal_trough_at_start_peak_mid_period() -> None:
    trace = diurnal(mean_rate=20, peak_to_trough=4, period_s=100, duration_s=1000, seed=7)
    phase = np.asarray(trace.times) % 100
    peak = int(((phase >= 45) & (phase < 55)).sum())
    trough = int(((phase < 5) | (phase >= 95)).sum())
    # Averaged over a 10 s band the ratio is (1 + a·0.984) / (1 − a·0.984) = 3.87 for a = 0.6.
    assert peak / trough == pytest.approx(3.87, abs=0.6)  # σ ≈ 0.15
    assert trace_stats(trace, duration_s=1000).mean_rate_rps == pytest.approx(20, rel=0.04)
    flat = diurnal(mean_rate=20, peak_to_trough=1, period_s=100, duration_s=1000, seed=7)
    flat_phase = np.asarray(flat.times) % 100
    assert ((flat_phase >= 45) & (flat_phase < 55)).sum() / ((flat_phase < 5) | (flat_phase >= 95)).sum() == (
        pytest.approx(1.0, abs=0.25)
    )


@pytest.mark.parametrize("name", list(GENERATORS))
def test_each_generator_is_deterministic_sorted_and_in_range(name: str) -> None:
    a, b, other = generate(name, seed=11), generate(name, seed=11), generate(name, seed=12)
    assert a == b
    assert a != other
    times = np.asarray(a.times)
    assert len(a) > 100
    assert times.min() >= 0 and np.all(np.diff(times) >= 0)
    params: dict[str, Any] = {p.name: p.default for p in GENERATORS[name].params}
    duration_s = params["duration_s"] if "duration_s" in params else len(params["rates"]) * params["step_s"]
    assert times.max() < duration_s


def test_registry_names_and_parameters_match_the_functions() -> None:
    assert set(GENERATORS) == {"poisson", "uniform-jitter", "bursty", "ramp", "step", "diurnal"}
    for kind in GENERATORS.values():
        assert kind.param_names == tuple(inspect.signature(kind.build).parameters), kind.name


@pytest.mark.parametrize(
    ("build", "kwargs", "fragment"),
    [
        (poisson, {"rate": 0, "duration_s": 10}, r"rate \(req/s\) must be a finite number > 0, got 0"),
        (poisson, {"rate": float("nan"), "duration_s": 10}, "got nan"),
        (poisson, {"rate": 1, "duration_s": -1}, r"duration_s \(s\) must be a finite number > 0"),
        (poisson, {"rate": 1, "duration_s": float("inf")}, "duration_s"),
        (poisson, {"rate": "16", "duration_s": 10}, "rate must be a number"),
        (poisson, {"rate": 1e9, "duration_s": 60}, "more than the limit"),
        (poisson, {"rate": 0.001, "duration_s": 1}, "has no arrivals"),
        (poisson, {"rate": 1, "duration_s": 10, "seed": -1}, "seed must be an integer"),
        (uniform_jitter, {"rate": 16, "jitter": 1.0, "duration_s": 10}, r"jitter must be in \[0, 1\)"),
        (
            uniform_jitter,
            {"rate": 16, "jitter": -0.1, "duration_s": 10},
            "jitter must be a finite number ≥ 0",
        ),
        (
            bursty,
            {"rate_on": 10, "rate_off": -1, "mean_on_s": 1, "mean_off_s": 1, "duration_s": 10},
            "rate_off",
        ),
        (
            bursty,
            {"rate_on": 10, "rate_off": 0, "mean_on_s": 0, "mean_off_s": 1, "duration_s": 10},
            "mean_on_s",
        ),
        (ramp, {"start_rate": 0, "end_rate": 0, "duration_s": 10}, "both 0"),
        (step, {"rates": [], "step_s": 10}, "non-empty list"),
        (step, {"rates": [0, 0], "step_s": 10}, "every rate is 0"),
        (step, {"rates": [1, -2], "step_s": 10}, r"rates\[1\]"),
        (diurnal, {"mean_rate": 10, "peak_to_trough": 0.5, "period_s": 10, "duration_s": 10}, "≥ 1"),
    ],
)
def test_bad_parameters_are_trace_errors(build: Any, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TraceError, match=fragment):
        build(**kwargs)


def test_generate_by_name_refuses_unknown_names_and_parameters() -> None:
    with pytest.raises(TraceError, match="unknown trace kind 'poison'; choose from poisson"):
        generate("poison")
    with pytest.raises(TraceError, match=r"unknown parameter\(s\) duration for poisson"):
        generate("poisson", duration=10)
    assert len(generate("poisson", rate=4.0, duration_s=10.0)) > 0


# --- statistics ------------------------------------------------------------------------------------


def test_trace_stats_by_hand() -> None:
    trace = Trace.from_times([0.0, 1.0, 1.5, 3.0], ["a", None, "b", None])
    stats = trace_stats(trace)
    assert stats.count == 4
    assert stats.duration_s == 3.0
    assert stats.mean_rate_rps == pytest.approx(4 / 3)
    assert stats.interarrival_mean_s == pytest.approx(1.0)
    assert stats.interarrival_cv == pytest.approx(math.sqrt(1 / 6))
    assert (stats.interarrival_min_s, stats.interarrival_max_s) == (0.5, 1.5)
    assert stats.peak_rate_rps == 2.0  # [1, 2) holds two arrivals
    assert stats.with_image_id == 2
    assert trace_stats(trace, duration_s=4.0).mean_rate_rps == 1.0
    assert trace_stats(trace, window_s=2.0).peak_rate_rps == 1.5  # [0, 2) holds three


def test_trace_stats_of_a_single_arrival() -> None:
    stats = trace_stats(Trace.from_times([0.0]))
    assert stats.count == 1 and stats.peak_rate_rps == 1.0
    assert stats.mean_rate_rps is None and stats.interarrival_cv is None and stats.interarrival_mean_s is None
    assert ("inter-arrival CV", "–") in stats.rows()


# --- the file format -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson", ".csv"])
def test_round_trip_with_image_ids(tmp_path: Path, suffix: str) -> None:
    trace = Trace.from_times([0.0, 0.25, 0.25, 1.125, 7.5], ["cat.jpg", None, "digits-3", "a,b", None])
    path = write_trace(trace, tmp_path / f"t{suffix}")
    assert read_trace(path) == trace


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_round_trip_of_a_generated_trace(tmp_path: Path, suffix: str) -> None:
    trace = poisson(rate=50, duration_s=20, seed=8)
    back = read_trace(write_trace(trace, tmp_path / f"p{suffix}"))
    assert back.image_ids is None
    assert np.allclose(back.times, trace.times, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("unsorted.jsonl", '{"t": 0}\n{"t": 1}\n{"t": 0.5}\n', "line 3: time 0.5 is before the previous"),
        ("negative.jsonl", '{"t": -1}\n', "line 1: time -1 is negative"),
        ("empty.jsonl", "\n\n", "has no arrivals"),
        ("empty.csv", "t\n", "has no arrivals"),
        ("malformed.jsonl", '{"t": 0}\n{"t": \n', "line 2: not JSON"),
        ("nan.jsonl", '{"t": 0}\n{"t": NaN}\n', "line 2: time nan is not a finite number"),
        ("string.jsonl", '{"t": "soon"}\n', "line 1: 't' must be a number"),
        ("header.csv", "time\n0\n", "line 1: expected the header 't' or 't,image_id'"),
        ("text.csv", "t\n0\nabc\n", "line 3: 't' must be a number, got 'abc'"),
        ("nan.csv", "t\n0\nnan\n", "line 3: time nan is not a finite number"),
        ("trace.txt", "0\n", "unknown trace format '.txt'"),
    ],
)
def test_bad_trace_files_name_the_line(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TraceError, match=fragment) as info:
        read_trace(path)
    assert str(path) in str(info.value)


# --- greenserve trace ------------------------------------------------------------------------------


def test_cli_generate_writes_the_trace_and_prints_its_stats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study.jsonl"
    args = [
        "generate",
        "uniform-jitter",
        "--rate",
        "16",
        "--jitter",
        "0.2",
        "--duration-s",
        "30",
        "--seed",
        "4",
    ]
    assert cli.main("trace", [*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    trace = read_trace(out)
    assert trace == read_trace(write_trace(uniform_jitter(16, 0.2, 30, seed=4), tmp_path / "same.jsonl"))
    assert f"wrote {out}: uniform-jitter (rate=16.0, jitter=0.2, duration_s=30.0, seed=4)" in printed
    assert f"arrivals                 {len(trace)}" in printed
    assert "duration                 30 s" in printed  # the nominal duration, not the last arrival


def test_cli_generate_step_takes_a_list_of_rates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "steps.csv"
    assert (
        cli.main("trace", ["generate", "step", "--rates", "2", "0", "8", "--step", "10", "--out", str(out)])
        == 0
    )
    assert "duration                 30 s" in capsys.readouterr().out
    assert read_trace(out) == read_trace(write_trace(step([2, 0, 8], 10, seed=0), tmp_path / "same.csv"))


@pytest.mark.parametrize("kind", [k.name for k in GENERATORS.values() if "duration_s" in k.param_names])
def test_cli_duration_s_is_the_flag_and_duration_its_documented_alias(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    new, old = tmp_path / "new.jsonl", tmp_path / "old.jsonl"
    assert cli.main("trace", ["generate", kind, "--duration-s", "12", "--out", str(new)]) == 0
    assert cli.main("trace", ["generate", kind, "--duration", "12", "--out", str(old)]) == 0
    assert read_trace(new) == read_trace(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.jsonl", "old.jsonl"]  # no temporary left
    assert "duration                 12 s" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main("trace", ["generate", kind, "--help"])
    assert "--duration-s DURATION_S, --duration DURATION_S" in capsys.readouterr().out
    with pytest.raises(TraceError, match=r"unknown parameter\(s\) duration for poisson"):
        generate("poisson", duration=10)  # the Python keyword is duration_s, as before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["generate", "poisson", "--rate", "-1"], "rate (req/s) must be a finite number > 0, got -1.0"),
        (["generate", "uniform-jitter", "--jitter", "1.5"], "jitter must be in [0, 1)"),
        (["generate", "diurnal", "--peak-to-trough", "nan"], "peak_to_trough must be a finite number ≥ 1"),
        (["generate", "bursty", "--seed", "-3"], "seed must be an integer ≥ 0"),
    ],
)
def test_cli_bad_parameters_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    out = tmp_path / "x.jsonl"
    assert cli.main("trace", [*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("greenserve trace: ") and fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_unparseable_number_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main("trace", ["generate", "poisson", "--rate", "fast", "--out", "x.jsonl"])
    assert info.value.code == 2
    assert "invalid float value: 'fast'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args", [["--help"], ["generate", "--help"], *(["generate", k, "--help"] for k in GENERATORS)]
)
def test_cli_help(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main("trace", args)
    assert info.value.code == 0
    assert "usage: greenserve trace" in capsys.readouterr().out


def test_cli_stats_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_trace(Trace.from_times([0.0, 1.0, 1.5, 3.0], ["a", None, "b", None]), tmp_path / "t.csv")
    assert cli.main("trace", ["stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mean rate                1.333 req/s" in out and "with image_id            2" in out
    assert cli.main("trace", ["stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["count"] == 4 and stats["peak_rate_rps"] == 2.0
    assert cli.main("trace", ["check", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok, 4 arrivals over 3 s\n"


def test_cli_check_reports_the_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"t": 0}\n{"t": 2}\n{"t": 1}\n')
    assert cli.main("trace", ["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"greenserve trace: {path}, line 3: time 1 is before the previous arrival (2); sort the trace\n"
    )
    assert cli.main("trace", ["check", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such trace file" in capsys.readouterr().err


def test_greenserve_trace_generate_as_a_process(tmp_path: Path) -> None:
    out = tmp_path / "poisson.csv"
    greenserve = Path(sys.executable).parent / "greenserve"
    done = subprocess.run(
        [
            str(greenserve),
            "trace",
            "generate",
            "poisson",
            "--rate",
            "10",
            "--duration",
            "5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "mean rate" in done.stdout
    assert read_trace(out) == read_trace(write_trace(poisson(10, 5), tmp_path / "same.csv"))
