"""EnergyAccountant: CPU work priced per CPU-second, overlapping batches sharing, each joule once."""

from __future__ import annotations

import threading
import time

import pytest

from energy import CpuSpread, EnergyAccountant, EnergyError, EnergyMeter, EnergySampler, OverlapLedger
from energy.cpuclock import ThreadGroupClock, thread_cpu_s
from tests.energy.conftest import FakeClock


def burn(cpu_s: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < cpu_s:
        pass


class CpuModelMeter(EnergyMeter):
    """An estimate-like meter over a CPU clock the test drives: 10 J per CPU-second, 5 W idle."""

    source = "synthetic"
    cpu_scope = "process"

    def __init__(self, clock: FakeClock, cpu: dict[str, float]) -> None:
        self.clock, self.cpu, self.start_s = clock, cpu, clock()
        self.fail = False

    @property
    def devices(self) -> list[str]:
        return ["cpu-model"]

    @property
    def idle_power_w(self) -> dict[str, float]:
        return {"cpu-model": 5.0}

    def read_j(self) -> dict[str, float]:
        if self.fail:
            raise EnergyError("gone")
        return {"cpu-model": 5.0 * (self.clock() - self.start_s) + 10.0 * self.cpu["s"]}


def primed(clock: FakeClock) -> tuple[EnergyAccountant, CpuModelMeter, dict[str, float]]:
    cpu = {"s": 0.0}
    meter = CpuModelMeter(clock, cpu)
    sampler = EnergySampler(meter, period_s=0.01, clock=clock, cpu_clock=lambda: cpu["s"])
    sampler.counter_period_s = 0.0
    for _ in range(150):
        clock.advance(0.01)
        cpu["s"] += 0.005
        sampler.sample()
    return EnergyAccountant(sampler), meter, cpu


def test_cpu_work_is_priced_per_cpu_second_above_idle(clock: FakeClock) -> None:
    accountant, _meter, _cpu = primed(clock)
    energy = accountant.cpu_work("decode", 0.002)

    assert energy.unknown is None
    assert energy.joules == pytest.approx(0.02, rel=1e-6)  # 10 J per CPU-second; idle never charged
    assert energy.by_source == {"synthetic": pytest.approx(0.02)}
    assert accountant.attributed_j() == {("decode", "synthetic"): pytest.approx(0.02)}


def test_device_energy_is_attributed_plus_idle(clock: FakeClock) -> None:
    accountant, _meter, cpu = primed(clock)
    before_device = sum(accountant.cpu.total_j().values())
    before_idle = sum(accountant.idle_j().values())
    charged = 0.0
    for _ in range(100):  # 1 s: every CPU-second is a stage's, plus 5 W idle
        clock.advance(0.01)
        cpu["s"] += 0.005
        accountant.cpu.sample()
        charged += accountant.cpu_work("model", 0.005).joules or 0.0
    device = sum(accountant.cpu.total_j().values()) - before_device
    idle = sum(accountant.idle_j().values()) - before_idle

    assert charged == pytest.approx(0.05 * 10 * 10, rel=0.01)
    assert charged + idle == pytest.approx(device, rel=1e-9)
    assert idle == pytest.approx(5.0, rel=0.02)  # the idle draw, and nothing else


def test_unknown_energy_is_a_value_with_the_reason(clock: FakeClock) -> None:
    accountant, meter, _cpu = primed(clock)
    meter.fail = True
    with pytest.raises(EnergyError):
        accountant.cpu.sample()
    energy = accountant.cpu_work("serving", 0.001)

    assert energy.joules is None
    assert energy.unknown is not None and "read failed" in energy.unknown
    assert accountant.attributed_j() == {}  # unknown work is charged to nobody


def test_overlapping_intervals_share_their_overlap() -> None:
    now = {"t": 0.0}
    ledger = OverlapLedger(lambda t0, t1: 100.0 * (t1 - t0), clock=lambda: now["t"])  # 100 W
    a = ledger.open()  # t=0
    now["t"] = 1.0
    b = ledger.open()  # t=1: a alone for 1 s (100 J)
    now["t"] = 2.0
    share_a = ledger.close(a)  # t=2: a and b together for 1 s (100 J, 50 each)
    now["t"] = 4.0
    share_b = ledger.close(b)  # b alone for 2 s (200 J)

    assert share_a == pytest.approx(150.0)
    assert share_b == pytest.approx(250.0)
    assert share_a + share_b == pytest.approx(400.0)  # what accrued while any was open, once


def test_batch_work_charges_own_thread_and_shares_the_pool(clock: FakeClock) -> None:
    accountant, _meter, _cpu = primed(clock)
    stop = threading.Event()
    started = threading.Event()
    pool_ids: list[int] = []

    def pool_thread() -> None:  # stands in for a torch intra-op thread: busy while batches run
        pool_ids.append(threading.get_native_id())
        started.set()
        while not stop.is_set():
            burn(0.001)

    helper = threading.Thread(target=pool_thread, daemon=True)
    helper.start()
    try:
        assert started.wait(5)
        accountant.share_threads(pool_ids)
        with accountant.batch_work("model") as measured:
            burn(0.02)
        own_and_pool = measured[0].cpu_s
        assert own_and_pool >= 0.02  # its own 20 ms, and what the pool thread did meanwhile
        assert measured[0].joules == pytest.approx(own_and_pool * 10.0, rel=1e-6)
    finally:
        stop.set()
        helper.join()


def test_thread_group_clock_counts_from_joining_and_keeps_exited_threads() -> None:
    done = threading.Event()
    go = threading.Event()

    leave = threading.Event()

    def worker() -> None:
        burn(0.01)
        go.wait(5)
        burn(0.02)
        done.set()
        leave.wait(5)

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.05)
    group = ThreadGroupClock([thread.native_id or 0])
    assert group.read() < 0.005  # the 10 ms before joining do not count
    go.set()
    assert done.wait(5)
    used = group.read()
    assert used >= 0.019
    leave.set()
    thread.join()
    assert group.read() == pytest.approx(used, abs=0.005)  # an exited thread keeps what it had used
    with pytest.raises(OSError):
        thread_cpu_s(thread.native_id or 0)


def test_cpu_spread_divides_a_threads_cpu_time_over_its_events() -> None:
    spread = CpuSpread()
    for _ in range(20):
        burn(0.002)
        spread.count()

    assert spread.per_event_cpu_s() == pytest.approx(0.002, rel=0.5)


class ClockPowerMeter(EnergyMeter):
    """A GPU-like meter: constant power on the real monotonic clock, read exactly."""

    source = "nvml"
    cpu_scope = None

    def __init__(self, power_w: float) -> None:
        self.power_w, self.start_s = power_w, time.monotonic()

    @property
    def devices(self) -> list[str]:
        return ["GPU-test"]

    def read_j(self) -> dict[str, float]:
        return {"GPU-test": self.power_w * (time.monotonic() - self.start_s)}


def test_overlapping_gpu_batches_share_the_device_and_count_it_once(clock: FakeClock) -> None:
    cpu_accountant, _meter, _cpu = primed(clock)
    gpu = EnergySampler(ClockPowerMeter(200.0), period_s=0.005)
    gpu.start()
    accountant = EnergyAccountant(cpu_accountant.cpu, gpu)
    try:
        assert gpu.wait_ready(5)
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        results: dict[str, float] = {}
        spans: dict[str, float] = {}
        first_open = time.monotonic()

        def batch(name: str, wait_for: threading.Event, signal: threading.Event) -> None:
            started = time.monotonic()
            with accountant.batch_work("model") as measured:
                signal.set()
                wait_for.wait(5)
                time.sleep(0.1)
            spans[name] = time.monotonic() - started
            results[name] = measured[0].by_source["nvml"]

        a = threading.Thread(target=batch, args=("a", b_in, a_in))  # a: opens first, closes after b opened
        a.start()
        assert a_in.wait(5)
        time.sleep(0.1)  # a alone for 0.1 s
        b = threading.Thread(target=batch, args=("b", a_out, b_in))
        b.start()
        a.join()
        a_out.set()
        b.join()
        last_close = time.monotonic()
        union_j = 200.0 * (last_close - first_open)

        # Each batch got less than its whole interval's energy (the overlap is shared) and together
        # they got the device's energy over the union of their intervals, once.
        assert results["a"] + results["b"] == pytest.approx(union_j, rel=0.1)
        for name in ("a", "b"):  # each alone for about half its interval: about 3/4 of its energy
            assert results[name] < 200.0 * spans[name] * 0.9, (name, results[name], spans[name])
        gpu_attributed = sum(
            j for (stage, source), j in accountant.attributed_j().items() if source == "nvml"
        )
        assert gpu_attributed == pytest.approx(results["a"] + results["b"])
    finally:
        gpu.stop()
