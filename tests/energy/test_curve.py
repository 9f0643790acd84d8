"""The sampler's curve under a coarse counter, period detection, a failing or stalled meter, and the
synthetic source's known truth."""

from __future__ import annotations

import itertools
import logging
import statistics
import threading
import time

import pytest

from energy import EnergyError, EnergyMeter, EnergySampler, SyntheticMeter, create_meter
from energy.synthetic import validate_synthetic
from tests.energy.conftest import FakeClock


class SteppingCounter(EnergyMeter):
    """Constant power, read through a counter that advances only every ``period_s`` (like NVML)."""

    source = "nvml"

    def __init__(self, clock: FakeClock, power_w: float, period_s: float) -> None:
        self.clock, self.power_w, self.period_s, self.start_s = clock, power_w, period_s, clock()
        self.fail = False

    @property
    def devices(self) -> list[str]:
        return ["gpu"]

    def read_j(self) -> dict[str, float]:
        if self.fail:
            raise EnergyError("driver gone")
        ticks = int((self.clock() - self.start_s) / self.period_s + 1e-9)
        return {"gpu": self.power_w * ticks * self.period_s}


def run_sampler(sampler: EnergySampler, clock: FakeClock, seconds: float, step_s: float) -> None:
    for _ in range(round(seconds / step_s)):
        clock.advance(step_s)
        sampler.sample()


def test_short_intervals_under_a_coarse_counter_get_their_share_not_zero_or_a_lump(clock: FakeClock) -> None:
    # 200 W read through a 100 ms counter sampled every 25 ms: every 5 ms interval is worth 1 J.
    meter = SteppingCounter(clock, power_w=200.0, period_s=0.1)
    sampler = EnergySampler(meter, period_s=0.025, clock=clock)
    sampler.counter_period_s = 0.1
    run_sampler(sampler, clock, 3.0, 0.025)
    start = clock() - 2.5
    shares = [sampler.energy_between(start + i * 0.005, start + (i + 1) * 0.005) for i in range(300)]

    assert min(shares) > 0, "a 5 ms interval read as 0 J"
    assert statistics.median(shares) == pytest.approx(1.0, rel=0.05)
    assert max(shares) < 1.5, "one interval received a whole counter step"
    assert sampler.energy_between(start, start + 1.5) == pytest.approx(300.0, rel=0.02)


def test_a_flat_counter_is_flat_not_late(clock: FakeClock) -> None:
    meter = SteppingCounter(clock, power_w=0.0, period_s=0.1)
    sampler = EnergySampler(meter, period_s=0.025, clock=clock)
    sampler.counter_period_s = 0.1
    run_sampler(sampler, clock, 1.0, 0.025)

    assert sampler.power_w() == {"gpu": 0.0}
    assert sampler.energy_between(clock() - 0.5, clock() + 0.1) == 0.0


def test_the_counter_period_is_detected_and_sampling_follows_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="energy.sampler")
    meter = SyntheticMeter(watts_per_core=10.0, idle_w=10.0, counter_period_ms=40.0, read_ms=1.0)
    sampler = EnergySampler(meter)
    try:
        assert sampler.counter_period_s is None
        sampler.start()
        assert sampler.wait_ready(10.0)
        assert sampler.counter_period_s == pytest.approx(0.04, rel=0.25)
        assert sampler.period_s == pytest.approx(sampler.counter_period_s / 4)  # 4 readings per update
        assert any("updates every" in r.getMessage() for r in caplog.records)
    finally:
        sampler.stop()
        meter.close()


def test_a_counter_that_changes_at_every_read_is_sampled_at_the_default_period() -> None:
    with create_meter("estimate") as meter:
        sampler = EnergySampler(meter)
        sampler.start()
        try:
            assert sampler.wait_ready(10.0)
            assert sampler.counter_period_s == 0.0
            assert sampler.period_s == 0.02
        finally:
            sampler.stop()


def test_a_failing_meter_makes_the_energy_unknown_counts_errors_and_recovers(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    meter = SteppingCounter(clock, power_w=100.0, period_s=0.01)
    sampler = EnergySampler(meter, period_s=0.01, clock=clock)
    run_sampler(sampler, clock, 0.5, 0.01)
    assert sampler.status() is None
    meter.fail = True
    for _ in range(5):
        clock.advance(0.01)
        with pytest.raises(EnergyError):
            sampler.sample()

    status = sampler.status()
    assert status is not None and "nvml meter read failed" in status and "driver gone" in status
    assert sampler.read_errors == 5
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # once per episode
    meter.fail = False
    clock.advance(0.01)
    sampler.sample()
    assert sampler.status() is None
    assert any("readable again" in r.getMessage() for r in caplog.records)


def test_a_stalled_meter_makes_the_energy_unknown_once_per_episode(clock: FakeClock) -> None:
    meter = SteppingCounter(clock, power_w=100.0, period_s=0.01)
    sampler = EnergySampler(meter, period_s=0.01, clock=clock)
    run_sampler(sampler, clock, 0.5, 0.01)
    clock.advance(sampler.stall_after_s + 0.5)  # a read that never returned

    status = sampler.status()
    assert status is not None and "stalled" in status
    assert sampler.status() is not None
    assert sampler.read_errors == 1  # one episode
    sampler.sample()
    assert sampler.status() is None


def test_joules_per_cpu_second_subtract_idle_and_follow_the_cpu_clock(clock: FakeClock) -> None:
    # 30 W of which 10 W idle, while the consumers use 2 CPU-seconds per second: 10 J per CPU-second.
    meter = SteppingCounter(clock, power_w=30.0, period_s=0.01)
    cpu = {"s": 0.0}

    def cpu_clock() -> float:
        return cpu["s"]

    sampler = EnergySampler(
        meter, period_s=0.01, clock=clock, cpu_clock=cpu_clock, idle_power_w={"gpu": 10.0}
    )
    for _ in range(200):
        clock.advance(0.01)
        cpu["s"] += 0.02
        sampler.sample()
    factor = sampler.joules_per_cpu_s()

    assert factor is not None
    assert factor[0] == pytest.approx(10.0, rel=0.02)
    assert factor[1] == {"gpu": pytest.approx(1.0)}


def test_synthetic_truth_is_idle_plus_cpu_and_the_counter_lags_it() -> None:
    cpu = {"s": 0.0}
    now = {"s": 0.0}
    meter = SyntheticMeter(
        watts_per_core=8.0,
        idle_w=10.0,
        counter_period_ms=1000.0,  # the firmware thread ticks once a (real) second: too slow to interfere
        read_ms=0.0,
        cpu_time_s=lambda: cpu["s"],
        clock=lambda: now["s"],
    )
    try:
        now["s"], cpu["s"] = 2.0, 0.5
        assert meter.true_j() == pytest.approx(10.0 * 2.0 + 8.0 * 0.5)
        assert meter.read_j() == {meter.devices[0]: 0.0}  # the counter has not ticked yet
        assert meter.source == "synthetic" and meter.is_model and meter.idle_included
        assert meter.idle_power_w == {meter.devices[0]: 10.0}
    finally:
        meter.close()


def test_synthetic_reads_take_their_time_and_the_counter_steps() -> None:
    meter = SyntheticMeter(watts_per_core=10.0, idle_w=100.0, counter_period_ms=50.0, read_ms=4.0)
    try:
        started = time.perf_counter()
        values = []
        for _ in range(40):
            values.append(meter.read_j()[meter.devices[0]])
        elapsed = time.perf_counter() - started
        assert elapsed >= 40 * 0.004
        steps = [b - a for a, b in itertools.pairwise(values) if b != a]
        assert steps, "the counter never advanced"
        # At 100 W idle a 50 ms tick is about 5 J; most reads see no change.
        assert len(steps) < len(values) / 2
        assert meter.true_j() >= values[-1]
    finally:
        meter.close()
    assert not any(t.name == "synthetic-counter" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize(
    ("idle_w", "period_ms", "read_ms"), [(-1.0, 100.0, 4.0), (10.0, 0.0, 4.0), (10.0, 100.0, -1.0)]
)
def test_synthetic_settings_are_validated(idle_w: float, period_ms: float, read_ms: float) -> None:
    with pytest.raises(ValueError, match="synthetic"):
        validate_synthetic(idle_w, period_ms, read_ms)


def test_synthetic_is_chosen_only_by_name() -> None:
    with create_meter("synthetic", watts_per_core=5.0) as meter:
        assert isinstance(meter, SyntheticMeter) and meter.watts_per_core == 5.0
    with create_meter("auto", powercap_root="/nonexistent") as meter:
        assert meter.source == "estimate"
