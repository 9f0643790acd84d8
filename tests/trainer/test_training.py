"""One training run: it learns, it is reproducible, it stops when told, and it reports its energy."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from torch import nn

from energy import EnergyMeter
from tests.trainer.conftest import WrappingRapl
from trainer import training
from trainer.data import Dataset
from trainer.errors import TrainerError
from trainer.models import build_model
from trainer.training import StudyEnergy, TrainConfig, TrainResult, measure_idle_power_w, train

# A small simple_cnn and a brisk learning rate: about 0.93 held-out accuracy on digits in 3 epochs.
SMALL_CNN: dict[str, Any] = {"channels": 16, "hidden": 64}
FAST = TrainConfig(epochs=3, batch_size=64, lr=5e-3, idle_s=0.0)


class WattMeter(EnergyMeter):
    """A fake sensor: a constant ``idle_w`` on one device, plus ``busy_w`` per CPU-second of this process.

    Its source is not ``estimate``, so training measures idle power with it; while the process
    sleeps only the constant part grows, which is what idle power must come out as.
    """

    source = "fake"

    def __init__(self, idle_w: float, busy_w: float = 0.0) -> None:
        self.idle_w, self.busy_w = idle_w, busy_w
        self._t0, self._cpu0 = time.monotonic(), time.process_time()

    @property
    def devices(self) -> list[str]:
        return ["board", "cpu"]

    def read_j(self) -> dict[str, float]:
        return {
            "board": self.idle_w * (time.monotonic() - self._t0),
            "cpu": self.busy_w * (time.process_time() - self._cpu0),
        }


def small_cnn(data: Dataset, seed: int = 0) -> nn.Module:
    # train() seeds torch only after the model exists: seed here for reproducible initial weights.
    torch.manual_seed(seed)
    return build_model("simple_cnn", input_shape=data.input_shape, num_classes=data.num_classes, **SMALL_CNN)


def test_training_learns_digits(digits: Dataset, estimate_meter: EnergyMeter) -> None:
    result = train(small_cnn(digits), digits, FAST, meter=estimate_meter)
    assert result.epochs_run == 3
    assert len(result.accuracy_per_epoch) == 3
    assert result.accuracy == result.accuracy_per_epoch[-1]
    assert result.accuracy >= 0.8  # chance is 0.1
    assert not result.stopped_early
    assert result.seconds > 0


def test_same_seed_same_result(digits: Dataset, estimate_meter: EnergyMeter) -> None:
    config = TrainConfig(epochs=2, batch_size=64, lr=5e-3, idle_s=0.0, seed=3)
    first = train(small_cnn(digits, seed=3), digits, config, meter=estimate_meter)
    second = train(small_cnn(digits, seed=3), digits, config, meter=estimate_meter)
    assert first.accuracy_per_epoch == second.accuracy_per_epoch


def test_estimate_energy(digits: Dataset, estimate_meter: EnergyMeter) -> None:
    model = small_cnn(digits)
    start = time.monotonic()
    result = train(model, digits, TrainConfig(epochs=1, idle_s=5.0), meter=estimate_meter)
    assert time.monotonic() - start < 5.0  # no idle measurement for the estimate
    assert result.energy_source == "estimate"
    assert result.energy_j > 0
    # The estimate counts only this process's CPU time: nothing to subtract.
    assert result.idle_power_w == 0.0
    assert result.energy_net_j == result.energy_j
    assert result.energy_idle_included is False


def test_idle_power_of_a_sensor() -> None:
    meter = WattMeter(idle_w=5.0)
    assert measure_idle_power_w(meter, 0.05) == pytest.approx(5.0, rel=0.05)
    assert measure_idle_power_w(meter, 0.0) == 0.0


def test_net_energy_subtracts_idle_power(digits: Dataset) -> None:
    meter = WattMeter(idle_w=5.0, busy_w=20.0)
    result = train(small_cnn(digits), digits, TrainConfig(epochs=1, idle_s=0.05), meter=meter)
    assert result.energy_source == "fake"
    # Sleeping: ~no CPU time but the sampler's own reads and torch's pool threads still spinning from
    # earlier work (each % of a core is 0.2 W here, at 20 W per CPU-second): at least the 5 W.
    assert 5.0 * 0.98 <= result.idle_power_w < 10.0
    assert result.energy_j > 5.0 * result.seconds  # the busy part on top of the constant one
    assert result.energy_net_j == pytest.approx(result.energy_j - result.idle_power_w * result.seconds)
    assert 0 < result.energy_net_j < result.energy_j


def test_a_rapl_counter_that_wraps_during_a_run_is_measured_throughout(digits: Dataset) -> None:
    """A RAPL counter wraps several times in a long run: read only at the run's start and end, all
    but one wrap are lost; the study's sampler reads it throughout, so the run gets every joule."""
    naive = WrappingRapl(watts=100.0, range_s=0.25)
    naive_start, started = sum(naive.read_j().values()), time.monotonic()
    time.sleep(0.6)
    naive_j, naive_s = sum(naive.read_j().values()) - naive_start, time.monotonic() - started
    assert naive_j < 0.5 * 100.0 * naive_s  # two reads 0.6 s apart miss two wraps

    meter = WrappingRapl(watts=100.0, range_s=0.25)
    with StudyEnergy(meter) as study:

        def slow_epochs(_epoch: int, _accuracy: float) -> bool:
            time.sleep(0.35)  # the run lasts over 0.7 s: the counter wraps at least twice
            return True

        config = TrainConfig(epochs=2, idle_s=0.0)
        result = train(small_cnn(digits), digits, config, meter=study, on_epoch=slow_epochs)
    assert result.seconds > 0.7
    assert result.energy_source == "rapl" and result.energy_idle_included is True
    assert result.energy_j == pytest.approx(100.0 * result.seconds, rel=0.05)


def test_a_run_longer_than_the_curves_history_is_summed_in_stretches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampler keeps a bounded history; a run's energy is closed in stretches inside it."""
    monkeypatch.setattr(training, "CHECKPOINT_S", 0.1)
    with StudyEnergy(WrappingRapl(watts=50.0, range_s=10.0), period_s=0.01, history_s=0.5) as study:
        tally = study.tally()
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            time.sleep(0.02)
            tally.poll()
        seconds, joules = tally.finish()
        whole = study.energy_between(tally.start_s, tally.start_s + seconds)
    assert joules == pytest.approx(50.0 * seconds, rel=0.05)
    assert whole < 0.6 * joules  # asked at once, the start is beyond the curve's history


def test_study_energy_labels_say_the_source_and_idle() -> None:
    with StudyEnergy(WrappingRapl()) as rapl:
        assert rapl.label("energy per run") == "energy per run (J, rapl, idle included)"
        assert rapl.label("net energy per run", net=True) == "net energy per run (J, rapl, idle subtracted)"
        assert rapl.describe == "rapl, idle included"
    with StudyEnergy(WattMeter(idle_w=1.0)) as fake:  # a source the labels do not know: the meter says
        assert fake.label("energy") == "energy (J, fake, idle included)"


def test_callback_stops_early(digits: Dataset, estimate_meter: EnergyMeter) -> None:
    seen: list[tuple[int, float]] = []

    def on_epoch(epoch: int, accuracy: float) -> bool:
        seen.append((epoch, accuracy))
        return epoch < 2

    config = TrainConfig(epochs=5, batch_size=64, lr=5e-3, idle_s=0.0)
    result = train(small_cnn(digits), digits, config, meter=estimate_meter, on_epoch=on_epoch)
    assert result.stopped_early
    assert result.epochs_run == 2
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert [accuracy for _, accuracy in seen] == result.accuracy_per_epoch


def test_callback_stopping_at_the_last_epoch_is_not_early(
    digits: Dataset, estimate_meter: EnergyMeter
) -> None:
    config = TrainConfig(epochs=1, idle_s=0.0)
    result: TrainResult = train(
        small_cnn(digits), digits, config, meter=estimate_meter, on_epoch=lambda _e, _a: False
    )
    assert result.epochs_run == 1
    assert not result.stopped_early


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": 0},
        {"batch_size": 0},
        {"lr": 0.0},
        {"lr": -1e-3},
        {"beta1": 1.0},
        {"beta2": -0.1},
        {"eps": 0.0},
    ],
)
def test_invalid_config(bad: dict[str, Any]) -> None:
    with pytest.raises(TrainerError):
        TrainConfig(**bad)


class _Diverging(nn.Module):
    """Finite until its weight is pushed by one Adam step, then NaN: a run that diverges."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(64, num_classes)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.linear(x.flatten(1))
        return out if self.calls < 3 or not self.training else out * float("nan")


def test_divergence_stops_training_and_is_reported(digits: Dataset, estimate_meter: EnergyMeter) -> None:
    result = train(_Diverging(10), digits, TrainConfig(epochs=5, idle_s=0), meter=estimate_meter)
    assert result.diverged and result.stopped_early
    assert result.epochs_run == 1
