"""The adaptive batching policies: decisions on constructed queues, what they learn, and a small
discrete-event harness (seeded Poisson arrivals, one batch at a time, compute a + b·n) for a 10× rate
step, a burst, and the energy comparison with greedy and latency-adaptive batching."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from service.adaptive import AdaptivePolicy, LatencyAdaptivePolicy
from service.policy import BatchPolicy, QueueView, StaticPolicy

A_S, B_S = 0.005, 0.001  # a batch of n computes for A_S + B_S·n seconds
FIXED_J, ITEM_J = 0.5, 0.05  # and costs FIXED_J + ITEM_J·n joules (below the knee, where there is one)
SLO_MS, CAP = 250.0, 32
BUDGET_S = SLO_MS / 1000 * (1 - 0.2)  # the default margin

Energy = Callable[[int], float]


def compute_s(n: int) -> float:
    return A_S + B_S * n


def linear(n: int) -> float:
    return FIXED_J + ITEM_J * n


def flat_beyond(knee: int) -> Energy:
    """J/image falls to ``knee``, then stays flat: waiting past the knee saves nothing."""
    return lambda n: linear(n) if n <= knee else n * linear(knee) / knee


def rising_beyond(knee: int) -> Energy:
    """J/image falls to ``knee``, then rises 5% per extra item (as on a CPU past its best batch)."""
    return lambda n: linear(n) if n <= knee else n * linear(knee) / knee * (1 + 0.05 * (n - knee))


def seed(energy: Energy, sizes: range = range(1, CAP + 1)) -> dict[int, tuple[float, float]]:
    return {n: (compute_s(n), energy(n)) for n in sizes}


def arrive(policy: BatchPolicy, gap_s: float, count: int = 30, start: float = 0.0) -> float:
    """``count`` arrivals ``gap_s`` apart from ``start``; the last one's time."""
    for i in range(count):
        policy.observe_arrival(start + i * gap_s)
    return start + (count - 1) * gap_s


def view(now: float, queued: int, oldest: float, cap: int = CAP, draining: bool = False) -> QueueView:
    return QueueView(now=now, queued=queued, oldest_enqueued_at=oldest, max_batch_size=cap, draining=draining)


# --- decisions on constructed queues ---------------------------------------------------------------


def test_cuts_at_the_energy_efficient_size_and_never_past_it() -> None:
    policy = AdaptivePolicy(SLO_MS, CAP, seed=seed(flat_beyond(4)))
    last = arrive(policy, 0.01)  # 100/s: 4 items gather in 30 ms, far within the budget
    assert policy.decide(view(last, 4, last - 0.03)).size == 4
    assert policy.decide(view(last, 7, last - 0.03)).size == 4  # b* = 4: more saves nothing
    assert policy.describe()["target_batch_size"] == 4
    assert policy.regime == "energy"
    # The baseline ignores energy and keeps waiting while the objective allows.
    baseline = LatencyAdaptivePolicy(SLO_MS, CAP)
    for n in range(1, CAP + 1):
        baseline.observe_batch(n, 0.0, compute_s(n), None)
    arrive(baseline, 0.01)
    assert baseline.decide(view(last, 7, last - 0.03)).size == 0


def test_waits_until_the_last_safe_instant() -> None:
    policy = AdaptivePolicy(SLO_MS, CAP, seed=seed(linear))
    last = arrive(policy, 0.02)
    # One item, the last arrival: wait while t + gap(t) + c(2) stays within its budget, where the time
    # to the next arrival is the mean gap, or the silence since the last arrival once that is longer.
    decision = policy.decide(view(last, 1, last))
    assert decision.size == 0 and decision.until is not None
    deadline = last + BUDGET_S
    expected = min(deadline - compute_s(2) - 0.02, (deadline - compute_s(2) + last) / 2)
    assert decision.until == pytest.approx(expected)
    # Two queued, the oldest earlier: never later than the budget allows; asked again with nothing
    # new, it still waits just before `until` and cuts just after.
    oldest = last - 0.05
    until = policy.decide(view(last, 2, oldest)).until
    assert until is not None and last < until <= oldest + BUDGET_S - compute_s(3) - 0.02 + 1e-12
    assert policy.decide(view(until - 1e-6, 2, oldest)).size == 0
    assert policy.decide(view(until + 1e-6, 2, oldest)).size == 2


def test_cuts_when_the_oldest_would_miss_the_objective() -> None:
    policy = AdaptivePolicy(SLO_MS, CAP, seed=seed(linear))
    last = arrive(policy, 0.02)
    oldest = last - (BUDGET_S - compute_s(3) - 0.02) - 0.001  # waiting one more gap would miss
    assert policy.decide(view(last, 2, oldest)).size == 2


def test_waits_only_where_one_more_request_lowers_j_per_request() -> None:
    proportional = seed(lambda n: 0.1 * n)  # J/image the same at every size: waiting saves nothing
    policy = AdaptivePolicy(SLO_MS, CAP, seed=proportional)
    last = arrive(policy, 0.01)
    assert policy.decide(view(last, 1, last)).size == 1
    baseline = LatencyAdaptivePolicy(SLO_MS, CAP)
    baseline.observe_batch(1, 0.0, compute_s(1), None)
    arrive(baseline, 0.01)
    assert baseline.decide(view(last, 1, last)).size == 0  # the latency alone allows a wait
    # J/image least at 2: waits for the second, cuts at it.
    policy = AdaptivePolicy(SLO_MS, CAP, seed=seed(rising_beyond(2)))
    last = arrive(policy, 0.01)
    assert policy.decide(view(last, 1, last)).size == 0
    assert policy.decide(view(last, 2, last - 0.01)).size == 2


def test_the_queue_needing_throughput_allows_larger_batches() -> None:
    policy = AdaptivePolicy(SLO_MS, CAP, seed=seed(flat_beyond(4)))
    last = arrive(policy, 0.002, count=40)  # 500/s: batches of 4 (9 ms) cannot keep up
    assert policy.decide(view(last, 5, last - 0.004)).size == 0  # below the throughput size: waits
    target = policy.describe()["target_batch_size"]
    assert policy.regime == "throughput" and target > 4
    assert 500 * compute_s(int(target)) <= int(target)  # the size sustains the rate
    assert policy.decide(view(last, int(target), last - 0.01)).size == target
    assert policy.decide(view(last, 20, last - 0.01)).size == 20  # what is queued, up to the cap
    assert policy.decide(view(last, 50, last - 0.01)).size == CAP
    # A second of silence: the rate has dropped, whatever the mean gap says.
    policy.decide(view(last + 1.0, 1, last + 1.0))
    assert policy.regime != "throughput"


def test_a_backlog_is_cut_in_batches_that_clear_it_in_time() -> None:
    policy = AdaptivePolicy(SLO_MS, CAP, seed=seed(flat_beyond(4)))
    last = arrive(policy, 0.1)  # 10/s: b* = 4 and no throughput needed by the rate
    assert policy.decide(view(last, 60, last)).size == 4  # 15 batches of 4 still clear in time
    oldest = last - 0.1
    size = policy.decide(view(last, 60, oldest)).size
    assert 4 < size <= CAP
    assert last + math.ceil(60 / size) * compute_s(size) <= oldest + BUDGET_S


def test_draining_and_knowing_nothing_cut_at_once() -> None:
    policy = AdaptivePolicy(SLO_MS, CAP, seed=seed(linear))
    last = arrive(policy, 0.01)
    assert policy.decide(view(last, 3, last, draining=True)).size == 3
    assert policy.decide(view(last, 40, last, draining=True)).size == CAP
    fresh = AdaptivePolicy(SLO_MS, CAP)  # no seed, nothing observed: no basis for a wait
    assert fresh.decide(view(0.0, 3, 0.0)).size == 3
    assert fresh.regime == "learning"
    assert math.isnan(fresh.describe()["observed_p99_seconds"])
    assert LatencyAdaptivePolicy(SLO_MS, CAP).decide(view(0.0, 3, 0.0)).size == 3


def test_decisions_respect_the_queue_and_both_caps() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        cap = int(rng.integers(1, 40))
        energy = [linear, flat_beyond(int(rng.integers(1, 9))), rising_beyond(3)][int(rng.integers(3))]
        sizes = range(1, int(rng.integers(1, 40)) + 1)
        policies: list[BatchPolicy] = [
            AdaptivePolicy(float(rng.uniform(20, 500)), cap, seed=seed(energy, sizes)),
            LatencyAdaptivePolicy(float(rng.uniform(20, 500)), cap),
        ]
        for policy in policies:
            policy.observe_batch(1, 0.0, compute_s(1), energy(1))
            last = arrive(policy, float(rng.exponential(0.02)), count=int(rng.integers(1, 20)))
            now = last + float(rng.uniform(0, 0.3))
            queued, oldest, view_cap = (
                int(rng.integers(1, 80)),
                now - float(rng.uniform(0, 0.5)),
                int(rng.integers(1, 40)),
            )
            v = view(now, queued, oldest, view_cap, draining=bool(rng.random() < 0.2))
            decision = policy.decide(v)
            assert 0 <= decision.size <= min(v.queued, v.max_batch_size, cap)
            if v.draining:
                assert decision.size >= 1
            if decision.size == 0:
                assert decision.until is not None and decision.until >= v.now


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="slo_p99_ms"):
        AdaptivePolicy(0.0, CAP)
    with pytest.raises(ValueError, match="max_batch_size"):
        LatencyAdaptivePolicy(SLO_MS, 0)
    with pytest.raises(ValueError, match="margin"):
        AdaptivePolicy(SLO_MS, CAP, margin=1.0)
    with pytest.raises(ValueError, match="seed"):
        AdaptivePolicy(SLO_MS, CAP, seed={4: (math.nan, 1.0)})


# --- learning ---------------------------------------------------------------------------------------


def test_learns_each_size_from_its_batches() -> None:
    policy = AdaptivePolicy(SLO_MS, CAP)
    policy.observe_batch(4, 0.0, 0.02, 1.0)
    policy.observe_batch(2, 0.0, 0.01, None)  # a failing meter: time learned, energy unknown
    learned = policy.learned()
    assert learned[4] == (0.02, 1.0)
    assert learned[2][0] == 0.01 and math.isnan(learned[2][1])
    for _ in range(40):
        policy.observe_batch(4, 0.0, 0.03, 2.0)
    assert policy.learned()[4] == pytest.approx((0.03, 2.0), rel=1e-3)


def test_the_energy_efficient_size_follows_what_was_observed() -> None:
    energy = rising_beyond(3)
    policy = AdaptivePolicy(SLO_MS, CAP)
    for n in range(1, 13):
        policy.observe_batch(n, 0.0, compute_s(n), energy(n))
    last = arrive(policy, 0.01)
    policy.decide(view(last, 1, last))
    assert policy.describe()["target_batch_size"] == 3
    for _ in range(30):  # the hardware changed: now J/image is least at 6
        for n in range(1, 13):
            policy.observe_batch(n, 0.0, compute_s(n), rising_beyond(6)(n))
    policy.decide(view(last, 1, last))
    assert policy.describe()["target_batch_size"] == 6
    per_image = {n: e / n for n, (_, e) in policy.learned().items()}
    assert min(per_image, key=lambda n: per_image[n]) == 6


def test_seeds_from_a_profile_and_estimates_sizes_between_and_beyond() -> None:
    profile = {1: (0.01, 1.0), 4: (0.04, 1.6), 8: (0.06, 2.4)}
    policy = AdaptivePolicy(SLO_MS, CAP, seed=profile)
    assert policy.learned() == profile
    # Between known sizes: time linear; J/image 2% below the better of the two (so that it gets tried).
    assert policy.estimate(2) == pytest.approx((0.02, 2 * min(1.0 / 1, 1.6 / 4) * 0.98))
    assert policy.estimate(6) == pytest.approx((0.05, 6 * min(1.6 / 4, 2.4 / 8) * 0.98))
    estimate = policy.estimate(16)
    assert estimate is not None and estimate[1] is not None
    assert estimate[0] >= 0.06 * 2  # time beyond grows at least in proportion (conservative)
    xs, ys = np.array([1, 4, 8]), np.array([1.0, 1.6, 2.4])
    b, a = np.polyfit(xs, ys, 1)
    assert estimate[1] == pytest.approx(a + b * 16)  # energy beyond: the fitted a + b·n
    one = AdaptivePolicy(SLO_MS, CAP, seed={4: (0.04, 1.6)})
    assert one.estimate(8) == (0.08, None)  # one size only: energy beyond unknown (explored)
    policy.observe_batch(2, 0.0, 0.02, 1.5)  # tried: now known, no longer assumed
    assert policy.estimate(2) == (0.02, 1.5)
    assert policy.estimate(3) == pytest.approx((0.03, 3 * min(1.5 / 2, 1.6 / 4) * 0.98))


def test_sees_a_tenfold_rate_step_within_a_few_arrivals() -> None:
    policy = AdaptivePolicy(SLO_MS, CAP)
    last = arrive(policy, 0.1, count=100)
    assert policy.describe()["arrival_rate_per_second"] == pytest.approx(10)
    for i in range(1, 9):
        policy.observe_arrival(last + i * 0.01)
        if policy.describe()["arrival_rate_per_second"] > 50:
            break
    else:
        pytest.fail("a 10x rate step was not seen within 8 arrivals")
    # and back down: the time since the last arrival counts at once, so no wait rests on a stale rate
    last += i * 0.01
    policy.observe_batch(1, 0.0, compute_s(1), linear(1))
    assert policy.decide(view(last + 0.01, 1, last)).size == 0  # at the fast rate: worth a wait
    assert policy.decide(view(last + BUDGET_S / 2, 1, last)).size == 1  # silence since: not


def test_observed_p99_is_the_nearest_rank_of_the_recent_answers() -> None:
    policy = AdaptivePolicy(SLO_MS, CAP)
    rng = np.random.default_rng(3)
    values = rng.uniform(0.01, 0.2, size=200)
    times = np.concatenate([np.arange(49.0), 49 + 0.01 * np.arange(151)])
    for v, t in zip(values[:49], times[:49], strict=True):
        policy.observe_latency(float(v), float(t))
    assert math.isnan(policy.describe()["observed_p99_seconds"])  # too few to say
    for v, t in zip(values[49:], times[49:], strict=True):
        policy.observe_latency(float(v), float(t))
    recent = values[times >= times[-1] - 30]  # answers older than 30 s are forgotten
    assert len(recent) < len(values)
    expected = np.quantile(recent, 0.99, method="inverted_cdf")
    assert policy.describe()["observed_p99_seconds"] == pytest.approx(expected)


def test_an_observed_p99_near_the_objective_tightens_the_margin() -> None:
    calm, tight = (AdaptivePolicy(SLO_MS, CAP, seed=seed(linear)) for _ in range(2))
    for i in range(100):
        tight.observe_latency(0.98 * SLO_MS / 1000, float(i) * 0.01)
        calm.observe_latency(0.5 * SLO_MS / 1000, float(i) * 0.01)
    assert tight.describe()["margin"] > 0.2 == calm.describe()["margin"]
    last = arrive(calm, 0.02)
    arrive(tight, 0.02)
    calm_until, tight_until = (p.decide(view(last, 1, last)).until for p in (calm, tight))
    assert calm_until is not None and tight_until is not None and tight_until < calm_until


# --- a rate step and a burst, simulated ---------------------------------------------------------------


@dataclass
class Run:
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (answered at, latency s)
    batches: list[tuple[float, int, float]] = field(default_factory=list)  # (started at, size, energy J)
    regimes: list[str] = field(default_factory=list)

    def j_per_request(self, start: float = 0.0, end: float = math.inf) -> float:
        chosen = [(n, e) for t, n, e in self.batches if start <= t < end]
        return sum(e for _, e in chosen) / sum(n for n, _ in chosen)

    def window_p99s(self, width_s: float = 10.0) -> dict[int, float]:
        windows: dict[int, list[float]] = {}
        for at, latency in self.latencies:
            windows.setdefault(int(at // width_s), []).append(latency)
        return {w: float(np.quantile(v, 0.99, method="inverted_cdf")) for w, v in sorted(windows.items())}

    def p99(self, after: float = 0.0) -> float:
        latencies = [lat for at, lat in self.latencies if at >= after]
        return float(np.quantile(latencies, 0.99, method="inverted_cdf"))


def simulate(policy: BatchPolicy, arrivals: np.ndarray, energy: Energy) -> Run:
    """One batch at a time; the policy is asked whenever the slot is free and something changed."""
    run, queue = Run(), deque[float]()
    index, busy_until, wake = 0, math.inf, math.inf
    batch: list[float] = []
    started = 0.0
    while index < len(arrivals) or queue or batch:
        next_arrival = float(arrivals[index]) if index < len(arrivals) else math.inf
        now = min(next_arrival, busy_until, wake)
        if batch and busy_until <= now:
            n = len(batch)
            policy.observe_batch(n, started, compute_s(n), energy(n))
            for enqueued in batch:
                policy.observe_latency(now - enqueued, now)
                run.latencies.append((now, now - enqueued))
            batch, busy_until = [], math.inf
        elif next_arrival <= now:
            queue.append(now)
            policy.observe_arrival(now)
            index += 1
        else:
            wake = math.inf
        if not batch and queue:
            decision = policy.decide(QueueView(now, len(queue), queue[0], CAP))
            run.regimes.append(getattr(policy, "regime", ""))
            assert decision.size <= len(queue)
            if decision.size > 0:
                batch = [queue.popleft() for _ in range(decision.size)]
                started, busy_until, wake = now, now + compute_s(decision.size), math.inf
                run.batches.append((now, decision.size, energy(decision.size)))
            else:
                assert decision.until is not None
                wake = max(decision.until, now + 1e-6)
    return run


def poisson(rng: np.random.Generator, rate_per_s: float, start: float, end: float) -> np.ndarray:
    gaps = rng.exponential(1 / rate_per_s, size=int(rate_per_s * (end - start) * 1.5) + 50)
    times = start + np.cumsum(gaps)
    return times[times < end]


def step_trace(seed_value: int = 11) -> np.ndarray:
    """10/s for 40 s, a 10× step to 100/s for 40 s, back to 10/s for 40 s."""
    rng = np.random.default_rng(seed_value)
    return np.concatenate([poisson(rng, 10, 0, 40), poisson(rng, 100, 40, 80), poisson(rng, 10, 80, 120)])


def within_objective(run: Run, excepted: set[int]) -> dict[int, float]:
    """The windows over the objective, bar the excepted ones."""
    return {w: p for w, p in run.window_p99s().items() if p > SLO_MS / 1000 and w not in excepted}


def test_a_tenfold_rate_step_keeps_every_window_within_the_objective() -> None:
    trace = step_trace()
    adaptive = simulate(AdaptivePolicy(SLO_MS, CAP), trace, linear)  # learns from nothing
    assert within_objective(adaptive, excepted={4}) == {}  # 4: the first window after the step
    assert len(adaptive.window_p99s()) == 12
    greedy = simulate(StaticPolicy(CAP, 0), trace, linear)
    # At low load, waiting (within the objective) saves energy that greedy batching spends.
    assert adaptive.j_per_request(0, 40) < 0.8 * greedy.j_per_request(0, 40)
    assert adaptive.j_per_request(80, 120) < 0.8 * greedy.j_per_request(80, 120)
    assert adaptive.j_per_request() < greedy.j_per_request()
    changes = sum(a != b for a, b in zip(adaptive.regimes, adaptive.regimes[1:], strict=False))
    assert changes <= 10  # regimes follow the load, they do not flap
    baseline = simulate(LatencyAdaptivePolicy(SLO_MS, CAP), trace, linear)
    assert within_objective(baseline, excepted={4}) == {}


@pytest.mark.parametrize("energy", [linear, flat_beyond(4)], ids=["linear", "flat-beyond-4"])
def test_a_burst_keeps_every_window_within_the_objective(energy: Energy) -> None:
    rng = np.random.default_rng(5)
    trace = np.sort(np.concatenate([poisson(rng, 10, 0, 60), np.full(60, 30.0)]))
    run = simulate(AdaptivePolicy(SLO_MS, CAP, seed=seed(energy)), trace, energy)
    assert within_objective(run, excepted=set()) == {}
    assert len(run.latencies) == len(trace)


def test_where_waiting_saves_nothing_the_latency_baseline_spends_as_much_for_a_longer_wait() -> None:
    rng = np.random.default_rng(17)
    trace = poisson(rng, 100, 0, 30)
    flat = flat_beyond(4)
    adaptive = simulate(AdaptivePolicy(SLO_MS, CAP), trace, flat)
    baseline = simulate(LatencyAdaptivePolicy(SLO_MS, CAP), trace, flat)
    assert within_objective(adaptive, set()) == {} and within_objective(baseline, set()) == {}
    assert baseline.j_per_request() >= 0.99 * adaptive.j_per_request()
    assert adaptive.p99(after=10) < 0.7 * baseline.p99(after=10)  # once it has learned (and explored)
    least = min(flat(n) / n for n in range(1, CAP + 1))
    assert adaptive.j_per_request() <= 1.05 * least  # it found the knee, learning from nothing
    # Where J/image rises past the knee, waiting as long as the objective allows costs energy.
    rising = rising_beyond(4)
    adaptive = simulate(AdaptivePolicy(SLO_MS, CAP), trace, rising)
    baseline = simulate(LatencyAdaptivePolicy(SLO_MS, CAP), trace, rising)
    assert baseline.j_per_request() > 1.2 * adaptive.j_per_request()
    assert adaptive.j_per_request() <= 1.05 * min(rising(n) / n for n in range(1, CAP + 1))
