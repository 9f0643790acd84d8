"""The sweep: grid parsing, resume, report and recommendation (with a fake runner), then a tiny real
sweep (a real greenserve per configuration, Locust replaying a trace)."""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from loadgen.errors import GridError
from loadgen.figures import RunFigures
from loadgen.trace import Trace, write_trace
from studies.kit.flags import dataclass_from_args
from studies.kit.progress import format_duration
from studies.sweep.cli import build_parser
from studies.sweep.cli import run as sweep_cli
from studies.sweep.plots import amortised_axis, attributed_axis
from studies.sweep.points import Point, pareto, recommend, same_batches
from studies.sweep.report import write_report
from studies.sweep.run import OVERHEAD_S, estimate_s, run_sweep, server_flags, trace_path
from studies.sweep.settings import SweepConfig, SweepSettings, TraceSettings, configurations
from studies.sweep.table import COLUMNS, CSV_NAME


def _trace(tmp_path: Path, name: str = "trace.jsonl", rate: float = 10.0, seconds: float = 1.0) -> Path:
    return write_trace(Trace.from_times(i / rate for i in range(int(rate * seconds))), tmp_path / name)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "sweep.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# --- the grid ---------------------------------------------------------------------------------


def test_configurations_cross_sizes_and_waits_and_add_one_greedy_per_model() -> None:
    settings = SweepSettings(
        models=("digits_cnn", "noop"), batch_sizes=("16", "64", "greedy"), max_waits_ms=(10, 50)
    )
    configs = configurations(settings)
    assert [c.key for c in configs] == [
        "digits_cnn|b16|w10",
        "digits_cnn|b16|w50",
        "digits_cnn|b64|w10",
        "digits_cnn|b64|w50",
        "digits_cnn|b64|greedy",
        "noop|b16|w10",
        "noop|b16|w50",
        "noop|b64|w10",
        "noop|b64|w50",
        "noop|b64|greedy",
    ]
    greedy = configs[4]
    assert greedy.greedy and greedy.max_wait_ms == 0 and greedy.max_batch_size == 64


def test_greedy_alone_defaults_to_128_unless_told() -> None:
    assert configurations(SweepSettings(batch_sizes=("greedy",)))[0].max_batch_size == 128
    assert (
        configurations(SweepSettings(batch_sizes=("greedy",), greedy_max_batch_size=8))[0].max_batch_size == 8
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_sizes": ("16", "big")}, "'big' is neither an integer nor 'greedy'"),
        ({"batch_sizes": ("0",)}, "outside 1..4096"),
        ({"batch_sizes": ("16", "16")}, "listed twice"),
        ({"batch_sizes": ()}, "no batch sizes"),
        ({"max_waits_ms": (-1.0,)}, "outside 0..60000"),
        ({"max_waits_ms": (math.nan,)}, "outside 0..60000"),
        ({"max_waits_ms": ()}, "no max waits"),
        ({"models": ()}, "no models"),
        ({"models": ("resnet1",)}, "unknown model 'resnet1'"),
        ({"models": ("digits_cnn", "digits_cnn")}, "listed twice"),
        ({"p99_target_ms": 0.0}, "p99 target"),
    ],
)
def test_bad_grids_are_refused_with_the_reason(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(GridError, match=message.replace("(", r"\(").replace(".", r"\.")):
        configurations(SweepSettings(**overrides))


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(GridError, match="did you mean resnet18"):
        configurations(SweepSettings(models=("resnet-18",)))


def test_cli_bad_grid_is_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert sweep_cli("sweep", ["--batch-sizes", "16,x", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "'x' is neither an integer" in err
    assert not (tmp_path / "sweep.csv").exists()


def test_cli_bad_trace_is_exit_2_naming_the_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 0}\n{"t": 2}\n{"t": 1}\n')
    assert sweep_cli("sweep", ["--trace", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "line 3" in capsys.readouterr().err
    assert not (tmp_path / "out" / "sweep.csv").exists()


# --- running, resuming and reporting with a fake runner ---------------------------------------


class FakeRunner:
    """J/request falls and p99 grows with the batch size, like a real model under batching."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or set()

    def __call__(
        self, config: SweepConfig, settings: SweepSettings, trace: Path, out: Path
    ) -> dict[str, Any]:
        self.calls.append(config.key)
        if config.key in self.fail:
            raise RuntimeError("server exited with code 2")
        size = config.max_batch_size
        p99 = 50.0 + 10.0 * size + config.max_wait_ms
        return {
            "requests": 10,
            "completed": 10,
            "throughput_rps": 10.0,
            "latency_p50_ms": p99 / 2,
            "latency_p90_ms": p99 * 0.9,
            "latency_p99_ms": p99,
            "mean_batch_size": float(min(size, 10)),
            "j_per_request": 1.0 + 8.0 / size + (0.5 if config.greedy else 0.0),
            "energy_source": "estimate",
            "j_per_request_label": "attributed, idle excluded",
            "amortised_j_per_request": 2.0 + 8.0 / size,
            "amortised_energy_source": "estimate",
            "amortised_label": "amortised, idle not included",
            "rejected_queue_full": 0,
            "rejected_deadline": 0,
            "errors": 0,
            "max_lag_ms": 1.0,
            "late_requests": 0,
            "wall_s": 0.1,
        }


def test_sweep_writes_csv_plots_summary_and_resume_skips_done_rows(tmp_path: Path) -> None:
    trace = _trace(tmp_path)
    settings = SweepSettings(models=("digits_cnn",), batch_sizes=("1", "4", "greedy"), max_waits_ms=(10,))
    runner = FakeRunner(fail={"digits_cnn|b4|w10"})
    result = run_sweep(settings, trace, tmp_path / "out", runner=runner, progress=False)
    assert (result.ran, result.skipped, result.failed) == (3, 0, 1)
    rows = _rows(tmp_path / "out")
    assert [r["status"].split(":")[0] for r in rows] == ["ok", "failed", "ok"]
    assert "server exited with code 2" in rows[1]["status"]
    for name in ("summary.md", "pareto.png", "energy-vs-batch.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (tmp_path / "out" / "pareto.png").read_bytes()[:4] == b"\x89PNG"

    rerun = FakeRunner()
    result = run_sweep(settings, trace, tmp_path / "out", runner=rerun, progress=False)
    assert rerun.calls == ["digits_cnn|b4|w10"]  # only the failed one is retried
    assert (result.ran, result.skipped, result.failed) == (1, 2, 0)
    rows = _rows(tmp_path / "out")
    assert sorted(r["key"] for r in rows) == sorted(c.key for c in configurations(settings))
    assert all(r["status"] == "ok" for r in rows)


def test_resuming_with_another_trace_is_refused(tmp_path: Path) -> None:
    settings = SweepSettings(batch_sizes=("2",), max_waits_ms=(5,))
    run_sweep(settings, _trace(tmp_path), tmp_path / "out", runner=FakeRunner(), progress=False)
    other = _trace(tmp_path, "other.jsonl", rate=20.0)
    with pytest.raises(GridError, match="another trace"):
        run_sweep(settings, other, tmp_path / "out", runner=FakeRunner(), progress=False)


def test_summary_recommends_the_lowest_energy_meeting_the_target(tmp_path: Path) -> None:
    trace = _trace(tmp_path)
    settings = SweepSettings(batch_sizes=("1", "4", "16"), max_waits_ms=(0,), p99_target_ms=100.0)
    run_sweep(settings, trace, tmp_path / "out", runner=FakeRunner(), progress=False)
    summary = (tmp_path / "out" / "summary.md").read_text()
    # p99 = 50 + 10·b: b1 60 ms, b4 90 ms, b16 210 ms; J = 1 + 8/b: b4 is the cheapest under 100 ms.
    assert (
        "Recommendation: **b4 w0ms** — 3 J/request (estimate, attributed, idle excluded) at p99 90 ms, "
        "the lowest energy meeting the target; amortised 4 J/request (estimate, amortised, idle not included)"
    ) in summary
    assert "*estimate*" in summary
    # Every J/request column says which figure it is, its source and its idle.
    assert (
        "| configuration | J/request (estimate, attributed, idle excluded) "
        "| J/request (estimate, amortised, idle not included) | p99 ms" in summary
    )
    # With a target nothing meets, the summary says so and names the fastest.
    write_report(tmp_path / "out" / "sweep.csv", tmp_path / "out", p99_target_ms=10.0)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "No configuration meets p99 ≤ 10 ms" in summary and "b1 w0ms (60 ms" in summary


def _point(key: str, p99: float, joules: float, rejected: int = 0) -> Point:
    return Point(key, "m", False, 1, 0.0, p99, joules, "estimate", 1.0, 1.0, rejected, 0)


def test_a_table_from_before_the_amortised_figure_is_resumed_and_reported(tmp_path: Path) -> None:
    """Old tables lack the amortised and label columns: resumed as they are, rewritten with them."""
    trace = _trace(tmp_path)
    settings = SweepSettings(batch_sizes=("1", "4"), max_waits_ms=(0,))
    out = tmp_path / "out"
    run_sweep(settings, trace, out, runner=FakeRunner(fail={"digits_cnn|b4|w0"}), progress=False)
    csv_path = out / CSV_NAME
    with csv_path.open(newline="") as f:
        old = list(csv.DictReader(f))
    old_columns = [c for c in COLUMNS if c not in RunFigures.optional_field_names()]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(old)
    write_report(csv_path, out, p99_target_ms=500.0)
    summary = (out / "summary.md").read_text()
    assert "| b1 w0ms | 9 | n/a |" in summary  # no amortised figure in an old row
    rerun = FakeRunner()
    run_sweep(settings, trace, out, runner=rerun, progress=False)
    assert rerun.calls == ["digits_cnn|b4|w0"]
    rows = {r["key"]: r for r in _rows(out)}
    assert rows["digits_cnn|b1|w0"]["amortised_j_per_request"] == ""
    assert rows["digits_cnn|b4|w0"]["amortised_j_per_request"] == "4"
    assert rows["digits_cnn|b4|w0"]["amortised_label"] == "amortised, idle not included"


def test_plot_labels_say_attributed_and_amortised() -> None:
    points = [_point("a", 10, 5)]
    assert attributed_axis(points) == "J/request (estimate, attributed, idle excluded)"
    gpu = [
        dataclasses.replace(
            _point("a", 10, 5), energy_source="nvml+rapl", amortised_energy_source="nvml+rapl"
        )
    ]
    assert attributed_axis(gpu) == (
        "J/request (nvml+rapl, attributed, idle excluded except the GPU's static draw during batches)"
    )
    assert amortised_axis(gpu) == "J/request (nvml+rapl, amortised, idle included)"


def test_pareto_front_and_recommendation_by_hand() -> None:
    a, b, c, d = _point("a", 10, 5), _point("b", 20, 3), _point("c", 30, 4), _point("d", 40, 1, rejected=2)
    assert [p.key for p in pareto([a, b, c, d])] == ["a", "b", "d"]  # c is beaten by b on both
    assert recommend([a, b, c, d], 50).key == "b"  # type: ignore[union-attr]  # d rejected requests
    assert recommend([a, b, c, d], 15).key == "a"  # type: ignore[union-attr]
    assert recommend([a, b, c, d], 5) is None


def test_report_only_redraws_from_the_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep_cli("sweep", ["--report-only", "--out", str(tmp_path)]) == 2
    assert "nothing to report" in capsys.readouterr().err
    settings = SweepSettings(batch_sizes=("1", "4"), max_waits_ms=(0,))
    run_sweep(settings, _trace(tmp_path), tmp_path, runner=FakeRunner(), progress=False)
    (tmp_path / "summary.md").unlink()
    assert sweep_cli("sweep", ["--report-only", "--out", str(tmp_path), "--p99-target-ms", "70"]) == 0
    assert "Recommendation: **b1 w0ms**" in (tmp_path / "summary.md").read_text()


# --- a tiny real sweep ------------------------------------------------------------------------


@pytest.mark.server
def test_tiny_real_sweep_writes_its_csv_and_plots_and_resumes(tmp_path: Path) -> None:
    trace = _trace(tmp_path, rate=20.0, seconds=2.0)
    settings = SweepSettings(
        models=("digits_cnn",), batch_sizes=("4", "greedy"), max_waits_ms=(20,), energy_source="estimate"
    )
    out = tmp_path / "out"
    result = run_sweep(settings, trace, out, progress=False)
    assert (result.ran, result.failed) == (2, 0), (out / "summary.md").read_text()
    rows = _rows(out)
    assert [r["key"] for r in rows] == ["digits_cnn|b4|w20", "digits_cnn|b4|greedy"]
    for row in rows:
        assert row["status"] == "ok"
        assert int(row["requests"]) == 40 and int(row["completed"]) == 40
        assert float(row["j_per_request"]) > 0 and row["energy_source"] == "estimate"
        assert row["j_per_request_label"] == "attributed, idle excluded"
        assert float(row["amortised_j_per_request"]) > 0 and row["amortised_energy_source"] == "estimate"
        assert row["amortised_label"] == "amortised, idle not included"
        assert 1 <= float(row["mean_batch_size"]) <= int(row["max_batch_size"])
        assert float(row["latency_p99_ms"]) >= float(row["latency_p50_ms"]) > 0
    assert (out / "pareto.png").exists() and (out / "energy-vs-batch.png").exists()
    again = run_sweep(settings, trace, out, progress=False)
    assert (again.ran, again.skipped) == (0, 2)


def test_configurations_that_formed_the_same_batches_are_named_as_noise(tmp_path: Path) -> None:
    """At 10 req/s with a wait, caps of 16 and 64 both hold 10 requests: the summary must not let
    their J/request difference pass for an effect of the cap."""
    best = Point("m|b16|w1000", "m", False, 16, 1000.0, 1000.0, 0.10, "estimate", 10.0, 10.0, 0, 0)
    twin = Point("m|b64|w1000", "m", False, 64, 1000.0, 1010.0, 0.12, "estimate", 10.0, 10.2, 0, 0)
    other = Point("m|b16|w200", "m", False, 16, 200.0, 210.0, 0.30, "estimate", 10.0, 2.0, 0, 0)
    rejected = Point("m|b32|w1000", "m", False, 32, 1000.0, 1000.0, 0.11, "estimate", 10.0, 10.0, 3, 0)
    assert same_batches(best, [best, twin, other, rejected]) == [twin]

    class SameBatches(FakeRunner):
        def __call__(
            self, config: SweepConfig, settings: SweepSettings, trace: Path, out: Path
        ) -> dict[str, Any]:
            row = super().__call__(config, settings, trace, out)
            row.update(
                latency_p99_ms=1000.0, mean_batch_size=10.0, j_per_request=0.1 * config.max_batch_size**0.1
            )
            return row

    settings = SweepSettings(batch_sizes=("16", "64"), max_waits_ms=(1000,), p99_target_ms=2000.0)
    run_sweep(settings, _trace(tmp_path), tmp_path / "out", runner=SameBatches(), progress=False)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "Recommendation: **b16 w1000ms**" in summary
    assert "b64 w1000ms formed the same batches" in summary and "+15%" in summary


# --- the plan, the flags, the front door --------------------------------------------------------


def test_the_sweep_announces_its_plan_and_how_long_the_rest_takes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trace = _trace(tmp_path, rate=10.0, seconds=2.0)  # 20 requests over 1.9 s
    settings = SweepSettings(models=("digits_cnn", "noop"), batch_sizes=("1", "4"), max_waits_ms=(0,))
    with caplog.at_level(logging.INFO, logger="studies.kit.progress"):
        run_sweep(settings, trace, tmp_path / "out", runner=FakeRunner(fail={"noop|b4|w0"}), progress=False)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sweep:")]
    assert "2 model(s) × 2 configuration(s) = 4 configurations × a 1.9 s trace (20 requests)" in line
    # Nothing measured yet: each configuration is its trace plus the server's start and stop.
    assert f"about {format_duration(4 * (1.9 + OVERHEAD_S))} to go" in line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="studies.kit.progress"):
        run_sweep(settings, trace, tmp_path / "out", runner=FakeRunner(), progress=False)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sweep:")]
    # Resumed: 3 of 4 done, the last one estimated from the measured rows (wall_s 0.1 each).
    assert "3 of 4 done (resuming)" in line and "about 0 s to go" in line


def test_estimate_uses_the_measured_wall_time_of_ok_rows() -> None:
    rows = [{"status": "ok", "wall_s": "10"}, {"status": "ok", "wall_s": "20"}, {"status": "failed: x"}]
    assert estimate_s(3, 30.0, rows) == pytest.approx(45.0)
    assert estimate_s(2, 30.0, []) == pytest.approx(2 * (30.0 + OVERHEAD_S))


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        (["--duration-s", "3", "--rate", "5"], "trace-jitter-5rps-3s-seed0.jsonl"),
        (["--duration", "3", "--rate", "5"], "trace-jitter-5rps-3s-seed0.jsonl"),  # the old spelling
        ([], "trace-jitter-16rps-30s-seed0.jsonl"),  # the study's default stream
    ],
)
def test_trace_flags_and_the_duration_alias(tmp_path: Path, flags: list[str], name: str) -> None:
    args = build_parser().parse_args([*flags, "--out", str(tmp_path)])
    path = trace_path(dataclass_from_args(TraceSettings, args), tmp_path)
    assert path == tmp_path / name and path.exists()


def test_old_flag_spellings_are_aliases() -> None:
    parser = build_parser()
    new = parser.parse_args(["--torch-threads", "2", "--duration-s", "5", "--models", "noop"])
    old = parser.parse_args(["--threads", "2", "--duration", "5", "--models", "noop"])
    assert vars(new) == vars(old)
    settings = dataclass_from_args(SweepSettings, old)
    assert (settings.torch_threads, settings.models) == (2, ("noop",))
    assert dataclass_from_args(TraceSettings, old).duration_s == 5.0
    defaults = dataclass_from_args(SweepSettings, parser.parse_args([]))
    assert defaults == SweepSettings()
    help_text = parser.format_help()
    assert "--threads" in help_text and "--duration" in help_text and "alias" in help_text


def test_the_front_door_runs_the_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from greenserve.cli import BY_NAME
    from greenserve.cli import main as greenserve

    assert BY_NAME["sweep"].module == "studies.sweep.cli"
    settings = SweepSettings(batch_sizes=("1", "4"), max_waits_ms=(0,))
    run_sweep(settings, _trace(tmp_path), tmp_path, runner=FakeRunner(), progress=False)
    assert greenserve(["sweep", "--report-only", "--out", str(tmp_path), "--p99-target-ms", "70"]) == 0
    assert f"wrote {tmp_path / 'summary.md'}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # a usage error: one line, status 2
        greenserve(["sweep", "--energy-source", "sundial", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'sundial'" in err


def test_each_configuration_is_served_with_its_flags() -> None:
    from studies.kit.server import greenserve_argv

    settings = SweepSettings(torch_threads=2, energy_source="estimate")
    argv = greenserve_argv(8123, **server_flags(SweepConfig("resnet18", 64, 0.0, greedy=True), settings))
    text = " ".join(argv)
    assert "--model resnet18 --weights random" in text  # torchvision models: random weights, no download
    assert "--max-batch-size 64 --max-wait-ms 0" in text and "--torch-threads 2" in text
    assert "--energy-source estimate" in text and "--no-access-log" in text
    digits = greenserve_argv(8123, **server_flags(SweepConfig("digits_cnn", 4, 20.0), settings))
    assert "--weights" not in digits  # the embedded checkpoint
