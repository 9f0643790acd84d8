"""The layer ablation: its design table, a quick study end to end, resuming, statistics, bad input."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from scipy import stats as scipy_stats

import trainer.ablation as ablation
from studies.kit.errors import LabError
from studies.kit.flags import dataclass_from_args
from studies.kit.stats import eta_squared_h, kruskal_eta_squared
from tests.trainer.conftest import WrappingRapl
from trainer.ablation import run as ablation_run
from trainer.ablation.report import ablation_report, render_ablation_summary
from trainer.ablation.run import run_ablation
from trainer.ablation.settings import AblationSettings, designs
from trainer.ablation.stats import ABLATION_FACTORS, ablation_stats
from trainer.ablation.table import RUNS_CSV, SETTINGS_JSON
from trainer.cli import add_commands
from trainer.data import Dataset
from trainer.errors import TrainerError
from trainer.models import build_model
from trainer.training import StudyEnergy, TrainConfig, train, warm_up

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("ablation_energy_by_design.png", "ablation_energy_by_factor.png", "ablation_accuracy_by_design.png")


def quick(**overrides: Any) -> AblationSettings:
    return AblationSettings(**{"quick": True, "energy_source": "estimate", **overrides})


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def keys(rows: list[dict[str, str]]) -> Counter[tuple[str, int]]:
    return Counter((r["design_id"], int(r["repeat"])) for r in rows)


def expected_keys(settings: AblationSettings) -> Counter[tuple[str, int]]:
    s = settings.resolved()
    return Counter(
        (ablation.design_id(c, lin, a), r)
        for c, lin, a in itertools.product(s.conv_levels, s.linear_levels, s.activation_levels)
        for r in range(s.repeats)
    )


# --- the design table ---------------------------------------------------------------------------


def test_designs_is_the_full_factorial_times_repeats_in_shuffled_blocks() -> None:
    settings = AblationSettings(repeats=3, seed=7)
    rows = designs(settings)
    assert len(rows) == 2 * 2 * 2 * 3
    assert Counter((r["design_id"], r["repeat"]) for r in rows) == expected_keys(settings)
    assert [r["run_order"] for r in rows] == list(range(len(rows)))
    factorial = [ablation.design_id(*lv) for lv in itertools.product((1, 4), (3, 7), (False, True))]
    blocks = [[r["design_id"] for r in rows if r["repeat"] == rep] for rep in range(3)]
    # Each repeat is a block: all eight designs, contiguous in run order, in a shuffled order.
    assert all(sorted(block) == sorted(factorial) for block in blocks)
    assert [r["repeat"] for r in rows] == sorted(r["repeat"] for r in rows)
    assert any(block != factorial for block in blocks)
    assert len({tuple(block) for block in blocks}) > 1
    # Repeat r shares its seed across designs (common random numbers); repeats differ.
    assert {rep: {r["seed"] for r in rows if r["repeat"] == rep} for rep in range(3)} == {
        rep: {ablation.run_seed(7, rep)} for rep in range(3)
    }
    # A pure function of the settings: same seed, same table; another seed, another order.
    assert designs(settings) == rows
    assert [r["design_id"] for r in designs(AblationSettings(repeats=3, seed=8))] != [
        r["design_id"] for r in rows
    ]


def test_designs_follow_the_levels_and_quick_caps_repeats() -> None:
    rows = designs(
        AblationSettings(conv_levels=(1, 2, 3), linear_levels=[2], activation_levels=(True,), repeats=2)
    )
    assert Counter(r["design_id"] for r in rows) == {"c1-l2-relu": 2, "c2-l2-relu": 2, "c3-l2-relu": 2}
    resolved = AblationSettings(repeats=5, epochs=9, quick=True).resolved()
    assert (resolved.repeats, resolved.epochs) == (2, 1)
    assert len(designs(AblationSettings(repeats=5, quick=True))) == 16


# --- a quick study end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ablation")
    assert run_ablation(quick(), out, progress=False) == out / RUNS_CSV
    return out


def test_quick_study_writes_every_run_stats_plots_and_summary(quick_study: Path) -> None:
    rows = read_rows(quick_study / RUNS_CSV)
    assert keys(rows) == expected_keys(quick())
    assert all(r["energy_source"] == "estimate" and float(r["energy_j"]) > 0 for r in rows)
    assert all(r["epochs"] == "1" and 0 <= float(r["accuracy"]) <= 1 for r in rows)
    assert sorted(int(r["run_order"]) for r in rows) == list(range(16))
    # More layers, more parameters: the params column is the model's, per design.
    params = {r["design_id"]: int(r["params"]) for r in rows}
    assert params["c4-l7-relu"] > params["c1-l7-relu"] > params["c1-l3-relu"]

    stats = json.loads((quick_study / "ablation_stats.json").read_text())
    assert [f["factor"] for f in stats["factors"]] == list(ABLATION_FACTORS)
    for f in stats["factors"]:
        assert f["n"] == 16 and f["k"] == 2 and f["kruskal_h"] is not None and 0 <= f["p_value"] <= 1
        assert f["energy_increase"] is not None and f["strata"] == 4
    assert len(stats["designs"]) == 8 and all(d["runs"] == 2 for d in stats["designs"])
    assert stats["largest_energy_effect"] in ABLATION_FACTORS

    for name in PLOTS:
        data = (quick_study / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    factor_rows = read_rows(quick_study / "ablation_stats.csv")
    assert [r["factor"] for r in factor_rows] == list(ABLATION_FACTORS)
    assert len(read_rows(quick_study / "ablation_designs.csv")) == 8

    summary = (quick_study / "ablation_summary.md").read_text()
    largest = ABLATION_FACTORS[stats["largest_energy_effect"]]
    assert f"The factor with the largest energy effect is **{largest}**" in summary
    assert "Energy source: estimate" in summary and "*estimate*" in summary
    assert "+95% (FashionMNIST)" in summary  # the study's figures stand next to ours
    # Every energy figure says its source and that the estimate has no idle draw in it.
    assert "energy column `energy_j`: energy per run (J, estimate, idle not included)" in summary
    assert "| energy per run (J, estimate, idle not included), mean ± std |" in summary
    assert stats["energy_label"] == "energy per run (J, estimate, idle not included)"
    assert not list(quick_study.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_a_study_on_rapl_reads_it_throughout_and_labels_idle(
    tmp_path: Path, wrapping_rapl: WrappingRapl
) -> None:
    """One sampler for the study reads the (fake, wrapping) RAPL counter throughout: each run's
    energy is the counter's 100 W over its time; the report says idle is included, or subtracted."""
    settings = quick(energy_source="rapl", repeats=1, linear_levels=(3,), activation_levels=(True,))
    run_ablation(settings, tmp_path, progress=False)
    rows = read_rows(tmp_path / RUNS_CSV)
    assert len(rows) == 2 and all(r["energy_source"] == "rapl" for r in rows)
    for row in rows:
        assert float(row["energy_j"]) == pytest.approx(100.0 * float(row["seconds"]), rel=0.1)
        assert abs(float(row["energy_net_j"])) < 0.1 * float(row["energy_j"])  # all of it is "idle"
    summary = (tmp_path / "ablation_summary.md").read_text()
    assert (
        "Energy source: rapl** (a hardware counter: every joule includes the devices' idle draw)" in summary
    )
    assert "energy per run (J, rapl, idle included)" in summary
    ablation_report(tmp_path / RUNS_CSV, tmp_path / "net", energy_column="energy_net_j")
    assert (
        "net energy per run (J, rapl, idle subtracted)"
        in (tmp_path / "net" / "ablation_summary.md").read_text()
    )


def test_report_redrawn_from_the_csv_alone_gives_the_same_stats(quick_study: Path, tmp_path: Path) -> None:
    paths = ablation_report(quick_study / RUNS_CSV, tmp_path)
    assert {p.name for p in paths} >= {
        "ablation_summary.md",
        "ablation_stats.json",
        "ablation_stats.csv",
        *PLOTS,
    }
    assert all(p.parent == tmp_path and p.stat().st_size > 0 for p in paths)
    for name in ("ablation_stats.json", "ablation_stats.csv", "ablation_designs.csv", "ablation_summary.md"):
        assert (tmp_path / name).read_text() == (quick_study / name).read_text(), name


def test_report_of_net_energy_and_bad_tables(quick_study: Path, tmp_path: Path) -> None:
    ablation_report(quick_study / RUNS_CSV, tmp_path, energy_column="energy_net_j")
    assert json.loads((tmp_path / "ablation_stats.json").read_text())["energy_column"] == "energy_net_j"
    with pytest.raises(TrainerError, match="energy column"):
        ablation_report(quick_study / RUNS_CSV, tmp_path, energy_column="seconds")
    with pytest.raises(TrainerError, match="no ablation table"):
        ablation_report(tmp_path / "missing.csv", tmp_path)
    (tmp_path / "other.csv").write_text("strategy,trial\nrandom,1\n")
    with pytest.raises(TrainerError, match="missing columns"):
        ablation_report(tmp_path / "other.csv", tmp_path)
    header = (quick_study / RUNS_CSV).read_text().splitlines()[0]
    (tmp_path / "empty.csv").write_text(header + "\n")
    with pytest.raises(TrainerError, match="no runs"):
        ablation_report(tmp_path / "empty.csv", tmp_path)


# --- resuming -----------------------------------------------------------------------------------


def test_a_killed_study_resumes_without_repeating_finished_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2 designs × 2 repeats: enough to be killed mid-study.
    settings = quick(conv_levels=(1, 2), linear_levels=(1,), activation_levels=(True,))
    runs_csv = tmp_path / RUNS_CSV
    real_train = train
    calls = 0

    def killed_on_the_third_run(*args: Any, **kwargs: Any) -> Any:
        if runs_csv.exists() and len(read_rows(runs_csv)) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(ablation_run, "train", killed_on_the_third_run)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(settings, tmp_path, progress=False)
    finished = read_rows(runs_csv)
    assert len(finished) == 2  # each finished run was on disk before the next began
    assert not (tmp_path / "ablation_summary.md").exists()
    # A kill in the middle of writing a row leaves half a line: it is dropped on resume.
    with runs_csv.open("a") as f:
        f.write("digits,simple_cnn,c2-l1-relu,2,1,tr")

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_train(*args, **kwargs)

    monkeypatch.setattr(ablation_run, "train", counting)
    run_ablation(settings, tmp_path, progress=False)
    rows = read_rows(runs_csv)
    assert keys(rows) == expected_keys(settings)  # every design × repeat exactly once
    assert rows[:2] == finished  # the finished runs were kept, not redone
    assert calls == 1 + 4 - 2  # the warm-up, then only the runs still missing
    assert (tmp_path / "ablation_summary.md").exists()

    # Once complete, a rerun trains nothing and only redraws the report.
    calls = 0
    run_ablation(settings, tmp_path, progress=False)
    assert calls == 0 and read_rows(runs_csv) == rows


def test_resuming_with_other_settings_is_refused_before_anything_changes(tmp_path: Path) -> None:
    settings = quick(conv_levels=(1,), linear_levels=(1,), activation_levels=(True,))
    run_ablation(settings, tmp_path, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(LabError, match=r"other settings.*seed: 0 → 1"):
        run_ablation(quick(conv_levels=(1,), linear_levels=(1,), activation_levels=(True,), seed=1), tmp_path)
    with pytest.raises(LabError, match=r"other settings.*conv_levels"):
        run_ablation(quick(conv_levels=(1, 2), linear_levels=(1,), activation_levels=(True,)), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    (tmp_path / SETTINGS_JSON).unlink()
    with pytest.raises(LabError, match=r"without ablation_settings\.json"):
        run_ablation(settings, tmp_path, progress=False)


# --- statistics ---------------------------------------------------------------------------------


def test_kruskal_eta_squared_matches_a_hand_computed_example() -> None:
    # Ranks 1-3 against 4-6: H = 12 / (n (n + 1)) · Σ R²/nᵢ − 3 (n + 1) = 12/42 · (36/3 + 225/3) − 21 = 27/7.
    result = kruskal_eta_squared([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert result.h == pytest.approx(27 / 7)
    assert (result.n, result.k) == (6, 2)
    assert result.eta_squared == pytest.approx((27 / 7 - 2 + 1) / (6 - 2)) == pytest.approx(5 / 7)
    assert result.p_value == pytest.approx(scipy_stats.kruskal([1, 2, 3], [4, 5, 6]).pvalue)
    assert result.reason is None

    # Three groups with ties, H from scipy: η² is (H − k + 1) / (n − k).
    groups = [[1.0, 2.0, 2.0, 4.0], [3.0, 5.0, 6.0], [6.0, 7.0, 9.0, 9.0, 10.0]]
    h = float(scipy_stats.kruskal(*groups).statistic)
    result = kruskal_eta_squared(groups)
    assert result.h == pytest.approx(h)
    assert result.eta_squared == pytest.approx((h - 3 + 1) / (12 - 3))
    assert eta_squared_h(h, 12, 3) == result.eta_squared


@pytest.mark.parametrize(
    ("groups", "reason"),
    [
        ([[1.0, 2.0, 3.0]], "at least two groups"),
        ([[1.0, 2.0], []], "at least two groups"),  # empty groups are dropped
        ([[1.0], [2.0]], "more observations than groups"),
        ([[5.0, 5.0, 5.0], [5.0, 5.0]], "identical"),
        ([[1.0, math.nan], [2.0, 3.0]], "non-finite"),
    ],
)
def test_kruskal_eta_squared_degenerate_cases_are_na_with_a_reason(
    groups: list[list[float]], reason: str
) -> None:
    result = kruskal_eta_squared(groups)
    assert result.h is None and result.p_value is None and result.eta_squared is None
    assert result.reason is not None and reason in result.reason


def test_negative_eta_squared_is_floored_to_zero_and_noted() -> None:
    result = kruskal_eta_squared([[1.0, 2.0, 3.0]] * 3)  # H = 0: η² = (0 − 2) / 6 < 0
    assert result.h == pytest.approx(0.0) and result.eta_squared == 0.0
    assert result.reason is not None and "floored" in result.reason
    with pytest.raises(ValueError, match="more observations"):
        eta_squared_h(1.0, 2, 2)


def synthetic_rows(conv_levels: tuple[int, ...] = (1, 4), repeats: int = 3) -> list[dict[str, Any]]:
    """Energy = 10 J × conv layers × 1.1 if 7 linear layers, ×1.02 with ReLU, + a small repeat jitter."""
    rows = []
    for conv, lin, act, rep in itertools.product(conv_levels, (3, 7), (False, True), range(repeats)):
        energy = 10.0 * conv * (1.1 if lin == 7 else 1.0) * (1.02 if act else 1.0) * (1 + 0.001 * rep)
        rows.append(
            {
                "dataset": "digits",
                "model": "simple_cnn",
                "design_id": ablation.design_id(conv, lin, act),
                "conv_layers": conv,
                "linear_layers": lin,
                "activation": act,
                "repeat": rep,
                "epochs": 1,
                "params": 100 * conv + lin,
                "accuracy": 0.5 + 0.01 * conv,
                "energy_j": energy,
                "energy_net_j": energy,
                "energy_source": "estimate",
                "seconds": energy / 10,
            }
        )
    return rows


def test_ablation_stats_relative_increase_accuracy_and_largest_effect() -> None:
    stats = ablation_stats(synthetic_rows())
    factors = {f["factor"]: f for f in stats["factors"]}
    assert factors["conv_layers"]["energy_increase"] == pytest.approx(3.0)  # 4 ÷ 1 − 1 in every stratum
    assert factors["linear_layers"]["energy_increase"] == pytest.approx(0.1)
    assert factors["activation"]["energy_increase"] == pytest.approx(0.02)
    assert factors["conv_layers"]["accuracy_diff"] == pytest.approx(0.03)
    assert factors["conv_layers"]["energy_increase_marginal"] == pytest.approx(3.0)
    assert stats["largest_energy_effect"] == stats["largest_eta_squared"] == "conv_layers"
    # All 12 conv-4 runs out-rank all 12 conv-1 runs: H = 12/(24·25)·(78² + 222²)/12 − 75 = 17.28.
    assert factors["conv_layers"]["kruskal_h"] == pytest.approx(17.28)
    assert factors["conv_layers"]["eta_squared"] == pytest.approx((17.28 - 1) / 22)
    assert stats["balanced"] and stats["runs"] == 24
    summary = render_ablation_summary(stats)
    assert "largest energy effect is **conv layers** (1 → 4: +300.0% energy" in summary


def test_ablation_stats_degenerate_tables_report_na_instead_of_crashing() -> None:
    one_level = ablation_stats(synthetic_rows(conv_levels=(2,)))
    conv = next(f for f in one_level["factors"] if f["factor"] == "conv_layers")
    assert conv["energy_increase"] is None and conv["eta_squared"] is None and "1 level" in conv["note"]
    assert one_level["largest_energy_effect"] == "linear_layers"

    flat = [{**r, "energy_j": 5.0, "energy_net_j": 5.0} for r in synthetic_rows()]
    stats = ablation_stats(flat)
    assert all(f["eta_squared"] is None and "identical" in f["note"] for f in stats["factors"])
    assert all(f["energy_increase"] == 0.0 for f in stats["factors"])
    assert stats["largest_energy_effect"] is None and stats["largest_eta_squared"] is None
    summary = render_ablation_summary(stats)
    assert "| n/a | n/a | n/a |" in summary and "identical" in summary

    # An unfinished study: one design missing from the table.
    partial = [r for r in synthetic_rows() if r["design_id"] != "c4-l7-relu"]
    stats = ablation_stats(partial)
    conv = next(f for f in stats["factors"] if f["factor"] == "conv_layers")
    assert conv["strata"] == 3 and "1 of 4 strata" in conv["note"]
    assert not ablation_stats(partial[:-1])["balanced"]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"dataset": "imagenet-22k"}, "unknown dataset"),
        ({"model": "transformer"}, "unknown model"),
        ({"conv_levels": (0, 4)}, "conv_levels must be integers ≥ 1"),
        ({"conv_levels": (-1,)}, "conv_levels must be integers ≥ 1"),
        ({"linear_levels": (3, 3)}, "duplicate"),
        ({"linear_levels": ()}, "at least one level"),
        ({"conv_levels": (1.5,)}, "integers"),
        ({"conv_levels": (True,)}, "integers"),
        ({"activation_levels": (1, 0)}, "booleans"),
        ({"activation_levels": (True, True)}, "duplicate"),
        ({"conv_levels": "14"}, "sequence"),
        ({"repeats": 0}, "repeats"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -8}, "batch_size"),
        ({"torch_threads": 0}, "torch_threads"),
        ({"lr": 0.0}, "lr"),
        ({"energy_source": "wattmeter"}, "unknown energy source"),
        ({"watts_per_core": 0.0}, "watts_per_core"),
    ],
)
def test_bad_settings_are_refused_and_nothing_is_written(
    tmp_path: Path, overrides: dict[str, Any], match: str
) -> None:
    out = tmp_path / "study"
    with pytest.raises(TrainerError, match=match):
        run_ablation(AblationSettings(**overrides), out, progress=False)
    assert not out.exists()


def test_an_unusable_device_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "study"
    with pytest.raises(TrainerError, match="device"):
        run_ablation(quick(device="definitely-not-a-device"), out, progress=False)
    assert not out.exists()


def test_threads_apply_during_the_study_and_are_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real_train = train

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(ablation_run, "train", recording)
    before = torch.get_num_threads()
    settings = quick(conv_levels=(1,), linear_levels=(1,), activation_levels=(True,), torch_threads=1)
    assert settings.threads == 1  # the old name still reads it
    run_ablation(settings, tmp_path, progress=False)
    assert seen == [1, 1, 1]  # the warm-up and both repeats
    assert torch.get_num_threads() == before


# --- the plan, the old thread setting, the flags ------------------------------------------------


def test_a_study_announces_its_plan_and_estimate_and_a_resumed_one_what_is_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = quick(conv_levels=(1, 2), linear_levels=(1,), activation_levels=(True,))
    with caplog.at_level("INFO", logger="studies.kit.progress"):
        run_ablation(settings, tmp_path, progress=False)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "studies.kit.progress"]
    assert line.startswith("ablation: 2 designs × 2 repeats = 4 runs of 1 epoch(s) on digits (quick")
    assert "about" in line and "to go" in line and "done" not in line
    caplog.clear()
    with caplog.at_level("INFO", logger="studies.kit.progress"):
        run_ablation(settings, tmp_path, progress=False)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "studies.kit.progress"]
    assert "4 of 4 done (resuming)" in line and "to go" not in line


#: ``ablation_settings.json`` as the study wrote it before its ``threads`` field became
#: ``torch_threads`` (quick, one conv and one linear level, ReLU on).
OLD_SETTINGS_JSON = {
    "table_version": 1,
    "dataset": "digits",
    "data_dir": None,
    "model": "simple_cnn",
    "conv_levels": [1],
    "linear_levels": [1],
    "activation_levels": [True],
    "repeats": 2,
    "epochs": 1,
    "batch_size": 64,
    "lr": 0.001,
    "seed": 0,
    "device": "cpu",
    "threads": 1,
    "energy_source": "estimate",
    "watts_per_core": None,
    "quick": True,
}


def test_a_study_directory_from_before_torch_threads_still_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = quick(conv_levels=(1,), linear_levels=(1,), activation_levels=(True,))
    assert settings.fingerprint() == OLD_SETTINGS_JSON  # the same fingerprint, under the old key
    real_train = train
    calls = 0

    def one_run_then_killed(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:  # the warm-up, one run, then a kill
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(ablation_run, "train", one_run_then_killed)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(settings, tmp_path, progress=False)
    (tmp_path / SETTINGS_JSON).write_text(json.dumps(OLD_SETTINGS_JSON, indent=2) + "\n")  # the old file
    monkeypatch.setattr(ablation_run, "train", real_train)
    run_ablation(settings, tmp_path, progress=False)
    assert keys(read_rows(tmp_path / RUNS_CSV)) == expected_keys(settings)
    with pytest.raises(LabError, match=r"other settings \(threads: 1 → 2\)"):
        run_ablation(dataclasses.replace(settings, torch_threads=2), tmp_path, progress=False)


@pytest.mark.parametrize("flag", ["--torch-threads", "--threads"])
def test_torch_threads_flag_and_its_old_spelling(flag: str) -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser)
    args = parser.parse_args(["ablation", flag, "2", "--conv-levels", "1,2"])
    s = dataclass_from_args(AblationSettings, args)
    assert s.torch_threads == 2 and s.conv_levels == (1, 2)
    assert dataclass_from_args(AblationSettings, parser.parse_args(["ablation"])).torch_threads == 1


def test_the_warm_up_gives_the_pace_of_an_epoch_over_the_whole_data(digits: Dataset) -> None:
    model = build_model("simple_cnn", input_shape=digits.input_shape, num_classes=digits.num_classes)
    with StudyEnergy.open("estimate", device="cpu", watts_per_core=None) as meter:
        epoch_s = warm_up(model, digits, TrainConfig(epochs=8), meter=meter)
    # About 0.1–1 s an epoch of digits' 1,437 + 360 samples on a small CPU; bounds far apart on purpose.
    assert 0.001 < epoch_s < 60
