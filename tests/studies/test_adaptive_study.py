"""The adaptive-batching study: settings, the violation windows, static_best in hindsight, the targets
and summary.json's shape on constructed rows (pure), resuming with a fake runner, then a quick real
run against real servers."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from studies.adaptive.analysis import (
    FAILED_MS,
    check_targets,
    meets_objective,
    static_best,
    summary_document,
    violation_windows,
)
from studies.adaptive.cli import build_parser, settings_from_args
from studies.adaptive.cli import run as adaptive_cli
from studies.adaptive.run import make_trace, run_study, server_flags
from studies.adaptive.settings import (
    ADAPTIVE,
    LATENCY_ADAPTIVE,
    QUICK,
    STATIC,
    TRITON_LIKE,
    AdaptiveError,
    AdaptiveSettings,
    Policy,
    policies,
)
from studies.adaptive.table import CSV_NAME
from studies.kit.errors import LabError

SUMMARY_KEYS = {"j_per_request", "p99_ms", "violation_windows", "windows", "requests"}

# --- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"models": ()}, "no models"),
        ({"models": ("digits_cnn", "digits_cnn")}, "listed twice"),
        ({"batch_sizes": (0,)}, "batch size 0"),
        ({"max_waits_ms": (-1.0,)}, "max wait -1"),
        ({"triton_max_wait_ms": 70_000.0}, "max wait 70000"),
        ({"traces": ("weekly",)}, "unknown trace 'weekly'"),
        ({"slo_p99_ms": 0.0}, "slo_p99_ms"),
        ({"peak_to_trough": 0.5}, "peak_to_trough"),
        ({"step_ratio": 1.0}, "step_ratio"),
        ({"min_window_requests": 0}, "min_window_requests"),
        ({"energy_source": "solar"}, "unknown energy source 'solar'"),
    ],
)
def test_settings_refuse_bad_values_naming_them(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(AdaptiveError, match=message):
        AdaptiveSettings(**changes)


def test_policies_are_the_grid_then_the_three_named_ones() -> None:
    settings = AdaptiveSettings(batch_sizes=(4, 64), max_waits_ms=(10.0, 50.0), triton_max_wait_ms=0.1)
    keys = [p.key for p in policies(settings)]
    assert keys == [
        "static-b4-w10",
        "static-b4-w50",
        "static-b64-w10",
        "static-b64-w50",
        TRITON_LIKE,
        LATENCY_ADAPTIVE,
        ADAPTIVE,
    ]
    triton = policies(settings)[4]
    assert (triton.max_batch_size, triton.max_wait_ms, triton.batching) == (64, 0.1, "static")


def test_the_adaptive_servers_get_only_the_objective_and_the_static_ones_their_setting() -> None:
    settings = AdaptiveSettings(slo_p99_ms=250.0)
    adaptive = server_flags("digits_cnn", Policy(ADAPTIVE), settings)
    assert adaptive["batching"] == "adaptive" and adaptive["slo_p99_ms"] == 250.0
    assert "max_batch_size" not in adaptive and "max_wait_ms" not in adaptive
    latency = server_flags("digits_cnn", Policy(LATENCY_ADAPTIVE), settings)
    assert latency["batching"] == "latency-adaptive" and latency["slo_p99_ms"] == 250.0
    static = server_flags("shufflenet_v2_x0_5", Policy(STATIC, 16, 50.0), settings)
    assert (static["batching"], static["max_batch_size"], static["max_wait_ms"]) == ("static", 16, 50.0)
    assert "slo_p99_ms" not in static and static["weights"] == "random"


def test_quick_starts_from_its_own_defaults_and_flags_override_them() -> None:
    parser = build_parser()
    quick = settings_from_args(parser.parse_args(["--quick"]))
    assert quick.models == QUICK["models"] and quick.duration_s == QUICK["duration_s"]
    assert len(quick.batch_sizes) * len(quick.max_waits_ms) == 2
    given = settings_from_args(parser.parse_args(["--quick", "--duration-s", "2", "--traces", "steady"]))
    assert (given.duration_s, given.traces, given.models) == (2.0, ("steady",), QUICK["models"])
    assert settings_from_args(parser.parse_args([])) == AdaptiveSettings()


def test_the_traces_have_the_same_mean_rate_and_the_same_seed_gives_the_same_trace() -> None:
    settings = AdaptiveSettings(mean_rate=20.0, duration_s=200.0, peak_to_trough=10.0, burst_mean_s=5.0)
    for name in ("diurnal", "bursty", "steady"):
        trace = make_trace(name, settings)
        assert len(trace) / settings.duration_s == pytest.approx(20.0, rel=0.2), name
        assert make_trace(name, settings) == trace
    diurnal = make_trace("diurnal", settings).times
    trough = sum(1 for t in diurnal if t < 20) + sum(1 for t in diurnal if t >= 180)
    peak = sum(1 for t in diurnal if 80 <= t < 120)
    assert peak > 4 * trough  # the rate sweeps up ~10× and back


# --- violation windows -----------------------------------------------------------------------------


def _window(start: float, n: int, latency: float | None) -> list[tuple[float, float | None]]:
    return [(start + i * 0.9 / n, latency) for i in range(n)]


def test_a_window_whose_p99_exceeds_the_objective_is_a_violation() -> None:
    requests = _window(0, 50, 100.0) + _window(1, 50, 100.0)[:-1] + [(1.95, 900.0)] + _window(2, 50, 100.0)
    stats = violation_windows(requests, window_s=1.0, slo_p99_ms=500.0, min_requests=10, step_ratio=3.0)
    assert (stats.windows, stats.violations, stats.step_violations) == (3, 1, 0)
    assert stats.p99_ms[0] == pytest.approx(100.0) and stats.p99_ms[1] > 500.0
    assert stats.starts_s == (0.0, 1.0, 2.0)


def test_failed_requests_count_as_over_the_objective_and_thin_windows_are_not_judged() -> None:
    requests = _window(0, 20, None) + _window(1, 3, 5000.0) + _window(2, 20, 10.0)
    stats = violation_windows(requests, window_s=1.0, slo_p99_ms=500.0, min_requests=10, step_ratio=3.0)
    assert (stats.windows, stats.violations) == (2, 1)
    assert stats.p99_ms[0] == FAILED_MS


def test_only_the_first_window_of_a_step_up_is_excepted() -> None:
    # 10 req/s, then 100 req/s for three windows, all over the objective from the step on.
    requests = (
        _window(0, 10, 50.0) + _window(10, 100, 900.0) + _window(20, 100, 900.0) + _window(30, 100, 900.0)
    )
    stats = violation_windows(requests, window_s=10.0, slo_p99_ms=500.0, min_requests=5, step_ratio=3.0)
    assert (stats.windows, stats.violations, stats.step_violations) == (4, 3, 1)
    assert stats.violations_after_steps == 2


def test_no_requests_no_windows() -> None:
    stats = violation_windows([], window_s=10.0, slo_p99_ms=500.0, min_requests=1, step_ratio=3.0)
    assert (stats.windows, stats.violations) == (0, 0)


# --- hindsight, summary.json, targets on constructed rows --------------------------------------------


def _row(trace: str, policy: str, kind: str, j: float, p99: float, **extra: Any) -> dict[str, Any]:
    row = {
        "key": f"m|{trace}|{policy}",
        "model": "m",
        "trace": trace,
        "policy": policy,
        "kind": kind,
        "status": "ok",
        "j_per_request": str(j),
        "latency_p99_ms": str(p99),
        "rejected": "0",
        "errors": "0",
        "windows": "12",
        "violation_windows": "0",
        "step_violation_windows": "0",
        "completed": "1000",
        "energy_source": "estimate",
    }
    row.update({k: str(v) for k, v in extra.items()})
    return row


def test_static_best_is_the_cheapest_static_meeting_the_objective_in_hindsight() -> None:
    rows = [
        _row("t", "static-b64-w200", STATIC, 0.5, 900.0),  # cheapest, but over the objective
        _row("t", "static-b16-w50", STATIC, 0.8, 300.0, rejected=3),  # rejected some
        _row("t", "static-b16-w10", STATIC, 1.0, 100.0),
        _row("t", "static-b4-w10", STATIC, 1.2, 50.0),
        _row("t", ADAPTIVE, ADAPTIVE, 0.4, 400.0),  # not a static configuration
    ]
    best = static_best(rows, 500.0)
    assert best is not None and best["policy"] == "static-b16-w10"
    assert not meets_objective(rows[0], 500.0) and not meets_objective(rows[1], 500.0)
    assert static_best(rows[:2], 500.0) is None


def _study_rows() -> list[dict[str, Any]]:
    rows = []
    # Each static configuration is best on one trace only: no single setting serves all.
    for trace, cheap in (("diurnal", "static-b64-w200"), ("steady", "static-b4-w10")):
        for policy in ("static-b64-w200", "static-b4-w10"):
            rows.append(_row(trace, policy, STATIC, 1.0 if policy == cheap else 2.0, 300.0))
        rows.append(_row(trace, TRITON_LIKE, TRITON_LIKE, 2.0, 20.0))
        rows.append(_row(trace, LATENCY_ADAPTIVE, LATENCY_ADAPTIVE, 1.5, 450.0))
        rows.append(
            _row(trace, ADAPTIVE, ADAPTIVE, 1.02, 420.0, violation_windows=1, step_violation_windows=1)
        )
    return rows


def test_summary_json_has_exactly_the_issues_shape() -> None:
    document = summary_document(_study_rows(), model="m", slo_p99_ms=500.0)
    assert set(document) == {"slo_p99_ms", "model", "energy_source", "traces"}
    assert (document["slo_p99_ms"], document["model"], document["energy_source"]) == (500.0, "m", "estimate")
    assert set(document["traces"]) == {"diurnal", "steady"}
    for policies_ in document["traces"].values():
        assert {ADAPTIVE, "static_best", TRITON_LIKE, LATENCY_ADAPTIVE} <= set(policies_)
        for entry in policies_.values():
            assert set(entry) == SUMMARY_KEYS
            assert isinstance(entry["violation_windows"], int) and isinstance(entry["requests"], int)
            assert isinstance(entry["j_per_request"], float)
    assert document["traces"]["diurnal"]["static_best"]["j_per_request"] == 1.0
    assert document["traces"]["diurnal"][ADAPTIVE]["violation_windows"] == 1
    json.dumps(document, allow_nan=False)


def test_the_targets_are_met_here_and_say_by_how_much() -> None:
    targets = {t.name: t for t in check_targets(_study_rows(), model="m", slo_p99_ms=500.0)}
    windows = targets["diurnal: adaptive has 0 windows over the objective (the first of a step excepted)"]
    assert windows.met is True and "1 more at the start of a step" in windows.detail
    ratio = targets["diurnal: adaptive J/request ≤ 1.05× static_best"]
    assert ratio.met is True and "1.020×" in ratio.detail
    one = next(t for name, t in targets.items() if name.startswith("no single static"))
    assert one.met is True and "2.000×" in one.detail
    assert targets["diurnal: adaptive J/request ≤ 0.9× triton_like"].met is True
    assert targets["diurnal: adaptive J/request ≤ 0.9× latency_adaptive"].met is True  # 1.02 / 1.5


def test_missed_targets_say_by_how_much() -> None:
    rows = _study_rows()
    for row in rows:
        if row["kind"] == ADAPTIVE and row["trace"] == "steady":
            row.update(j_per_request="1.3", violation_windows="3", step_violation_windows="1")
        if row["policy"] == "static-b4-w10" and row["trace"] == "diurnal":
            row["j_per_request"] = "1.1"  # now within 1.15× of the best on both traces
    targets = {t.name: t for t in check_targets(rows, model="m", slo_p99_ms=500.0)}
    assert (
        targets["steady: adaptive has 0 windows over the objective (the first of a step excepted)"].met
        is False
    )
    ratio = targets["steady: adaptive J/request ≤ 1.05× static_best"]
    assert ratio.met is False and "missed by 0.250" in ratio.detail
    one = next(t for name, t in targets.items() if name.startswith("no single static"))
    assert one.met is False and "static-b4-w10" in one.detail and "1.100×" in one.detail


# --- resuming, with a fake runner --------------------------------------------------------------------


def _fake_runner(calls: list[str]) -> Any:
    def runner(
        model: str, policy: Policy, trace: Path, settings: AdaptiveSettings, run_dir: Path
    ) -> dict[str, Any]:
        calls.append(f"{trace.name.split('-')[1]}|{policy.key}")
        if policy.key == "static-b8-w50" and len(calls) < 6:
            raise RuntimeError("server died")
        return {
            "requests": 10,
            "completed": 10,
            "latency_p50_ms": 10.0,
            "latency_p99_ms": 20.0 if policy.kind != ADAPTIVE else 30.0,
            "mean_batch_size": 1.0,
            "j_per_request": 0.5 if policy.kind != ADAPTIVE else 0.4,
            "energy_source": "synthetic",
            "rejected": 0,
            "errors": 0,
            "windows": 3,
            "violation_windows": 0,
            "step_violation_windows": 0,
        }

    return runner


def test_a_study_resumes_retrying_only_failed_runs_and_refuses_other_settings(tmp_path: Path) -> None:
    settings = AdaptiveSettings(**{**QUICK, "traces": ("steady",), "simulate": False})
    calls: list[str] = []
    first = run_study(settings, tmp_path, runner=_fake_runner(calls), progress=False)
    assert (first.ran, first.failed) == (5, 1)
    with (tmp_path / CSV_NAME).open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"].split(":")[0] for r in rows].count("failed") == 1
    again = run_study(settings, tmp_path, runner=_fake_runner(calls), progress=False)
    assert (again.ran, again.skipped, again.failed) == (1, 4, 0)
    assert calls[-1] == "steady|static-b8-w50"
    document = json.loads((tmp_path / "summary.json").read_text())
    assert document["traces"]["steady"]["static_best"]["j_per_request"] == 0.5
    assert (tmp_path / "summary_digits_cnn.json").exists() and (tmp_path / "digits_cnn-steady.png").exists()
    with pytest.raises(LabError, match="slo_p99_ms"):
        run_study(
            AdaptiveSettings(**{**QUICK, "traces": ("steady",), "simulate": False, "slo_p99_ms": 100.0}),
            tmp_path,
            runner=_fake_runner(calls),
            progress=False,
        )


# --- a quick real run ----------------------------------------------------------------------------------


@pytest.mark.server
def test_quick_real_run_against_real_servers(tmp_path: Path) -> None:
    """--quick on two traces (diurnal, bursty): 2 static configurations and the 3 named policies,
    each a real greenserve with Locust replaying the trace; the simulator beside it."""
    out = tmp_path / "adaptive"
    code = adaptive_cli(
        "bench-adaptive",
        [
            "--quick",
            "--traces",
            "diurnal,bursty",
            "--energy-source",
            "estimate",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    summary_md = (out / "summary.md").read_text(encoding="utf-8")
    assert code == 0, summary_md
    with (out / CSV_NAME).open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 5 and all(r["status"] == "ok" for r in rows)
    for row in rows:
        assert int(row["completed"]) == int(row["requests"]) > 0
        assert float(row["j_per_request"]) > 0 and row["energy_source"] == "estimate"
        assert float(row["latency_p99_ms"]) >= float(row["latency_p50_ms"]) > 0
        assert int(row["windows"]) >= 1
        assert row["sim_latency_p99_ms"] or row["sim_note"]
    static_rows = [r for r in rows if r["kind"] == STATIC]
    assert all(r["sim_latency_p99_ms"] for r in static_rows)  # the static rule is always simulated
    document = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert document["model"] == "digits_cnn" and document["energy_source"] == "estimate"
    assert set(document["traces"]) == {"diurnal", "bursty"}
    for entries in document["traces"].values():
        assert {ADAPTIVE, "static_best", TRITON_LIKE, LATENCY_ADAPTIVE} <= set(entries)
        assert all(set(e) == SUMMARY_KEYS for e in entries.values())
    assert "### Targets" in summary_md
    assert (out / "digits_cnn-diurnal.png").exists() and (out / "digits_cnn-bursty.png").exists()
    assert (Path(next(r for r in rows if r["kind"] == ADAPTIVE)["run_dir"]) / "requests.csv").exists()
