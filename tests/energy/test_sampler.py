"""EnergySampler: interpolation, on-demand samples, power, history bounds and the background thread."""

from __future__ import annotations

import logging
import threading

import pytest

from energy import EnergyError, EnergyMeter, EnergySampler
from tests.energy.conftest import FakeClock


class TableMeter(EnergyMeter):
    """A meter whose cumulative joules are set by the test (like a counter that steps)."""

    source = "rapl"

    def __init__(self) -> None:
        self.energy_j = {"package-0": 0.0, "dram-0": 0.0}
        self.reads = 0

    @property
    def devices(self) -> list[str]:
        return list(self.energy_j)

    def read_j(self) -> dict[str, float]:
        self.reads += 1
        return dict(self.energy_j)


class PowerMeter(EnergyMeter):
    """Constant power on a clock: cumulative joules = power × elapsed time."""

    source = "nvml"

    def __init__(self, clock: FakeClock, power_w: float) -> None:
        self.clock, self.power_w, self.start_s = clock, power_w, clock()
        self.reads = 0

    @property
    def devices(self) -> list[str]:
        return ["gpu0"]

    def read_j(self) -> dict[str, float]:
        self.reads += 1
        return {"gpu0": self.power_w * (self.clock() - self.start_s)}


def test_interpolates_the_cumulative_curve(clock: FakeClock) -> None:
    meter = TableMeter()
    sampler = EnergySampler(meter, clock=clock)  # first sample: t=1000, 0 J
    t_start = clock()
    clock.advance(1.0)
    meter.energy_j = {"package-0": 8.0, "dram-0": 2.0}
    sampler.sample()  # t=1001, 10 J
    clock.advance(1.0)
    meter.energy_j = {"package-0": 24.0, "dram-0": 6.0}
    sampler.sample()  # t=1002, 30 J

    assert sampler.source == "rapl"
    assert sampler.devices == ["package-0", "dram-0"]
    assert sampler.energy_between(t_start + 0.5, t_start + 1.5) == pytest.approx(15.0)  # 5 J → 20 J
    assert sampler.energy_between(t_start + 1.25, t_start + 1.75) == pytest.approx(10.0)
    assert sampler.energy_between(t_start + 1.0, t_start + 1.0) == 0.0
    assert sampler.total_j() == {"package-0": 24.0, "dram-0": 6.0}


def test_never_reads_the_meter_for_an_interval_and_extrapolates_at_recent_power(clock: FakeClock) -> None:
    meter = PowerMeter(clock, power_w=100.0)
    sampler = EnergySampler(meter, period_s=0.1, clock=clock)
    for _ in range(10):
        clock.advance(0.1)
        sampler.sample()
    reads = meter.reads
    t0 = clock()
    clock.advance(0.05)  # an interval that ended after the newest reading

    # 100 W over the last second of the curve, continued: no meter read on the request's path.
    assert sampler.energy_between(t0, clock()) == pytest.approx(5.0)
    assert meter.reads == reads


def test_settle_waits_for_the_curve_to_cover_the_interval(clock: FakeClock) -> None:
    meter = TableMeter()
    sampler = EnergySampler(meter, clock=clock)
    t0 = clock()
    clock.advance(0.2)
    meter.energy_j = {"package-0": 3.0, "dram-0": 1.0}
    t1 = clock()
    reads_before = meter.reads

    # For studies: the thread is not running, so settling reads the meter itself.
    assert sampler.energy_between(t0, t1, settle=True) == pytest.approx(4.0)
    assert meter.reads == reads_before + 1
    assert sampler.energy_between(t0, t1, settle=True) == pytest.approx(4.0)  # covered: no new read
    assert meter.reads == reads_before + 1


def test_t0_older_than_the_history_is_clamped(clock: FakeClock) -> None:
    meter = PowerMeter(clock, power_w=10.0)
    sampler = EnergySampler(meter, clock=clock)
    clock.advance(1.0)
    sampler.sample()

    assert sampler.energy_between(clock() - 5.0, clock()) == pytest.approx(10.0)


def test_t1_before_t0_is_refused(clock: FakeClock) -> None:
    sampler = EnergySampler(TableMeter(), clock=clock)

    with pytest.raises(ValueError, match="earlier than t0"):
        sampler.energy_between(clock(), clock() - 0.1)


def test_power_w(clock: FakeClock) -> None:
    sampler = EnergySampler(PowerMeter(clock, power_w=250.0), clock=clock)
    assert sampler.power_w() == {"gpu0": 0.0}  # a single sample

    for _ in range(30):
        clock.advance(0.1)
        sampler.sample()
    assert sampler.power_w() == {"gpu0": pytest.approx(250.0)}


def test_power_w_uses_the_last_second_only(clock: FakeClock) -> None:
    meter = TableMeter()
    sampler = EnergySampler(meter, clock=clock)
    for step in range(1, 21):  # 2 s: 100 W for the first second, then 20 W
        clock.advance(0.1)
        meter.energy_j = {"package-0": 10.0 * min(step, 10) + 2.0 * max(0, step - 10), "dram-0": 0.0}
        sampler.sample()

    assert sampler.power_w() == {"package-0": pytest.approx(20.0), "dram-0": 0.0}


def test_history_is_bounded_in_time(clock: FakeClock) -> None:
    sampler = EnergySampler(PowerMeter(clock, power_w=1.0), period_s=0.1, history_s=1.0, clock=clock)
    for _ in range(50):
        clock.advance(0.1)
        sampler.sample()

    # Energy from a t0 far in the past is clamped to the ~1 s of history that is kept.
    assert sampler.energy_between(clock() - 4.0, clock()) == pytest.approx(1.0, abs=0.11)


@pytest.mark.parametrize(("period_s", "history_s"), [(0.0, 10.0), (-1.0, 10.0), (0.5, 0.5)])
def test_bad_periods_are_refused(period_s: float, history_s: float) -> None:
    with pytest.raises(ValueError, match=r"period_s|history_s"):
        EnergySampler(TableMeter(), period_s=period_s, history_s=history_s)


class CountingMeter(TableMeter):
    """Signals once it has been read ``target`` times, and can fail on purpose."""

    def __init__(self, target: int, failures: int = 0) -> None:
        super().__init__()
        self.target, self.failures = target, failures
        self.reached = threading.Event()

    def read_j(self) -> dict[str, float]:
        energy_j = super().read_j()
        if self.reads >= self.target:
            self.reached.set()
        if 1 < self.reads <= 1 + self.failures:  # read 1 is the sampler's first sample
            raise EnergyError("sensor hiccup")
        return energy_j


def test_start_and_stop_are_idempotent() -> None:
    meter = CountingMeter(target=5)
    sampler = EnergySampler(meter, period_s=0.001)
    sampler.start()
    sampler.start()
    assert meter.reached.wait(timeout=10.0)
    sampler.stop()
    sampler.stop()

    reads = meter.reads
    assert not any(thread.name.startswith("energy-sampler") for thread in threading.enumerate())
    assert meter.reads == reads  # nothing reads after stop()


def test_context_manager_and_restart() -> None:
    meter = CountingMeter(target=3)
    with EnergySampler(meter, period_s=0.001) as sampler:
        assert meter.reached.wait(timeout=10.0)
    meter.reached.clear()
    meter.target = meter.reads + 3
    sampler.start()
    assert meter.reached.wait(timeout=10.0)
    sampler.stop()


def test_background_failures_are_logged_once_and_sampling_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    meter = CountingMeter(target=10, failures=3)
    with EnergySampler(meter, period_s=0.001):
        assert meter.reached.wait(timeout=10.0)

    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1, "one log line per failure episode, not one per read"
    assert "reading failed" in errors[0].getMessage()
    assert any("readable again" in record.getMessage() for record in caplog.records)
