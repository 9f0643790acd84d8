"""The HPO study: strategies, grid order, resume after a kill, pruning, summary and report, bad input.

One test trains for real (a quick study of every strategy); the rest patch ``trainer.hpo.run.train``
with a deterministic fake (the study's warm-up included), so that they run in well under a second of
training each.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from torch import nn

from energy import EnergyMeter
from studies.kit.flags import dataclass_from_args
from tests.trainer.conftest import WrappingRapl
from trainer import hpo
from trainer.cli import add_commands
from trainer.data import Dataset
from trainer.errors import TrainerError
from trainer.hpo import HpoSettings, read_trials_csv, run_hpo, summarize_trials, write_hpo_report
from trainer.training import EpochCallback, TrainConfig, TrainResult

ENERGY_PER_EPOCH_J = 2.0


class FakeTrain:
    """A deterministic stand-in for ``train``: accuracy is a function of the learning rate and epoch.

    Accuracy peaks at lr = 1e-2.5 and grows with epochs; each epoch costs ``ENERGY_PER_EPOCH_J``.
    ``interrupt_on`` (a 1-based call number) raises KeyboardInterrupt there, as Ctrl-C would.
    """

    def __init__(self, interrupt_on: int | None = None) -> None:
        self.calls: list[TrainConfig] = []
        self.interrupt_on = interrupt_on

    def __call__(
        self,
        model: nn.Module,
        data: Dataset,
        config: TrainConfig,
        *,
        meter: EnergyMeter,
        on_epoch: EpochCallback | None = None,
        idle_power_w: float | None = None,
    ) -> TrainResult:
        self.calls.append(config)
        if len(self.calls) == self.interrupt_on:
            raise KeyboardInterrupt
        quality = max(0.05, 1.0 - abs(math.log10(config.lr) + 2.5) / 3.0)
        accuracies: list[float] = []
        for epoch in range(1, config.epochs + 1):
            accuracies.append(quality * (0.5 + 0.5 * epoch / config.epochs))
            if on_epoch is not None and not on_epoch(epoch, accuracies[-1]):
                break
        energy_j = ENERGY_PER_EPOCH_J * len(accuracies)
        return TrainResult(
            accuracy=accuracies[-1],
            accuracy_per_epoch=accuracies,
            epochs_run=len(accuracies),
            stopped_early=len(accuracies) < config.epochs,
            seconds=0.01 * len(accuracies),
            energy_j=energy_j,
            energy_net_j=energy_j,
            idle_power_w=0.0,
            energy_source=meter.source,
        )


@pytest.fixture
def fake_train(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeTrain]:
    def install(interrupt_on: int | None = None) -> FakeTrain:
        fake = FakeTrain(interrupt_on)
        monkeypatch.setattr("trainer.hpo.run.train", fake)
        return fake

    return install


def settings(**overrides: Any) -> HpoSettings:
    base: dict[str, Any] = {"quick": True, "energy_source": "estimate", "seed": 0}
    base.update(overrides)
    return HpoSettings(**base)


def params_of(row: dict[str, str], names: tuple[str, ...] = ("lr", "beta1", "beta2")) -> tuple[float, ...]:
    return tuple(float(row[n]) for n in names)


# --- a real quick study -------------------------------------------------------------------------


def test_quick_study_of_every_strategy_writes_trials_summary_and_plots(tmp_path: Path) -> None:
    s = settings()
    trials_csv = run_hpo(s, tmp_path, progress=False)

    assert trials_csv == tmp_path / "hpo_trials.csv"
    rows = read_trials_csv(trials_csv)
    with trials_csv.open() as f:
        header = next(csv.reader(f))
    assert header == [*hpo.TRIAL_KEY_COLUMNS, "lr", "beta1", "beta2", *hpo.TRIAL_RESULT_COLUMNS]
    for strategy in hpo.STRATEGIES:
        mine = [r for r in rows if r["strategy"] == strategy]
        assert len(mine) == s.n_rounds * s.n_repeats == 4
        assert [int(r["round"]) for r in mine] == [1, 2, 3, 4]
    for row in rows:
        assert row["energy_source"] == "estimate"
        assert float(row["energy_j"]) > 0  # pruned trials too: their energy was spent
        assert 0 <= float(row["accuracy"]) <= 1
        assert row["state"] in ("COMPLETE", "PRUNED")
        assert (row["state"] == "PRUNED") == (row["pruned"] == "True")
        assert int(row["epochs_run"]) == s.n_epochs or row["state"] == "PRUNED"
        assert float(row["sampler_energy_j"]) >= 0 and float(row["sampler_seconds"]) >= 0
        assert row["energy_idle_included"] == "false"
    for strategy in hpo.STRATEGIES:  # best_so_far: the running best of the completed trials
        completed: list[float] = []
        for row in (r for r in rows if r["strategy"] == strategy):
            if row["state"] == "COMPLETE":
                completed.append(float(row["accuracy"]))
            expected = str(max(completed)) if completed else ""
            assert row["best_so_far"] == expected

    with (tmp_path / "hpo_summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert [r["strategy"] for r in summary] == list(hpo.STRATEGIES)
    assert list(summary[0]) == list(hpo.SUMMARY_COLUMNS)
    assert {r["energy_idle"] for r in summary} == {"idle not included"}
    markdown = (tmp_path / "hpo_summary.md").read_text()
    assert "ESTIMATE" in markdown and "(J, estimate, idle not included)" in markdown
    for strategy in hpo.STRATEGIES:
        assert f"| {strategy} |" in markdown
    for png in ("hpo_best_so_far.png", "hpo_cumulative_energy.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "hpo_settings.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_study_on_rapl_reads_it_throughout_and_labels_idle(
    tmp_path: Path, wrapping_rapl: WrappingRapl
) -> None:
    """One sampler reads the (fake, wrapping) RAPL counter throughout the HPO: each trial's energy
    and the Optuna sampler's overhead between trials are the counter's 100 W over their time."""
    run_hpo(settings(energy_source="rapl", strategies=("random",), idle_s=0.05), tmp_path, progress=False)
    rows = read_trials_csv(tmp_path / "hpo_trials.csv")
    for row in rows:
        assert row["energy_source"] == "rapl" and row["energy_idle_included"] == "true"
        assert float(row["energy_j"]) == pytest.approx(100.0 * float(row["seconds"]), rel=0.1)
        assert float(row["sampler_energy_j"]) == pytest.approx(
            100.0 * float(row["sampler_seconds"]), rel=0.1, abs=0.5
        )
    markdown = (tmp_path / "hpo_summary.md").read_text()
    assert "(J, rapl, idle included)" in markdown and "ESTIMATE" not in markdown


# --- the grid -----------------------------------------------------------------------------------


def test_grid_cuts_each_range_into_five_values_log_spaced_where_log() -> None:
    grid = hpo.grid_values(5)
    assert list(grid) == ["lr", "beta1", "beta2", "eps", "weight_decay"]
    assert grid["lr"] == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    assert grid["beta1"] == pytest.approx([0.5, 0.62475, 0.7495, 0.87425, 0.999])
    for name, values in grid.items():
        r = hpo.PARAM_RANGES[name]
        assert len(values) == 5 and values[0] == r.low and values[-1] == r.high
    assert list(hpo.grid_values(3)) == ["lr", "beta1", "beta2"]


def test_grid_takes_points_in_a_random_order_fixed_by_seed_each_once(
    tmp_path: Path, fake_train: Callable[..., FakeTrain]
) -> None:
    fake_train()
    grid = hpo.grid_values(3)

    def points(seed: int, out: str) -> list[tuple[float, ...]]:
        run_hpo(settings(strategies=("grid",), rounds=12, seed=seed), tmp_path / out, progress=False)
        return [params_of(r) for r in read_trials_csv(tmp_path / out / "hpo_trials.csv")]

    first, again, other = points(0, "a"), points(0, "b"), points(1, "c")
    assert len(set(first)) == 12  # no point twice
    for point in first:
        assert all(v in grid[n] for n, v in zip(("lr", "beta1", "beta2"), point, strict=True))
    assert first == again  # the order is fixed by the seed...
    assert first != other  # ...and changes with it
    in_product_order = [p for p in itertools.product(*grid.values())][:12]
    assert first != in_product_order  # shuffled, not swept


def test_grid_rounds_beyond_the_grid_are_refused() -> None:
    with pytest.raises(TrainerError, match="125 points"):
        settings(strategies=("grid",), rounds=126)
    settings(strategies=("random",), rounds=126)  # only the grid is bounded


# --- resume -------------------------------------------------------------------------------------


def test_more_rounds_extend_a_finished_study_without_repeating_trials(
    tmp_path: Path, fake_train: Callable[..., FakeTrain]
) -> None:
    fake = fake_train()
    run_hpo(settings(strategies=("random",), rounds=2), tmp_path, progress=False)
    before = read_trials_csv(tmp_path / "hpo_trials.csv")
    assert len(fake.calls) == 1 + 2  # the warm-up, then 2 rounds

    run_hpo(settings(strategies=("random",), rounds=4), tmp_path, progress=False)
    after = read_trials_csv(tmp_path / "hpo_trials.csv")
    assert len(fake.calls) == 3 + 1 + 2  # the warm-up, then only the 2 missing rounds
    assert len(after) == 4
    assert after[:2] == [{**r, "target_accuracy": after[0]["target_accuracy"]} for r in before]
    assert len({params_of(r) for r in after}) == 4  # the resumed sampler did not replay its first points


def test_a_killed_run_resumes_without_repeating_finished_trials(
    tmp_path: Path, fake_train: Callable[..., FakeTrain]
) -> None:
    s = settings(strategies=("tpe",), rounds=4)
    fake_train(interrupt_on=1 + 3)  # the warm-up, 2 rounds, then Ctrl-C in the third
    with pytest.raises(KeyboardInterrupt):
        run_hpo(s, tmp_path, progress=False)
    assert not (tmp_path / "hpo_trials.csv").exists()  # no half-written results

    # A hard kill (no chance to mark the trial failed) leaves it RUNNING in the storage.
    storage = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.load_study(study_name=hpo.study_name(s, "tpe", 0), storage=storage)
    study.ask()
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE", "FAIL", "RUNNING"]

    fake = fake_train()
    run_hpo(s, tmp_path, progress=False)
    assert len(fake.calls) == 1 + 2  # the warm-up, then the 2 rounds of 4 still missing
    rows = read_trials_csv(tmp_path / "hpo_trials.csv")
    assert [r["round"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["trial"] for r in rows] == ["0", "1", "4", "5"]  # the failed and the stale trial never count
    states = [
        t.state.name for t in optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
    ]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]


def test_study_names_are_deterministic_and_change_with_what_changes_results() -> None:
    a = hpo.study_name(settings(rounds=4), "bayes", 0)
    assert a == hpo.study_name(settings(rounds=40, repeats=3, strategies=("bayes",)), "bayes", 0)
    assert a != hpo.study_name(settings(rounds=4), "bayes", 1)
    assert a != hpo.study_name(settings(epochs=3), "bayes", 0)
    assert a != hpo.study_name(settings(space=5), "bayes", 0)


# --- pruning ------------------------------------------------------------------------------------


def test_hyperband_prunes_poor_trials_early_and_their_energy_counts(
    tmp_path: Path, fake_train: Callable[..., FakeTrain]
) -> None:
    fake_train()
    s = settings(strategies=("bayes", "bayes+hyperband"), rounds=6, epochs=4, startup_trials=4)
    run_hpo(s, tmp_path, progress=False)
    rows = read_trials_csv(tmp_path / "hpo_trials.csv")
    pruned = [r for r in rows if r["strategy"] == "bayes+hyperband" and r["state"] == "PRUNED"]
    assert pruned
    for row in pruned:
        assert row["pruned"] == "True"
        assert int(row["epochs_run"]) < 4
        assert float(row["energy_j"]) == ENERGY_PER_EPOCH_J * int(row["epochs_run"])
    assert all(r["state"] == "COMPLETE" for r in rows if r["strategy"] == "bayes")

    summary = {r["strategy"]: r for r in summarize_trials(rows)}
    assert summary["bayes+hyperband"]["pruned_rounds"] == len(pruned)
    assert summary["bayes+hyperband"]["pruning_baseline"] == "bayes"
    assert summary["bayes+hyperband"]["pruning_energy_saved_pct"] > 0
    assert "Energy saved by pruning" in (tmp_path / "hpo_summary.md").read_text()


# --- the summary --------------------------------------------------------------------------------


def _row(
    strategy: str, repeat: int, rnd: int, accuracy: float, energy_j: float, pruned: bool = False
) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "repeat": repeat,
        "round": rnd,
        "accuracy": accuracy,
        "energy_j": energy_j,
        "energy_source": "estimate",
        "epochs_run": 1 if pruned else 3,
        "pruned": pruned,
    }


HAND_TABLE = [
    # bayes, repeat 0 reaches 0.9 at round 2 (energy 10 + 20); repeat 1 at round 3 (5 + 5 + 5).
    _row("bayes", 0, 1, 0.50, 10.0),
    _row("bayes", 0, 2, 0.92, 20.0),
    _row("bayes", 0, 3, 0.80, 30.0),
    _row("bayes", 1, 3, 0.95, 5.0),  # out of order on purpose
    _row("bayes", 1, 1, 0.60, 5.0),
    _row("bayes", 1, 2, 0.70, 5.0),
    # bayes+hyperband: a pruned round at 0.99 does not count; repeat 0 never reaches the target.
    _row("bayes+hyperband", 0, 1, 0.40, 4.0),
    _row("bayes+hyperband", 0, 2, 0.99, 1.0, pruned=True),
    _row("bayes+hyperband", 0, 3, 0.85, 4.0),
    _row("bayes+hyperband", 1, 1, 0.91, 6.0),
    _row("bayes+hyperband", 1, 2, 0.30, 1.0, pruned=True),
    _row("bayes+hyperband", 1, 3, 0.20, 1.0, pruned=True),
]


def test_summarize_trials_on_a_hand_written_table() -> None:
    summary = {s["strategy"]: s for s in summarize_trials(HAND_TABLE, target_accuracy=0.9)}
    assert list(summary) == ["bayes", "bayes+hyperband"]
    bayes, pruning = summary["bayes"], summary["bayes+hyperband"]

    assert bayes["repeats"] == 2 and bayes["rounds"] == 3 and bayes["target_accuracy"] == 0.9
    assert bayes["reached"] == 2
    assert bayes["rounds_to_target_mean"] == 2.5
    assert bayes["rounds_to_target_std"] == pytest.approx(math.sqrt(0.5))
    assert bayes["energy_to_target_j_mean"] == 22.5  # (30 + 15) / 2
    assert bayes["best_accuracy_mean"] == pytest.approx(0.935)
    assert bayes["study_energy_j_mean"] == 37.5  # (60 + 15) / 2
    assert bayes["total_energy_j"] == 75.0
    assert bayes["energy_per_round_j_mean"] == 12.5
    assert bayes["pruning_baseline"] == "" and math.isnan(bayes["pruning_energy_saved_pct"])

    assert pruning["reached"] == 1  # repeat 0's 0.99 was pruned, so only repeat 1 reached 0.9
    assert pruning["rounds_to_target_mean"] == 1.0
    assert math.isnan(pruning["rounds_to_target_std"])  # one value: no spread to report
    assert pruning["energy_to_target_j_mean"] == 6.0
    assert pruning["best_accuracy_mean"] == pytest.approx((0.85 + 0.91) / 2)
    assert pruning["pruned_rounds"] == 3
    assert pruning["epochs_per_round_mean"] == 2.0
    assert pruning["study_energy_j_mean"] == 8.5  # (9 + 8) / 2
    assert pruning["pruning_baseline"] == "bayes"
    assert pruning["pruning_energy_saved_pct"] == pytest.approx(100 * (1 - 8.5 / 37.5))


def test_summarize_trials_when_no_repeat_reaches_the_target() -> None:
    (bayes,) = [s for s in summarize_trials(HAND_TABLE, target_accuracy=0.97) if s["strategy"] == "bayes"]
    assert bayes["reached"] == 0
    assert math.isnan(bayes["rounds_to_target_mean"]) and math.isnan(bayes["energy_to_target_j_mean"])
    assert "| bayes | 0.9350 ± 0.0212 | – | 0/2 | – |" in hpo.summary_markdown(
        summarize_trials(HAND_TABLE, target_accuracy=0.97)
    )


def test_default_target_is_a_fraction_of_the_best_completed_accuracy() -> None:
    summary = summarize_trials(HAND_TABLE)  # best completed: 0.95 (the pruned 0.99 does not count)
    assert summary[0]["target_accuracy"] == pytest.approx(0.99 * 0.95)
    assert summarize_trials(HAND_TABLE, target_fraction=0.5)[0]["target_accuracy"] == pytest.approx(0.475)


def test_a_recorded_target_is_used_unless_a_target_or_fraction_is_given() -> None:
    recorded = [{**row, "target_accuracy": 0.6} for row in HAND_TABLE]
    assert summarize_trials(recorded)[0]["target_accuracy"] == 0.6
    assert summarize_trials(recorded, target_fraction=0.5)[0]["target_accuracy"] == pytest.approx(0.475)
    assert summarize_trials(recorded, target_accuracy=0.7)[0]["target_accuracy"] == 0.7


def test_summarize_trials_accepts_csv_strings_and_rejects_other_tables() -> None:
    as_strings = [{k: str(v) for k, v in row.items()} for row in HAND_TABLE]
    assert summarize_trials(as_strings, target_accuracy=0.9)[0]["energy_to_target_j_mean"] == 22.5
    with pytest.raises(TrainerError, match="energy_j"):
        summarize_trials([{"strategy": "bayes", "repeat": 0, "round": 1, "accuracy": 0.5}])


def test_write_hpo_report_from_the_csv_alone_reproduces_the_summary(
    tmp_path: Path, fake_train: Callable[..., FakeTrain]
) -> None:
    fake_train()
    run_hpo(settings(strategies=("random", "grid")), tmp_path / "run", progress=False)
    paths = write_hpo_report(tmp_path / "run" / "hpo_trials.csv", tmp_path / "redrawn")
    assert [p.name for p in paths] == [
        "hpo_summary.csv",
        "hpo_summary.md",
        "hpo_best_so_far.png",
        "hpo_cumulative_energy.png",
    ]
    for name in ("hpo_summary.csv", "hpo_summary.md"):
        assert (tmp_path / "redrawn" / name).read_bytes() == (tmp_path / "run" / name).read_bytes()
    assert all(p.stat().st_size > 0 for p in paths)


def test_write_hpo_report_refuses_a_missing_or_foreign_table(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="no trials table"):
        write_hpo_report(tmp_path / "missing.csv", tmp_path)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(TrainerError, match="not an HPO trials table"):
        write_hpo_report(tmp_path / "other.csv", tmp_path)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"strategies": ("bayes", "hillclimb")},
            r"unknown strategy 'hillclimb'; choose from bayes, tpe, random",
        ),
        ({"strategies": ()}, "no strategy"),
        ({"dataset": "mnist-9000"}, "unknown dataset 'mnist-9000'"),
        ({"model": "transformer"}, "unknown model 'transformer'"),
        ({"rounds": 0}, "rounds must be an integer ≥ 1, got 0"),
        ({"repeats": -1}, "repeats must be an integer ≥ 1"),
        ({"space": 4}, "space must be 3"),
        ({"target_accuracy": 1.5}, "target_accuracy"),
        ({"energy_source": "wattmeter"}, "unknown energy source 'wattmeter'"),
        ({"watts_per_core": 0.0}, "watts_per_core"),
        ({"storage": "not a url"}, "storage must be a database URL"),
        ({"model_params": {"conv_layers": 0}}, "simple_cnn needs at least one conv"),
        ({"model_params": {"depth": 3}}, "bad parameters for model 'simple_cnn'"),
        ({"model_params": "conv_layers"}, "key=value pairs"),
        ({"torch_threads": -1}, "torch_threads"),
        ({"dataset": "fashion-mnist", "data_dir": None}, "fashion-mnist"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(TrainerError, match=message):
        run_hpo(settings(**overrides), out, progress=False)
    assert not out.exists()


def test_an_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    with pytest.raises(TrainerError, match="not a directory"):
        run_hpo(settings(), tmp_path / "taken", progress=False)


def test_settings_accept_plain_argparse_values() -> None:
    s = HpoSettings(
        strategies="bayes, random",  # type: ignore[arg-type]
        data_dir="data",  # type: ignore[arg-type]
        model_params="conv_layers=2, activation=false, hidden=64",  # type: ignore[arg-type]
        rounds=3,
    )
    assert s.strategies == ("bayes", "random")
    assert s.data_dir == Path("data")
    assert s.model_params == {"conv_layers": 2, "activation": False, "hidden": 64}
    assert (s.n_rounds, s.n_repeats, s.n_epochs, s.data_limit) == (
        3,
        hpo.DEFAULT_REPEATS,
        hpo.DEFAULT_EPOCHS,
        None,
    )
    quick = HpoSettings(quick=True, epochs=3)
    assert (quick.n_rounds, quick.n_repeats, quick.n_epochs, quick.data_limit) == (4, 1, 3, hpo.QUICK_LIMIT)


# --- the plan, the flags ------------------------------------------------------------------------


def test_a_run_announces_its_plan_and_estimate_and_a_resumed_one_what_is_done(
    tmp_path: Path, fake_train: Callable[..., FakeTrain], caplog: pytest.LogCaptureFixture
) -> None:
    fake_train()
    s = settings(strategies=("random", "tpe"), rounds=3)
    with caplog.at_level("INFO", logger="studies.kit.progress"):
        run_hpo(s, tmp_path, progress=False)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "studies.kit.progress"]
    assert line.startswith(
        "hpo: 2 strategies × 1 repeats = 2 studies × 3 rounds = 6 trials of 2 epoch(s) on digits (quick"
    )
    assert "to go" in line and "done" not in line

    caplog.clear()
    fake = fake_train()
    with caplog.at_level("INFO", logger="studies.kit.progress"):
        run_hpo(settings(strategies=("random", "tpe"), rounds=4), tmp_path, progress=False)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "studies.kit.progress"]
    assert "8 trials" in line and "6 of 8 done (resuming)" in line and "to go" in line
    assert len(fake.calls) == 1 + 2

    caplog.clear()
    fake = fake_train()
    with caplog.at_level("INFO", logger="studies.kit.progress"):
        run_hpo(settings(strategies=("random", "tpe"), rounds=4), tmp_path, progress=False)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "studies.kit.progress"]
    assert "8 of 8 done" in line and "to go" not in line
    assert fake.calls == []  # nothing left: not even the warm-up runs


@pytest.mark.parametrize("flag", ["--torch-threads", "--threads"])
def test_torch_threads_flag_and_its_old_spelling(flag: str) -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser)
    args = parser.parse_args(["hpo", flag, "2", "--strategies", "tpe,random"])
    s = dataclass_from_args(HpoSettings, args)
    assert s.torch_threads == 2 and s.strategies == ("tpe", "random")
