"""The model-zoo study: catalogue vs torchvision's metadata, measuring, resuming, the time budget,
the announced plan, verdicts computed from the table, and the CLI."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import energy.profile
import studies.zoo.run
from greenserve import cli
from studies.kit.errors import LabError
from studies.kit.progress import format_duration
from studies.zoo.catalog import CATALOGUE, EXCEPTION_MODEL, STUDY_MODELS, build_model, lookup
from studies.zoo.cli import build_parser
from studies.zoo.errors import ZooError
from studies.zoo.plan import SMOKE_RUN, announce_plan, estimate
from studies.zoo.plots import PLOT_BY_BATCH, PLOT_BY_YEAR, PLOT_PARETO
from studies.zoo.report import STATS_JSON, SUMMARY_MD, zoo_report
from studies.zoo.run import run_zoo
from studies.zoo.settings import DEFAULT_BATCH_SIZES, DEFAULT_SIZE_BUDGET_S, ZooSettings
from studies.zoo.stats import pareto_models
from studies.zoo.table import MEASUREMENTS_CSV, SETTINGS_JSON, ZOO_COLUMNS, read_zoo_table

REQUIRED = (
    "alexnet",
    "densenet121",
    "shufflenet_v2_x0_5",
    "vit_b_16",
    "convnext_base",
    "vgg16",
    "googlenet",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "swin_t",
    "efficientnet_v2_s",
)


def quick(**overrides: Any) -> ZooSettings:
    """Quick settings that leave the test process's allocator alone and need no sensor."""
    base: dict[str, Any] = {"quick": True, "energy_source": "estimate", "allocator": "system"}
    return ZooSettings(**{**base, **overrides})


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- the catalogue ------------------------------------------------------------------------------


def test_catalogue_spans_a_decade_and_holds_the_required_networks() -> None:
    names = [m.name for m in CATALOGUE]
    assert len(names) >= 15
    assert len(set(names)) == len(names)
    assert min(m.year for m in CATALOGUE) == 2012
    assert max(m.year for m in CATALOGUE) == 2022
    for name in REQUIRED:
        assert name in names, name
    assert any(n.startswith("squeezenet1_") for n in names)
    assert any(n.startswith("regnet_") for n in names)
    assert set(STUDY_MODELS) <= set(names)
    assert [m.year for m in CATALOGUE] == sorted(m.year for m in CATALOGUE)
    years = {m.name: m.year for m in CATALOGUE}
    assert years["alexnet"] == 2012 and years[EXCEPTION_MODEL] == 2018 and years["convnext_base"] == 2022


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda m: m.name)
def test_catalogue_metadata_matches_torchvision(entry: Any) -> None:
    from torchvision.models import get_model_weights

    weights = get_model_weights(entry.name).DEFAULT
    meta = weights.meta
    assert weights.name == entry.weights
    assert meta["_metrics"]["ImageNet-1K"]["acc@1"] == entry.acc1_pct
    assert meta["_ops"] == entry.gflops
    assert meta["num_params"] == entry.params
    assert weights.transforms.keywords["crop_size"] == entry.resolution


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda m: m.name)
def test_every_entry_builds_with_the_metadata_parameter_count(entry: Any) -> None:
    # On the meta device the architecture is built without allocating or initialising anything,
    # except RegNet's, which computes its block widths from tensors (and is small).
    with torch.device("cpu" if entry.name.startswith("regnet") else "meta"):
        model = build_model(entry)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == entry.params


def test_unknown_names_are_refused_with_close_matches() -> None:
    with pytest.raises(ZooError, match="resnet50"):
        ZooSettings(models=("resnet-50",))
    with pytest.raises(ZooError, match="vit_b_16"):
        lookup(["vit_b16"])
    with pytest.raises(ZooError, match="twice"):
        lookup(["alexnet", "alexnet"])
    with pytest.raises(ZooError, match="unknown model 'zzzz'"):
        lookup(["zzzz"])


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"batch_sizes": (0, 4)}, "batch sizes"),
        ({"torch_threads": 0}, "torch_threads"),
        ({"repeats": 0}, "repeats"),
        ({"size_budget_s": 0.0}, "size_budget_s"),
        ({"energy_source": "solar"}, "solar"),
        ({"allocator": "jemalloc"}, "jemalloc"),
        ({"min_time_s": float("nan")}, "min_time_s"),
        ({"resolution": 0}, "resolution"),
    ],
)
def test_bad_settings_are_refused(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ZooError, match=fragment):
        ZooSettings(**overrides)


def test_quick_defaults_give_way_to_explicit_values() -> None:
    s = ZooSettings(quick=True, models=("alexnet",), repeats=2).resolved()
    assert [m.name for m in s.models] == ["alexnet"]
    assert s.repeats == 2 and s.batch_sizes == (1, 2) and s.resolution == 64
    full = ZooSettings().resolved()
    assert full.models == CATALOGUE and full.batch_sizes == DEFAULT_BATCH_SIZES and full.resolution is None


# --- the estimate -------------------------------------------------------------------------------


def test_default_study_is_estimated_inside_30_minutes_on_two_cpu_cores() -> None:
    est = estimate(ZooSettings())
    assert est.total_s < 30 * 60
    # Every model's smallest size runs whatever the budget; the budget skips some large ones.
    assert {c.model for c in est.cells if c.batch_size == 1 and c.runs} == {m.name for m in CATALOGUE}
    assert est.skipped()
    assert all(c.predicted_s > DEFAULT_SIZE_BUDGET_S for c in est.skipped())


def test_estimate_budget_rule_and_done_cells() -> None:
    tight = estimate(ZooSettings(size_budget_s=1e-6))
    assert all(c.runs == (c.batch_size == 1) for c in tight.cells)
    done: dict[tuple[str, int], Any] = {("alexnet", b): {} for b in DEFAULT_BATCH_SIZES}
    assert all(c.model != "alexnet" for c in estimate(ZooSettings(), done).cells)


def test_the_default_run_announces_its_cells_its_time_and_the_smoke_run(tmp_path: Path) -> None:
    s = ZooSettings().resolved()
    est = estimate(s)
    runs = sum(c.runs for c in est.cells)
    plan, hint = announce_plan(s, est, done=0, out_dir=tmp_path, quick=False)
    assert plan.startswith(
        f"zoo: 18 networks × 5 batch sizes = 90 cells into {tmp_path} ({runs} to measure, "
    )
    assert f"{90 - runs} predicted over the 60 s per-size budget" in plan
    assert plan.endswith(f"about {format_duration(est.total_s)} to go")
    assert 10 * 60 < est.total_s < 20 * 60  # the measured run took 16 min 18 s (docs/zoo.md, *Time*)
    assert SMOKE_RUN in hint and "--dry-run" in hint and "resumes" in hint

    # Resuming: the cells done are said, and the estimate is of the rest only.
    done: dict[tuple[str, int], Any] = {(m.name, b): {} for m in s.models[:6] for b in s.batch_sizes}
    rest = estimate(s, done)
    (plan, _hint) = announce_plan(s, rest, done=30, out_dir=tmp_path, quick=False)
    assert "30 of 90 done (resuming)" in plan
    assert plan.endswith(f"about {format_duration(rest.total_s)} to go") and rest.total_s < est.total_s

    # A quick run is no long run: no suggestion.
    q = ZooSettings(quick=True).resolved()
    assert announce_plan(q, estimate(q), done=0, out_dir=tmp_path, quick=True) == [
        f"zoo: 3 networks × 2 batch sizes = 6 cells into {tmp_path} (6 to measure), "
        f"about {format_duration(estimate(q).total_s)} to go"
    ]


def test_a_bare_zoo_command_announces_the_full_run_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def stop(device: str) -> None:
        raise ZooError("stopped before measuring")

    monkeypatch.setattr(studies.zoo.run, "_check_device", stop)
    caplog.set_level(logging.INFO)
    assert cli.main(["zoo", "--out", str(tmp_path / "zoo")]) == 2
    said = [r.getMessage() for r in caplog.records]
    assert any("18 networks × 5 batch sizes = 90 cells" in m and "min" in m and "to go" in m for m in said)
    assert any(SMOKE_RUN in m for m in said)
    assert not (tmp_path / "zoo").exists()


# --- running --------------------------------------------------------------------------------------


def test_quick_run_writes_table_plots_and_summary(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    out = tmp_path / "zoo"
    table = run_zoo(quick(), out, progress=False)
    assert table == out / MEASUREMENTS_CSV
    assert torch.get_num_threads() == threads
    rows = read_rows(table)
    assert [(r["model"], r["batch_size"]) for r in rows] == [
        (m, b) for m in ("squeezenet1_1", "shufflenet_v2_x0_5", "mobilenet_v3_small") for b in ("1", "2")
    ]
    assert tuple(rows[0]) == ZOO_COLUMNS
    for r in rows:
        assert r["status"] == "measured", r
        assert r["weights"] == "random" and r["energy_source"] == "estimate"
        assert r["resolution"] == "64" and r["acc_resolution"] == "224" and r["threads"] == "1"
        assert float(r["energy_j_per_image"]) > 0 and float(r["images_per_s"]) > 0
        assert float(r["latency_p99_ms"]) >= float(r["latency_p50_ms"]) > 0
        assert float(r["energy_j_per_batch"]) == pytest.approx(
            float(r["energy_j_per_image"]) * int(r["batch_size"])
        )
    summary = (out / SUMMARY_MD).read_text()
    assert "random" in summary.lower() and "estimate" in summary
    assert "shufflenet_v2_x0_5" in summary
    # The J/image columns and the plots' axes say the source and that the estimate has no idle in it.
    assert "| J/image @ 1 (J, estimate, idle not included) |" in summary
    assert "J/image (J, estimate, idle not included): everything the meter read" in summary
    for plot in (PLOT_BY_YEAR, PLOT_PARETO, PLOT_BY_BATCH):
        assert (out / plot).stat().st_size > 1000
    stats = json.loads((out / STATS_JSON).read_text())
    assert stats["ref_batch"] == 1 and stats["cells_measured"] == 6
    assert stats["energy_label"] == "J, estimate, idle not included"
    assert json.loads((out / SETTINGS_JSON).read_text())["weights"] == "random"


@pytest.fixture
def profile_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The batch sizes of every profile_batches call the zoo makes."""
    calls: list[tuple[int, ...]] = []
    real: Callable[..., Any] = energy.profile.profile_batches

    def counting(run_batch: Any, batch_sizes: Any, **kwargs: Any) -> Any:
        calls.append(tuple(batch_sizes))
        return real(run_batch, batch_sizes, **kwargs)

    monkeypatch.setattr(energy.profile, "profile_batches", counting)
    return calls


def test_rerun_skips_done_cells_and_resumes_a_killed_run(
    tmp_path: Path, profile_calls: list[tuple[int, ...]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="studies.kit.progress")
    out = tmp_path / "zoo"
    run_zoo(quick(models=("squeezenet1_1",)), out, progress=False)
    assert profile_calls == [(1,), (2,)]
    first = read_rows(out / MEASUREMENTS_CSV)

    # Extending the study measures only the new model; the old rows stay as they were.
    profile_calls.clear()
    caplog.clear()
    run_zoo(quick(models=("squeezenet1_1", "shufflenet_v2_x0_5")), out, progress=False)
    assert profile_calls == [(1,), (2,)]
    assert "2 networks × 2 batch sizes = 4 cells" in caplog.text and "2 of 4 done (resuming)" in caplog.text
    rows = read_rows(out / MEASUREMENTS_CSV)
    assert rows[:2] == first and [r["model"] for r in rows[2:]] == ["shufflenet_v2_x0_5"] * 2

    # A run killed while writing: its last cell lost, a half-written line left behind.
    table = out / MEASUREMENTS_CSV
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines[:-1]) + lines[-1][:25])
    profile_calls.clear()
    caplog.clear()
    run_zoo(quick(models=("squeezenet1_1", "shufflenet_v2_x0_5")), out, progress=False)
    assert profile_calls == [(2,)]
    assert "3 of 4 done (resuming)" in caplog.text
    rows = read_rows(table)
    assert len(rows) == 4 and all(r["status"] == "measured" for r in rows)

    # Nothing left to do: nothing measured, the report redrawn.
    profile_calls.clear()
    run_zoo(quick(models=("squeezenet1_1", "shufflenet_v2_x0_5")), out, progress=False)
    assert profile_calls == []


def test_other_settings_are_refused_in_the_same_directory(tmp_path: Path) -> None:
    out = tmp_path / "zoo"
    run_zoo(quick(models=("squeezenet1_1",), batch_sizes=(1,)), out, progress=False)
    before = (out / MEASUREMENTS_CSV).read_text()
    with pytest.raises(LabError, match="resolution: 64 → 32"):
        run_zoo(quick(models=("squeezenet1_1",), resolution=32), out, progress=False)
    assert (out / MEASUREMENTS_CSV).read_text() == before


def test_a_size_over_the_time_budget_is_skipped_with_a_note_then_measured_with_a_larger_budget(
    tmp_path: Path, profile_calls: list[tuple[int, ...]]
) -> None:
    out = tmp_path / "zoo"
    run_zoo(quick(models=("squeezenet1_1",), batch_sizes=(1, 64), size_budget_s=1e-4), out, progress=False)
    assert profile_calls == [(1,)]  # the smallest size always runs: it is the basis of the prediction
    rows = {r["batch_size"]: r for r in read_rows(out / MEASUREMENTS_CSV)}
    assert rows["1"]["status"] == "measured"
    assert rows["64"]["status"] == "over_budget"
    assert "predicted" in rows["64"]["reason"] and "0.0001 s per size" in rows["64"]["reason"]
    assert rows["64"]["energy_j_per_image"] == ""
    summary = (out / SUMMARY_MD).read_text()
    assert "over_budget" in summary and rows["64"]["reason"] in summary

    # A budget skip is decided again on the next run: with room, the cell is measured and replaces it.
    profile_calls.clear()
    run_zoo(quick(models=("squeezenet1_1",), batch_sizes=(1, 64), size_budget_s=600.0), out, progress=False)
    assert profile_calls == [(64,)]
    rows_after = read_rows(out / MEASUREMENTS_CSV)
    assert [(r["batch_size"], r["status"]) for r in rows_after] == [("1", "measured"), ("64", "measured")]


def test_a_network_that_cannot_run_at_the_resolution_is_noted_not_fatal(tmp_path: Path) -> None:
    # ViT-B/16 needs an input divisible by its 16-pixel patches.
    out = tmp_path / "zoo"
    run_zoo(
        quick(models=("vit_b_16", "squeezenet1_1"), resolution=40, batch_sizes=(1, 2)), out, progress=False
    )
    rows = {(r["model"], r["batch_size"]): r for r in read_rows(out / MEASUREMENTS_CSV)}
    assert rows[("vit_b_16", "1")]["status"] == "failed"
    assert rows[("vit_b_16", "2")]["reason"] == "not run: batch 1 failed"
    assert rows[("squeezenet1_1", "2")]["status"] == "measured"


# --- the verdicts come from the table ------------------------------------------------------------


def synthetic_table(path: Path, j_of_year: Callable[[int], float], exception_j: float) -> Path:
    """A table of the whole catalogue at batch 1 with chosen J/image (no measuring)."""
    rows = []
    for m in CATALOGUE:
        j = exception_j if m.name == EXCEPTION_MODEL else j_of_year(m.year)
        rows.append(
            {
                "model": m.name,
                "year": m.year,
                "acc1_pct": m.acc1_pct,
                "gflops": m.gflops,
                "params": m.params,
                "acc_resolution": m.resolution,
                "acc_weights": m.weights,
                "resolution": m.resolution,
                "device": "cpu",
                "threads": 1,
                "batch_size": 1,
                "status": "measured",
                "reason": "",
                "batches": 3,
                "latency_mean_ms": 10.0,
                "latency_p50_ms": 10.0,
                "latency_p99_ms": 11.0,
                "latency_std_ms": 0.5,
                "energy_j_per_batch": j,
                "energy_j_per_image": j,
                "energy_net_j_per_image": j,
                "idle_power_w": 0.0,
                "images_per_s": 100.0,
                "energy_source": "estimate",
                "weights": "random",
                "seconds": 1.0,
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ZOO_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def rising(year: int) -> float:
    return 0.01 * 2.0 ** (year - 2012)


def falling(year: int) -> float:
    return 0.01 * 2.0 ** (2022 - year)


def test_verdicts_hold_when_the_table_shows_the_studys_finding(tmp_path: Path) -> None:
    table = synthetic_table(tmp_path / MEASUREMENTS_CSV, rising, exception_j=0.001)
    zoo_report(table, tmp_path)
    st = json.loads((tmp_path / STATS_JSON).read_text())
    for group in ("study", "catalogue"):
        assert st[group]["trend"]["holds"] is True
        assert st[group]["exception"]["holds"] is True
        assert st[group]["accuracy"]["holds"] is True
        assert st[group]["finding_holds"] is True
    assert st["study"]["trend"]["rho"] == pytest.approx(1.0)
    # Exact for four networks: 2 of the 24 pairings of the ranks are as extreme (ρ = ±1).
    assert st["study"]["trend"]["p_value"] == pytest.approx(2 / 24)
    assert st["study"]["trend"]["p_method"] == "exact" and st["catalogue"]["trend"]["p_method"] != "exact"
    assert st["study"]["trend"]["models"] == ["alexnet", "densenet121", "vit_b_16", "convnext_base"]
    # The trend of the study's other networks at 2018 is 0.01 × 2^6 = 0.64 J; ShuffleNetV2 is 640× below.
    assert st["study"]["exception"]["below_trend_factor"] == pytest.approx(640.0)
    assert EXCEPTION_MODEL in st["pareto_ref"] and "efficientnet_v2_s" in st["pareto_ref"]
    summary = (tmp_path / SUMMARY_MD).read_text()
    assert "On the study's five networks, the study's finding holds on this machine." in summary


def test_redrawn_summary_follows_altered_energies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = synthetic_table(tmp_path / "zoo" / MEASUREMENTS_CSV, rising, exception_j=0.001)
    assert cli.main(["zoo", "report", str(table)]) == 0
    before = (table.parent / SUMMARY_MD).read_text()
    assert "finding holds on this machine" in before

    # Reverse the energies in the CSV itself: newer networks now cost less.
    rows = read_rows(table)
    for r in rows:
        if r["model"] != EXCEPTION_MODEL:
            r["energy_j_per_image"] = str(falling(int(r["year"])))
    with table.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ZOO_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    redrawn = tmp_path / "redrawn"
    assert cli.main(["zoo", "report", str(table), "--out", str(redrawn)]) == 0
    after = (redrawn / SUMMARY_MD).read_text()
    assert after != before
    assert "On the study's five networks, the study's finding does not hold on this machine." in after
    st = json.loads((redrawn / STATS_JSON).read_text())
    assert st["study"]["trend"]["rho"] == pytest.approx(-1.0) and st["study"]["trend"]["holds"] is False

    # An exception that is no exception: ShuffleNetV2 on the trend line.
    synthetic_table(table, rising, exception_j=rising(2018))
    assert cli.main(["zoo", "report", str(table), "--out", str(redrawn)]) == 0
    st = json.loads((redrawn / STATS_JSON).read_text())
    assert st["study"]["exception"]["below_trend_factor"] == pytest.approx(1.0)
    assert st["study"]["exception"]["holds"] is False
    assert st["study"]["finding_holds"] is False


def test_verdicts_are_na_without_the_study_networks(tmp_path: Path) -> None:
    table = synthetic_table(tmp_path / MEASUREMENTS_CSV, rising, exception_j=0.001)
    rows = [r for r in read_rows(table) if r["model"] not in ("alexnet", "densenet121", "vit_b_16")]
    with table.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ZOO_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    zoo_report(table, tmp_path)
    st = json.loads((tmp_path / STATS_JSON).read_text())
    assert st["study"]["missing"] == ["alexnet", "densenet121", "vit_b_16"]
    assert st["study"]["trend"]["holds"] is None
    assert st["study"]["finding_holds"] is None
    assert "cannot be decided" in (tmp_path / SUMMARY_MD).read_text()


def test_pareto_front() -> None:
    points = {"a": (1.0, 60.0), "b": (2.0, 70.0), "c": (3.0, 65.0), "d": (2.0, 70.0), "e": (0.5, 50.0)}
    assert pareto_models(points) == ["e", "a", "b", "d"]
    assert pareto_models({}) == []


def test_malformed_tables_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("model,batch_size\nalexnet,1\n")
    with pytest.raises(ZooError, match="not a zoo table"):
        read_zoo_table(bad)
    table = synthetic_table(tmp_path / MEASUREMENTS_CSV, rising, exception_j=0.001)
    table.write_text(table.read_text().replace(",measured,", ",weird,", 1))
    with pytest.raises(ZooError, match="line 2: unknown status 'weird'"):
        read_zoo_table(table)


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zoo"
    assert cli.main(["zoo", "--models", "resnet-50", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resnet50" in err
    assert not out.exists()
    assert cli.main(["zoo", "report", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["zoo", "run", "--batch-sizes", "one"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert cli.main(["zoo", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(m.name in listing for m in CATALOGUE)
    assert cli.main(["zoo", "--dry-run"]) == 0
    assert "estimated time" in capsys.readouterr().out
    assert not out.exists()


def test_cli_quick_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zoo"
    args = ["zoo", "--quick", "--models", "squeezenet1_1", "--batch-sizes", "1"]
    args += ["--energy-source", "estimate", "--allocator", "system", "--no-progress", "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / MEASUREMENTS_CSV), str(out / SUMMARY_MD)]


def test_an_interrupted_run_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(studies.zoo.run, "run_zoo", interrupted)
    assert cli.main(["zoo", "--quick", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err and "the same command resumes" in err


def test_cli_help_lists_zoo_and_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "zoo" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["zoo", "run", "--help"])
    out = capsys.readouterr().out
    for flag in ("--models", "--batch-sizes", "--device", "--energy-source", "--torch-threads", "--quick"):
        assert flag in out
    assert "[alias: --threads]" in out


def test_threads_is_an_alias_of_torch_threads() -> None:
    assert build_parser().parse_args(["run", "--torch-threads", "2"]).torch_threads == 2
    assert build_parser().parse_args(["run", "--threads", "2"]).torch_threads == 2


def test_serve_does_not_import_the_studys_dependencies() -> None:
    code = (
        "import sys; from service import cli; cli.build_parser(); "
        "print([m for m in ('torch', 'torchvision', 'scipy', 'matplotlib') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
