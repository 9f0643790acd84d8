"""The batcher simulation against cases computed by hand, and ``greenserve simulate``.

Most cases use a profile whose batches take 25 ms whatever their size (two points with the same
latency: interpolation is then constant), and arrivals every 10 ms, so that every cut and every
completion can be worked out on paper; the timeline is in each test's comment.
"""

from __future__ import annotations

import csv
import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import pytest

from loadgen.cli import main as loadgen_main
from loadgen.errors import GridError
from loadgen.simulate import (
    POLICY_RETRY_S,
    RESULT_COLUMNS,
    SimConfig,
    SimResult,
    grid,
    profile_seed,
    simulate,
    simulate_grid,
    write_results,
)
from loadgen.trace import Trace, bursty, poisson, read_trace, write_trace
from service.policy import Decision, QueueView, StaticPolicy, make_policy, read_profile_seed
from studies.profile.format import ModelProfile, ProfilePoint, read_profile, write_profile


def _point(size: int, latency_ms: float, energy_j: float, source: str) -> ProfilePoint:
    return ProfilePoint(
        batch_size=size,
        batches=3,
        latency_mean_ms=latency_ms,
        latency_p50_ms=latency_ms,
        latency_p99_ms=latency_ms,
        latency_std_ms=0.0,
        energy_j_per_batch=energy_j,
        energy_j_per_image=energy_j / size,
        images_per_s=size / (latency_ms / 1000),
        energy_source=source,
    )


def constant_latency(ms: float = 25.0, source: str = "estimate", **fields: Any) -> ModelProfile:
    """Batches take ``ms`` at any size; a batch of b costs 1 + 0.1 × b J (1.1 J at 1, 7.4 J at 64)."""
    points = (_point(1, ms, 1.1, source), _point(64, ms, 7.4, source))
    return ModelProfile(model="m", device="cpu", energy_source=source, points=points, **fields)


def every_10_ms(count: int) -> list[float]:
    return [i / 100 for i in range(count)]


def ms(values: tuple[float, ...] | list[float]) -> list[float]:
    return [round(v * 1000, 6) for v in values]


def batches(result: SimResult) -> list[tuple[float, float, int]]:
    return [(round(b.start_s * 1000, 6), round(b.end_s * 1000, 6), b.size) for b in result.batches]


# --- the batcher's rules ----------------------------------------------------------------------


def test_full_batches_cut_by_size() -> None:
    # max 4, wait 50 ms: 0,10,20,30 fill a batch at 30 (before the wait ends at 50); it runs 30-55.
    # 40 and 50 arrive during it; the next fills at 70 (its wait would end at 90), runs 70-95; etc.
    result = simulate(every_10_ms(12), constant_latency(), SimConfig(max_batch_size=4, max_wait_ms=50))
    assert batches(result) == [(30, 55, 4), (70, 95, 4), (110, 135, 4)]
    assert ms(result.latencies_s) == [55, 45, 35, 25] * 3
    f = result.figures
    assert (f.requests, f.completed, f.rejected_queue_full, f.rejected_deadline, f.errors) == (
        12,
        12,
        0,
        0,
        0,
    )
    assert f.mean_batch_size == 4
    assert f.throughput_rps == pytest.approx(12 / 0.135)  # completed ÷ (last completion - first arrival)
    assert f.latency_p50_ms == pytest.approx(40.0)
    assert f.latency_p99_ms == pytest.approx(55.0)
    # Full batches: J/request = J(4) / 4 = (1 + 0.4) / 4.
    assert f.j_per_request == pytest.approx(1.4 / 4)
    assert f.energy_source == "estimate"
    assert result.statuses == (200,) * 12
    assert result.busy_fraction == pytest.approx(3 * 25 / 135)


def test_batches_cut_by_the_first_arrivals_wait() -> None:
    # max 8, wait 15 ms, 5 ms batches: 0 opens a batch cut at 15 with [0, 10] (runs 15-20); 20 opens
    # the next, cut at 35 with [20, 30]; 40 opens one cut at 55 with [40, 50].
    profile = constant_latency(5.0)
    result = simulate(every_10_ms(6), profile, SimConfig(max_batch_size=8, max_wait_ms=15))
    assert batches(result) == [(15, 20, 2), (35, 40, 2), (55, 60, 2)]
    assert ms(result.latencies_s) == [20, 10] * 3


def test_greedy_takes_whatever_queued_while_the_model_was_busy() -> None:
    # wait 0: 0 runs alone (0-25); 10 and 20 queue meanwhile and run together (25-50); at 50 the
    # batch ends *and* 50 arrives: it joins 30 and 40 (50-75); then [60, 70] (75-100), [80, 90, 100].
    result = simulate(every_10_ms(11), constant_latency(), SimConfig(max_batch_size=32, max_wait_ms=0))
    assert [b[2] for b in batches(result)] == [1, 2, 3, 2, 3]
    assert [b[0] for b in batches(result)] == [0, 25, 50, 75, 100]
    assert ms(result.latencies_s) == [25, 40, 30, 45, 35, 25, 40, 30, 45, 35, 25]
    assert result.figures.mean_batch_size == pytest.approx(11 / 5)


def test_simultaneous_arrivals_are_one_greedy_batch() -> None:
    result = simulate([0.0] * 5, constant_latency(), SimConfig(max_batch_size=4, max_wait_ms=0))
    assert batches(result) == [(0, 25, 4), (25, 50, 1)]


def test_full_queue_rejects_without_queueing() -> None:
    # max 2, queue 3, greedy, 10 ms batches, arrivals every 1 ms: 0 runs (0-10); 1, 2, 3 fill the
    # queue; 4-9 are rejected. At 10 the batch ends, then 10 arrives and finds 3 waiting: rejected;
    # then [1, 2] is cut (10-20). 11, 12 queue behind 3; 13-19 rejected. At 20: [3, 11]; at 30: [12].
    trace = [i / 1000 for i in range(20)]
    config = SimConfig(max_batch_size=2, max_wait_ms=0, max_queue=3)
    result = simulate(trace, constant_latency(10.0), config)
    completed = [i for i, status in enumerate(result.statuses) if status == 200]
    assert completed == [0, 1, 2, 3, 11, 12]
    assert result.figures.rejected_queue_full == 14
    assert set(result.statuses) == {200, 429}
    assert batches(result) == [(0, 10, 1), (10, 20, 2), (20, 30, 2), (30, 40, 1)]


def test_deadlines_drop_waiting_requests_only() -> None:
    # max 1, greedy, 25 ms batches, 30 ms deadlines. 0 runs 0-25; 1 (10) runs 25-50. 2 (20) would
    # start at 50 = its deadline: dropped first (504); 3 (30) runs 50-75. 4 (40) expires at 70;
    # 5 (50) runs 75-100 (deadline 80); 6 (60) expires at 90. A running batch is never cut short.
    config = SimConfig(max_batch_size=1, max_wait_ms=0, timeout_ms=30)
    result = simulate(every_10_ms(7), constant_latency(), config)
    assert result.statuses == (200, 200, 504, 200, 504, 200, 504)
    assert ms(result.latencies_s) == [25, 40, 45, 50]
    assert result.figures.rejected_deadline == 3
    assert result.figures.completed == 4


def test_no_deadline() -> None:
    config = SimConfig(max_batch_size=1, max_wait_ms=0, timeout_ms=None)
    result = simulate(every_10_ms(7), constant_latency(), config)
    assert result.figures.completed == 7
    assert result.figures.latency_p99_ms is not None and result.figures.latency_p99_ms > 100


def test_two_concurrent_batches() -> None:
    # 2 slots, greedy: 0 runs 0-25 and 10 runs 10-35 at once; 20 waits for a slot (25-50); 30
    # for the next (35-60); 40 waits; at 50 a slot frees as 50 arrives: [40, 50] run 50-75; 60
    # gets the slot freed at 60 (60-85).
    config = SimConfig(max_batch_size=32, max_wait_ms=0, max_concurrent_batches=2)
    result = simulate(every_10_ms(7), constant_latency(), config)
    assert batches(result) == [(0, 25, 1), (10, 35, 1), (25, 50, 1), (35, 60, 1), (50, 75, 2), (60, 85, 1)]
    assert ms(result.latencies_s) == [25, 25, 30, 30, 35, 25, 25]
    assert result.figures.throughput_rps == pytest.approx(7 / 0.085)
    assert result.busy_fraction == pytest.approx(6 * 25 / 85)


# Batches take 2 × 25 + 1 = 51 ms; queue entry 5 ms after arrival; responses 2 ms after the end.
OVERHEADS = SimConfig(
    max_batch_size=4,
    max_wait_ms=50,
    compute_scale=2.0,
    batch_overhead_ms=1.0,
    pre_queue_ms=5,
    post_batch_ms=2,
)


def test_costs_outside_the_profile() -> None:
    # max 4, wait 50: the batch fills at 35 (30 + 5) and ends at 86; latencies 86 + 2 - arrival.
    result = simulate(every_10_ms(4), constant_latency(), OVERHEADS)
    assert batches(result) == [(35, 86, 4)]
    assert ms(result.latencies_s) == [88, 78, 68, 58]
    assert result.figures.throughput_rps == pytest.approx(4 / 0.088)


def test_responses_of_a_batch_leave_one_after_another() -> None:
    # As above, with each response 3 ms after the one before it: the batch's requests in queue
    # order answer at 86 + 2, + 5, + 8, + 11.
    config = dataclasses.replace(OVERHEADS, post_per_rank_ms=3)
    result = simulate(every_10_ms(4), constant_latency(), config)
    assert ms(result.latencies_s) == [88, 81, 74, 67]
    assert result.figures.throughput_rps == pytest.approx(4 / 0.097)


def test_every_request_carries_its_own_overhead_energy() -> None:
    # As test_full_batches_cut_by_size: three batches of 4. The server charges each request its own
    # decode and serving energy, whatever the model is doing (even for requests that arrive while it
    # is idle), so each batch carries 4 × 0.5 J on top of the model's 1.4 J.
    config = SimConfig(max_batch_size=4, max_wait_ms=50, overhead_j_per_request=0.5)
    result = simulate(every_10_ms(12), constant_latency(), config)
    assert [b.energy_j for b in result.batches] == pytest.approx([1.4 + 2.0] * 3)
    assert result.figures.j_per_request == pytest.approx(1.4 / 4 + 0.5)


def test_overheads_from_the_profile() -> None:
    cpu = constant_latency(preprocess_ms_per_image=2.0, preprocess_j_per_image=0.01)
    config = SimConfig().with_profile_overheads(cpu)
    assert (config.pre_queue_ms, config.overhead_j_per_request) == (2.0, 0.01)
    # A GPU profile from before the decode had its own source read the GPU's idle draw: not used.
    gpu = constant_latency(source="nvml", preprocess_ms_per_image=2.0, preprocess_j_per_image=0.01)
    config = SimConfig().with_profile_overheads(gpu)
    assert (config.pre_queue_ms, config.overhead_j_per_request) == (2.0, 0.0)
    assert simulate(every_10_ms(4), gpu, config).figures.energy_source == "nvml"
    assert SimConfig().with_profile_overheads(constant_latency()).pre_queue_ms == 0.0
    # Since then the decode is priced by the CPU meter beside the GPU: charged, and both sources named.
    priced = dataclasses.replace(gpu, preprocess_energy_source="rapl", preprocess_idle_included=False)
    config = SimConfig().with_profile_overheads(priced)
    assert (config.pre_queue_ms, config.overhead_j_per_request) == (2.0, 0.01)
    figures = simulate(every_10_ms(4), priced, config).figures
    assert figures.energy_source == "nvml+rapl" == priced.served_energy_source
    assert figures.j_per_request_label is not None and "simulated" in figures.j_per_request_label
    assert figures.amortised_j_per_request is None
    synthetic = constant_latency(source="synthetic", preprocess_ms_per_image=1.0, preprocess_j_per_image=0.02)
    assert SimConfig().with_profile_overheads(synthetic).overhead_j_per_request == 0.02


def test_interpolated_service_time() -> None:
    profile = ModelProfile(
        model="m",
        device="cpu",
        energy_source="rapl",
        points=(_point(1, 10.0, 1.0, "rapl"), _point(4, 16.0, 2.0, "rapl")),
    )
    # Two simultaneous arrivals, greedy: one batch of 2 → 10 + 6 / 3 = 12 ms.
    result = simulate(Trace.from_times([0.0, 0.0]), profile, SimConfig(max_wait_ms=0))
    assert batches(result) == [(0, 12, 2)]
    assert result.figures.j_per_request == pytest.approx((1 + 1 / 3) / 2)
    assert result.figures.energy_source == "rapl"


def test_empty_trace() -> None:
    result = simulate([], constant_latency(), SimConfig())
    f = result.figures
    assert (f.requests, f.completed, f.throughput_rps, f.mean_batch_size, f.j_per_request) == (
        0,
        0,
        0.0,
        None,
        None,
    )
    assert f.latency_p50_ms is None


def test_ten_thousand_arrivals_in_well_under_a_second() -> None:
    rng = random.Random(0)
    trace = sorted(rng.uniform(0, 20) for _ in range(10_000))
    config = SimConfig(
        max_batch_size=32, max_wait_ms=5, timeout_ms=200, max_queue=64, overhead_j_per_request=0.001
    )
    started = time.perf_counter()
    result = simulate(trace, constant_latency(40.0), config)
    assert time.perf_counter() - started < 1.0
    f = result.figures
    assert f.completed + f.rejected_queue_full + f.rejected_deadline == 10_000
    assert f.completed == sum(b.size for b in result.batches)
    assert all(b.size <= 32 for b in result.batches)
    # One slot: batches never overlap.
    assert all(a.end_s <= b.start_s for a, b in zip(result.batches, result.batches[1:], strict=False))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 5000}, "max_batch_size"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"max_wait_ms": float("nan")}, "max_wait_ms"),
        ({"max_queue": 0}, "max_queue"),
        ({"max_concurrent_batches": 0}, "max_concurrent_batches"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"compute_scale": 0}, "compute_scale"),
        ({"pre_queue_ms": -1}, "pre_queue_ms"),
        ({"overhead_j_per_request": float("inf")}, "overhead_j_per_request"),
    ],
)
def test_bad_configs(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(GridError, match=message):
        SimConfig(**fields)


def test_grid_and_results_csv(tmp_path: Path) -> None:
    configs = grid(SimConfig(), max_batch_sizes=[4, 8], max_waits_ms=[0, 50], greedy_max_batch_size=16)
    assert [(c.max_batch_size, c.max_wait_ms) for c in configs] == [(4, 0), (4, 50), (8, 0), (8, 50), (16, 0)]
    assert len(grid(SimConfig(), max_batch_sizes=[16], max_waits_ms=[0], greedy_max_batch_size=16)) == 1
    results = simulate_grid(every_10_ms(12), constant_latency(), configs)
    path = write_results(results, tmp_path / "sim.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == RESULT_COLUMNS
    assert [row["key"] for row in rows] == [
        "m|b4|greedy",
        "m|b4|w50",
        "m|b8|greedy",
        "m|b8|w50",
        "m|b16|greedy",
    ]
    assert {row["method"] for row in rows} == {"simulated"}
    assert rows[1]["completed"] == "12" and rows[1]["mean_batch_size"] == "4.0"


# --- greenserve simulate ----------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    trace = write_trace(Trace.from_times(every_10_ms(12)), tmp_path / "trace.jsonl")
    profile = write_profile(constant_latency(), tmp_path / "profile.csv")
    return trace, profile


def test_cli_simulates_a_grid(
    tmp_path: Path, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    trace, profile = files
    out = tmp_path / "sim.csv"
    args = ["--trace", str(trace), "--profile", str(profile), "--max-batch-size", "4,greedy"]
    assert loadgen_main("simulate", [*args, "--max-wait-ms", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SIMULATED" in printed
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["max_batch_size"], row["max_wait_ms"]) for row in rows] == [("4", "50.0"), ("4", "0.0")]
    assert rows[0]["latency_p99_ms"].startswith("55")


def test_cli_overheads_from_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_trace(Trace.from_times(every_10_ms(4)), tmp_path / "trace.csv")
    profile = write_profile(
        constant_latency(preprocess_ms_per_image=5.0, preprocess_j_per_image=0.1), tmp_path / "p.json"
    )
    out = tmp_path / "sim.csv"
    args = ["--trace", str(trace), "--profile", str(profile), "--max-batch-size", "4", "--max-wait-ms", "50"]
    assert loadgen_main("simulate", [*args, "--overheads-from-profile", "--out", str(out)]) == 0
    with out.open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["pre_queue_ms"], row["overhead_j_per_request"]) == ("5.0", "0.1")
    # Queue entries 5 ms after 0, 10, 20, 30: the batch fills at 35 and ends at 60; latencies 60 … 30.
    assert float(row["latency_p50_ms"]) == pytest.approx(45.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-batch-size", "4,x"], "'x' is not an integer"),
        (["--max-batch-size", "0"], "max_batch_size must be"),
        (["--max-wait-ms", "soon"], "'soon' is not a number"),
        (["--timeout-ms", "later"], "--timeout-ms"),
        (["--max-queue", "0"], "max_queue"),
        (["--profile", "missing.csv"], "no such profile"),
        (["--trace", "missing.jsonl"], "no such trace"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    tmp_path: Path,
    files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    trace, profile = files
    base = {"--trace": str(trace), "--profile": str(profile)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = str(tmp_path / value) if flag in ("--trace", "--profile") else value
    argv = [part for pair in base.items() for part in pair]
    assert loadgen_main("simulate", argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("greenserve simulate: ")]
    assert len(lines) == 1 and message in lines[0]


# --- the server's batching policies on simulated time ------------------------------------------


def same_run(a: SimResult, b: SimResult) -> bool:
    """The same simulated run, to the bit (the policy's own fields aside)."""
    return (a.figures, a.batches, a.latencies_s, a.statuses, a.duration_s) == (
        b.figures,
        b.batches,
        b.latencies_s,
        b.statuses,
        b.duration_s,
    )


def rising_latency() -> ModelProfile:
    """Batches take 5 ms + 0.5 ms per image and cost 0.5 J + 0.05 J per image: batching saves energy."""
    points = (_point(1, 5.5, 0.55, "rapl"), _point(64, 37.0, 3.7, "rapl"))
    return ModelProfile(model="m", device="cpu", energy_source="rapl", points=points)


POLICY_TRACES = {
    "every 10 ms": Trace.from_times(every_10_ms(40)),
    "simultaneous": Trace.from_times([0.0] * 9 + [0.05] * 7),
    "poisson": poisson(150.0, 4.0, seed=3),
    "bursty": bursty(600.0, 5.0, 0.3, 0.7, 6.0, seed=5),
    "overloading bursts": bursty(2000.0, 5.0, 0.3, 0.7, 6.0, seed=5),  # 429s and 504s
}

POLICY_CONFIGS = {
    "b4 w50": SimConfig(max_batch_size=4, max_wait_ms=50),
    "greedy": SimConfig(max_batch_size=32, max_wait_ms=0),
    "b8 w0.3": SimConfig(max_batch_size=8, max_wait_ms=0.3),
    "two slots, deadlines, small queue": SimConfig(
        max_batch_size=4, max_wait_ms=7, max_concurrent_batches=2, timeout_ms=20, max_queue=12
    ),
    "calibrated costs": SimConfig(
        max_batch_size=32,
        max_wait_ms=20,
        compute_scale=1.4,
        batch_overhead_ms=0.7,
        pre_queue_ms=1.3,
        service_cv=0.5,
        seed=11,
        timeout_ms=60,
        arrival_delay_ms=0.2,
        energy_follows_time=True,
        overhead_j_per_request=0.01,
        post_batch_samples_ms=(0.5, 1.0, 4.0),
        post_per_rank_ms=0.3,
    ),
}


@pytest.mark.parametrize("trace_name", list(POLICY_TRACES))
@pytest.mark.parametrize("config_name", list(POLICY_CONFIGS))
def test_static_policy_is_the_static_rule_to_the_bit(trace_name: str, config_name: str) -> None:
    trace, config = POLICY_TRACES[trace_name], POLICY_CONFIGS[config_name]
    for profile in (constant_latency(), rising_latency()):
        plain = simulate(trace, profile, config)
        policy = StaticPolicy(config.max_batch_size, config.max_wait_ms)
        with_policy = simulate(trace, profile, config, policy=policy)
        assert same_run(plain, with_policy)
        assert (plain.batching, plain.policy_states) == ("static", ())
        assert with_policy.batching == "static"
        assert len(with_policy.policy_states) == len(with_policy.batches) > 0
        assert with_policy.policy_states[0] == policy.describe()


def test_a_different_static_policy_changes_the_run() -> None:
    # The policy decides, not the configuration: StaticPolicy(4, 50) on a configuration saying 8 / 0
    # is test_full_batches_cut_by_size's run, with the configuration's cap of 8 above its 4.
    trace = every_10_ms(12)
    result = simulate(
        trace, constant_latency(), SimConfig(max_batch_size=8, max_wait_ms=0), StaticPolicy(4, 50)
    )
    assert batches(result) == [(30, 55, 4), (70, 95, 4), (110, 135, 4)]
    assert same_run(result, simulate(trace, constant_latency(), SimConfig(max_batch_size=4, max_wait_ms=50)))


class Recording:
    """A test policy: cut ``size`` items once that many wait, else wait until ``wait_s`` after the
    oldest arrival (``until_none``: wait for a change, with no deadline), and record every call."""

    name = "recording"

    def __init__(self, size: int, wait_s: float, *, until_none: bool = False) -> None:
        self.size, self.wait_s, self.until_none = size, wait_s, until_none
        self.views: list[QueueView] = []
        self.arrivals: list[float] = []
        self.batches: list[tuple[int, float, float, float | None]] = []
        self.latencies: list[tuple[float, float]] = []

    def decide(self, view: QueueView) -> Decision:
        self.views.append(view)
        if view.queued >= self.size or view.now >= view.oldest_enqueued_at + self.wait_s:
            return Decision.cut(self.size)  # may exceed the queue or the cap: the simulator clamps it
        return Decision.wait(None if self.until_none else view.oldest_enqueued_at + self.wait_s)

    def observe_arrival(self, at: float) -> None:
        self.arrivals.append(at)

    def observe_batch(self, size: int, started_at: float, compute_s: float, energy_j: float | None) -> None:
        self.batches.append((size, started_at, compute_s, energy_j))

    def observe_latency(self, latency_s: float, at: float) -> None:
        self.latencies.append((latency_s, at))

    def describe(self) -> dict[str, float]:
        return {
            "target_batch_size": float(self.size),
            "target_wait_seconds": self.wait_s,
            "seen": len(self.views),
        }


def r(values: list[float] | tuple[float, ...]) -> list[float]:
    return [round(v * 1000, 6) for v in values]


def test_a_policy_decides_and_learns_on_simulated_time() -> None:
    # Cut 3, or 25 ms after the oldest; 25 ms batches (1 + 0.1 × b J); queue entry 2 ms after arrival.
    # Entries at 2, 12, …, 62. At 22 three wait: [2, 12, 22] runs 22-47. 32 and 42 queue meanwhile
    # (not asked: no slot); at 47 the oldest (32) has waited 15 ms: wait until 57; at 52 three wait:
    # [32, 42, 52] runs 52-77. At 77 the oldest (62) has waited 15 ms: wait until 87, cut [62] then.
    policy = Recording(3, 0.025)
    config = SimConfig(max_batch_size=8, max_wait_ms=0, pre_queue_ms=2)
    result = simulate(every_10_ms(7), constant_latency(), config, policy=policy)
    assert batches(result) == [(22, 47, 3), (52, 77, 3), (87, 112, 1)]
    assert result.batching == "recording"
    assert [state["seen"] for state in result.policy_states] == [3, 5, 7]  # describe() right after each cut
    asked = [(ms([v.now])[0], v.queued, ms([v.oldest_enqueued_at])[0]) for v in policy.views]
    assert asked == [(2, 1, 2), (12, 2, 2), (22, 3, 2), (47, 2, 32), (52, 3, 32), (77, 1, 62), (87, 1, 62)]
    assert all(view.max_batch_size == 8 and not view.draining for view in policy.views)
    assert ms(policy.arrivals) == [2, 12, 22, 32, 42, 52, 62]
    told = [
        (size, *ms([start, compute]), round(energy or 0, 9))
        for size, start, compute, energy in policy.batches
    ]
    assert told == [
        (3, 22, 25, 1.3),
        (3, 52, 25, 1.3),
        (1, 87, 25, 1.1),
    ]
    # Each answer at its batch's end, with its latency from queue entry (what the server's batcher sees).
    answers = [tuple(ms([latency, at])) for latency, at in policy.latencies]
    assert answers == [(45, 47), (35, 47), (25, 47), (45, 77), (35, 77), (25, 77), (50, 112)]
    # The figures' latencies are from arrival: 2 ms more.
    assert ms(result.latencies_s) == [47, 37, 27, 47, 37, 27, 52]


def test_a_policy_that_waits_is_woken_at_its_until() -> None:
    # Cut 10 (never reached), or 30 ms after the oldest: arrivals at 0, 10, 20 wait until 30 exactly.
    policy = Recording(10, 0.030)
    result = simulate([0.0, 0.01, 0.02], constant_latency(), SimConfig(max_batch_size=32), policy=policy)
    assert batches(result) == [(30, 55, 3)]
    assert [round(v.now * 1000, 6) for v in policy.views] == [0, 10, 20, 30]


def test_a_policy_cut_is_capped_by_the_queue_and_max_batch_size() -> None:
    # The policy asks for 10 at once; the cap is 4: [0,0,0,0] then [0,0] at 25 (it asks for 10 of 2).
    policy = Recording(1, 0.0)
    policy.size = 10
    result = simulate([0.0] * 6, constant_latency(), SimConfig(max_batch_size=4), policy=policy)
    assert batches(result) == [(0, 25, 4), (25, 50, 2)]


def test_energy_told_to_the_policy_follows_the_batch_time() -> None:
    # energy_follows_time: 2 × (power at size 1: 1.1 J / 25 ms) × the batch's 37.5 ms (compute_scale 1.5).
    policy = Recording(1, 0.0)
    config = SimConfig(max_batch_size=4, energy_scale=2.0, compute_scale=1.5, energy_follows_time=True)
    result = simulate([0.0], constant_latency(), config, policy=policy)
    (size, _, compute_s, energy_j) = policy.batches[0]
    assert size == 1
    assert compute_s == pytest.approx(0.0375)
    assert energy_j == pytest.approx(2 * 1.1 / 0.025 * 0.0375) == pytest.approx(result.batches[0].energy_j)


def test_a_policy_asking_again_at_once_does_not_stall_time() -> None:
    class Impatient(Recording):
        def decide(self, view: QueueView) -> Decision:
            self.views.append(view)
            if view.now >= view.oldest_enqueued_at + self.wait_s:
                return Decision.cut(view.queued)
            return Decision.wait(view.now)  # "ask me again now", as the server's loop breathes

    policy = Impatient(1, 0.002)
    result = simulate([0.0], constant_latency(), SimConfig(max_batch_size=4), policy=policy)
    # Asked at 0, then every POLICY_RETRY_S (0.5 ms) until 2 ms have passed, and cut then.
    assert ms([view.now for view in policy.views]) == [round(k * POLICY_RETRY_S * 1000, 6) for k in range(5)]
    assert ms([result.batches[0].start_s]) == [2.0]


def test_a_policy_waiting_for_nothing_is_drained_at_the_end() -> None:
    # Waits for a fourth request that never comes, with no deadline: the last event is the arrival
    # at 20; as a server shutting down, the batcher drains the queue then, asking with draining set.
    policy = Recording(4, 10.0, until_none=True)
    config = SimConfig(max_batch_size=8, timeout_ms=None)
    result = simulate([0.0, 0.01, 0.02], constant_latency(), config, policy=policy)
    assert batches(result) == [(20, 45, 3)]
    assert policy.views[-1].draining and result.figures.completed == 3
    # With a deadline the waiting requests expire first, as in the server (504).
    policy = Recording(4, 10.0, until_none=True)
    expired = simulate([0.0, 0.01], constant_latency(), SimConfig(timeout_ms=100), policy=policy)
    assert expired.statuses == (504, 504) and not expired.batches


def test_adaptive_policy_keeps_p99_under_its_objective_on_steady_poisson() -> None:
    adaptive = pytest.importorskip("service.adaptive")
    profile = rising_latency()
    seed = {b: (profile.latency_s(b), profile.energy_j(b)) for b in profile.batch_sizes}
    trace = poisson(100.0, 60.0, seed=7)
    config = SimConfig(max_batch_size=64)
    slo_ms = 100.0
    result = simulate(trace, profile, config, policy=adaptive.AdaptivePolicy(slo_ms, 64, seed=seed))
    f = result.figures
    assert f.completed == f.requests
    assert f.latency_p99_ms is not None and f.latency_p99_ms <= slo_ms
    assert result.batching == "adaptive" and len(result.policy_states) == len(result.batches)
    # It batches to save energy: fewer joules per request than cutting greedily at this load.
    greedy = simulate(trace, profile, SimConfig(max_batch_size=64, max_wait_ms=0))
    assert f.j_per_request is not None and greedy.figures.j_per_request is not None
    assert f.j_per_request < greedy.figures.j_per_request


def test_profile_seed_is_what_a_server_reads_from_the_profile_file(tmp_path: Path) -> None:
    profile = ModelProfile(
        model="m",
        device="cpu",
        energy_source="rapl",
        points=(_point(1, 5.5, 0.55, "rapl"), _point(8, 9.0, 0.9, "rapl"), _point(64, 37.0, 3.7, "rapl")),
    )
    seed = profile_seed(profile)
    assert sorted(seed) == [1, 8, 64] and seed[8] == pytest.approx((0.009, 0.9))
    for suffix in (".csv", ".json"):
        assert read_profile_seed(write_profile(profile, tmp_path / f"p{suffix}")) == seed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batching", "latency-adaptive"], "needs --slo-p99-ms"),
        (["--batching", "adaptive"], "needs --slo-p99-ms"),
        (["--slo-p99-ms", "100"], "not static"),
        (["--batching", "adaptive", "--slo-p99-ms", "100", "--max-batch-size", "8,greedy"], "greedy"),
        (["--batching", "adaptive", "--slo-p99-ms", "100", "--max-wait-ms", "5,50"], "--max-wait-ms"),
    ],
)
def test_cli_policy_flags_that_cannot_work(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    trace, profile = files
    assert loadgen_main("simulate", ["--trace", str(trace), "--profile", str(profile), *args]) == 2
    lines = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("greenserve simulate: ")
    ]
    assert len(lines) == 1 and message in lines[0]


@pytest.mark.parametrize("batching", ["adaptive", "latency-adaptive"])
def test_cli_simulates_the_servers_adaptive_policies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], batching: str
) -> None:
    pytest.importorskip("service.adaptive")
    profile = rising_latency()
    trace = poisson(100.0, 20.0, seed=2)
    paths = [write_trace(trace, tmp_path / "t.jsonl"), write_profile(profile, tmp_path / "p.csv")]
    out = tmp_path / "sim.csv"
    args = ["--trace", str(paths[0]), "--profile", str(paths[1]), "--max-batch-size", "16,64"]
    argv = [*args, "--batching", batching, "--slo-p99-ms", "80", "--out", str(out)]
    assert loadgen_main("simulate", argv) == 0
    assert f"batching {batching} under p99 80 ms" in " ".join(capsys.readouterr().out.split())
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["key"], row["mode"], row["batching"]) for row in rows] == [
        (f"m|b16|{batching}", batching, batching),
        (f"m|b64|{batching}", batching, batching),
    ]
    # The very policy the server would build (service.policy.make_policy), seeded from the profile.
    for row, cap in zip(rows, (16, 64), strict=True):
        policy = make_policy(
            batching, max_batch_size=cap, max_wait_ms=5, slo_p99_ms=80, seed=profile_seed(profile)
        )
        expected = simulate(
            read_trace(paths[0]), read_profile(paths[1]), SimConfig(max_batch_size=cap), policy
        )
        assert float(row["latency_p99_ms"]) == expected.figures.latency_p99_ms
        assert float(row["j_per_request"]) == expected.figures.j_per_request
        assert float(row["mean_batch_size"]) == expected.figures.mean_batch_size
    # A bad objective is refused by the policy itself, as one line.
    assert loadgen_main("simulate", [*args, "--batching", batching, "--slo-p99-ms", "-1"]) == 2
    assert "slo_p99_ms" in capsys.readouterr().err
