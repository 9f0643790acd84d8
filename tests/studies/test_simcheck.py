"""The simulator check's flags, plan announcement (resume-aware) and report (the measurement itself,
sweeps on real servers, runs in `make bench-sim`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from studies.kit.flags import dataclass_from_args
from studies.simcheck.cli import build_parser, main
from studies.simcheck.report import summarize
from studies.simcheck.run import make_traces, plan_line
from studies.simcheck.settings import DEFAULT_OUT, SimCheckSettings
from studies.sweep.settings import configurations
from studies.sweep.table import CSV_NAME, write_rows


def settings_of(*argv: str) -> SimCheckSettings:
    settings: SimCheckSettings = dataclass_from_args(SimCheckSettings, build_parser().parse_args(argv))
    return settings


def test_defaults_and_the_old_spellings() -> None:
    assert settings_of() == SimCheckSettings() and settings_of().out == DEFAULT_OUT
    settings = settings_of("--duration", "12", "--threads", "2", "--models", "digits_cnn", "--reuse-profiles")
    assert (settings.duration_s, settings.torch_threads, settings.models) == (12.0, 2, ("digits_cnn",))
    assert settings.reuse_profiles
    assert settings_of("--duration-s", "7", "--max-waits-ms", "5,50").max_waits_ms == (5.0, 50.0)


@pytest.mark.parametrize("argv", [["--duration-s", "0"], ["--models", ""], ["--repeats", "0"]])
def test_bad_settings_are_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("python -m studies.simcheck: ")


def test_plan_line_counts_finished_sweep_rows_and_kept_profiles(tmp_path: Path) -> None:
    settings = SimCheckSettings(models=("digits_cnn",), duration_s=5.0, out=tmp_path, reuse_profiles=True)
    traces = make_traces(settings)
    configs = configurations(settings.sweep_settings())
    fresh = plan_line(settings, traces)
    assert fresh.startswith(
        f"simulator check: 1 model(s), 1 offline profile(s) to make, then 2 traces × {len(configs)} "
        f"configurations = {2 * len(configs)} served runs of 5 s"
    )
    assert "resuming" not in fresh
    # One configuration finished on the jitter trace, and the profile kept: both count as done.
    (tmp_path / "profile-digits_cnn.csv").write_text("kept")
    sweep = tmp_path / "sweep-jitter"
    sweep.mkdir()
    write_rows(sweep / CSV_NAME, [{"key": configs[0].key, "status": "ok", "wall_s": 9.0}])
    resumed = plan_line(settings, traces)
    assert "0 offline profile(s) to make" in resumed
    assert f"1 of {2 * len(configs)} done (resuming)" in resumed


def comparison(key: str, p99_error: float, j_error: float, *, calibration: bool = False) -> dict[str, Any]:
    return {
        "trace": "jitter", "key": key, "model": "digits_cnn", "calibration_run": calibration,
        "measured": {"latency_p99_ms": 100.0, "j_per_request": 0.01, "mean_batch_size": 2.0,
                     "energy_source": "estimate"},
        "predicted": {"latency_p99_ms": 100.0 * (1 + p99_error), "j_per_request": 0.01 * (1 + j_error),
                      "mean_batch_size": 2.0},
        "p99_error": p99_error, "j_error": j_error,
        "within_tolerance": abs(p99_error) <= 0.15 and abs(j_error) <= 0.15,
    }  # fmt: skip


COMPARISONS = [
    comparison("a", 0.10, -0.05),
    comparison("b", -0.30, 0.02),
    comparison("greedy", 0.9, 0.9, calibration=True),  # left out of the statistics
]


def test_summary_leaves_the_calibration_runs_out() -> None:
    summary = summarize(COMPARISONS)
    assert (summary["count"], summary["within"]) == (2, 1)
    assert math.isclose(summary["mean_abs_p99_error"], 0.2) and summary["max_abs_p99_error"] == 0.30
    assert math.isclose(summary["mean_abs_j_error"], 0.035) and summary["max_abs_j_error"] == 0.05
    assert math.isnan(summarize([])["mean_abs_p99_error"])


def test_report_is_printed_again_from_report_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "report.json"
    path.write_text(
        json.dumps({"tolerance": 0.15, "comparisons": COMPARISONS, "summary": summarize(COMPARISONS)})
    )
    assert main(["--report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "simulator vs sweep (target ±15%); energy source: estimate" in out
    assert "greedy (calibration)" in out and "1 of 2 validated configurations" in out
    (tmp_path / "other.json").write_text("{}")
    assert main(["--report", str(tmp_path / "other.json")]) == 2
