"""The CPU-time estimate: proportional to work, labelled as an estimate, refuses bad watts."""

from __future__ import annotations

import math
import os
import time

import pytest

from energy import DEFAULT_WATTS_PER_CORE, EstimateMeter
from tests.energy.conftest import FakeClock


def _busy(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def test_joules_are_cpu_seconds_times_watts(clock: FakeClock) -> None:
    meter = EstimateMeter(12.5, cpu_time_s=clock)

    assert meter.source == "estimate"
    assert meter.is_estimate
    assert meter.devices == [f"estimate:host:{os.getpid()}"]  # per process (energy.identity)
    assert meter.read_j() == {meter.devices[0]: 0.0}
    clock.advance(2.0)  # two CPU-seconds, e.g. two threads busy for one second
    assert meter.read_j() == {meter.devices[0]: pytest.approx(25.0)}


def test_default_watts_per_core(clock: FakeClock) -> None:
    meter = EstimateMeter(cpu_time_s=clock)
    clock.advance(1.0)

    assert meter.watts_per_core == DEFAULT_WATTS_PER_CORE == 10.0
    assert meter.read_j() == {meter.devices[0]: pytest.approx(10.0)}


def test_real_cpu_work_is_charged_at_watts_per_core() -> None:
    # Compared with this process's own CPU time, not wall time, so a loaded machine cannot flake it.
    meter = EstimateMeter(10.0)
    cpu_before_s = time.process_time()
    start_j = meter.read_j()[meter.devices[0]]
    _busy(300_000)
    end_j = meter.read_j()[meter.devices[0]]
    cpu_s = time.process_time() - cpu_before_s

    assert 0 < end_j - start_j <= cpu_s * 10.0 + 1e-9
    assert end_j - start_j == pytest.approx(cpu_s * 10.0, rel=0.25)


def test_twice_the_work_is_about_twice_the_joules() -> None:
    meter = EstimateMeter(10.0)
    _busy(50_000)  # warm up

    def joules_for(iterations: int) -> float:
        start_j = meter.read_j()[meter.devices[0]]
        _busy(iterations)
        return meter.read_j()[meter.devices[0]] - start_j

    # Interleaved, the cheapest of five each: another busy process on a sibling hyperthread slows
    # the same work (more CPU time) for a while, and must not land on one side only.
    singles, doubles = [], []
    for _ in range(5):
        singles.append(joules_for(400_000))
        doubles.append(joules_for(800_000))
    assert 1.3 < min(doubles) / min(singles) < 3.0


def test_never_decreases(clock: FakeClock) -> None:
    meter = EstimateMeter(cpu_time_s=clock)
    clock.advance(1.0)
    first = meter.read_j()[meter.devices[0]]
    clock.advance(-0.5)  # a misbehaving clock must not make energy go backwards

    assert meter.read_j()[meter.devices[0]] == first


@pytest.mark.parametrize("watts_per_core", [0.0, -5.0, math.nan, math.inf])
def test_bad_watts_per_core_is_refused(watts_per_core: float) -> None:
    with pytest.raises(ValueError, match="watts_per_core"):
        EstimateMeter(watts_per_core)
