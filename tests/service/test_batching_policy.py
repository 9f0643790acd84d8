"""The batcher asks its policy when to cut, tells it what happened, and keeps its own guarantees
(cap, deadlines, drain) whatever the policy says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from service.batching import Batcher, BatchingConfig
from service.errors import DeadlineExceededError, InvalidParameterError
from service.policy import Decision, QueueView, StaticPolicy, make_policy, read_profile_seed


class Recording:
    """A test policy: cuts exactly ``size`` (even more than allowed: the batcher caps it), else waits."""

    name = "recording"

    def __init__(self, size: int, wait_s: float | None = None) -> None:
        self.size = size
        self.wait_s = wait_s
        self.views: list[QueueView] = []
        self.arrivals: list[float] = []
        self.batches: list[tuple[int, float | None]] = []
        self.latencies: list[float] = []

    def decide(self, view: QueueView) -> Decision:
        self.views.append(view)
        if view.queued >= self.size:
            return Decision.cut(self.size)
        if self.wait_s is not None and view.now >= view.oldest_enqueued_at + self.wait_s:
            return Decision.cut(view.queued)
        return Decision.wait(None if self.wait_s is None else view.oldest_enqueued_at + self.wait_s)

    def observe_arrival(self, at: float) -> None:
        self.arrivals.append(at)

    def observe_batch(self, size: int, started_at: float, compute_s: float, energy_j: float | None) -> None:
        self.batches.append((size, energy_j))

    def observe_latency(self, latency_s: float, at: float) -> None:
        self.latencies.append(latency_s)

    def describe(self) -> dict[str, float]:
        return {"target_batch_size": float(self.size), "target_wait_seconds": self.wait_s or 0.0}


async def _echo(items: list[int]) -> Sequence[int]:
    await asyncio.sleep(0.01)
    return items


def _batcher(policy: Recording, **config: int | float) -> Batcher[int, int]:
    batcher: Batcher[int, int] = Batcher(
        _echo,
        BatchingConfig(**config),  # type: ignore[arg-type]
        batch_energy=lambda results: 0.1 * len(results),
    )
    batcher._policy = policy  # the test's own policy in place of the configured one
    return batcher


async def test_the_policy_decides_the_cut_and_learns_what_happened() -> None:
    policy = Recording(size=3)
    batcher = _batcher(policy, max_batch_size=8)
    batcher.start()
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(6)))
    assert [o.batch_size for o in outcomes] == [3] * 6
    assert len(policy.arrivals) == 6
    assert policy.batches == [(3, pytest.approx(0.3)), (3, pytest.approx(0.3))]
    assert len(policy.latencies) == 6 and all(0 < lat < 5 for lat in policy.latencies)
    assert all(v.max_batch_size == 8 and v.queued >= 1 for v in policy.views)
    await batcher.close()


async def test_the_cap_and_the_deadlines_hold_whatever_the_policy_says() -> None:
    policy = Recording(size=50, wait_s=0.02)  # asks for more than max_batch_size
    batcher = _batcher(policy, max_batch_size=4)
    batcher.start()
    policy.wait_s = None  # waits forever: only the deadline ends this request's wait
    with pytest.raises(DeadlineExceededError):
        await batcher.submit(1, deadline=time.monotonic() + 0.05)
    policy.wait_s = 0.02
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(50)))
    assert max(o.batch_size for o in outcomes) == 4
    await batcher.close()


async def test_a_waiting_policy_is_asked_again_at_its_time_and_the_drain_cuts_at_once() -> None:
    policy = Recording(size=100, wait_s=0.05)
    batcher = _batcher(policy, max_batch_size=100)
    batcher.start()
    started = time.monotonic()
    outcome = await batcher.submit(7)
    assert outcome.batch_size == 1 and 0.04 <= time.monotonic() - started < 1.0
    slow = Recording(size=100)  # never cuts by itself
    batcher._policy = slow
    pending = asyncio.ensure_future(batcher.submit(8))
    await asyncio.sleep(0.05)
    assert not pending.done()
    report = await batcher.close(drain_timeout_s=5)
    assert (await pending).value == 8 and report.failed == 0


async def test_reconfigure_switches_policy_and_refuses_an_adaptive_one_without_objective() -> None:
    batcher: Batcher[int, int] = Batcher(_echo, BatchingConfig(max_batch_size=8, max_wait_ms=2))
    assert isinstance(batcher.policy, StaticPolicy)
    with pytest.raises(InvalidParameterError, match="needs slo_p99_ms"):
        batcher.reconfigure(policy="adaptive")
    assert isinstance(batcher.policy, StaticPolicy) and batcher.config.policy == "static"
    with pytest.raises(InvalidParameterError, match="batching must be one of"):
        batcher.reconfigure(policy="magic")
    batcher.reconfigure(max_wait_ms=7)
    assert batcher.policy.describe()["target_wait_seconds"] == pytest.approx(0.007)


def test_static_policy_is_the_old_rule() -> None:
    policy = StaticPolicy(4, 10)
    view = QueueView(now=1.0, queued=2, oldest_enqueued_at=0.995, max_batch_size=4)
    assert policy.decide(view) == Decision.wait(pytest.approx(1.005))
    assert policy.decide(QueueView(1.006, 2, 0.995, 4)) == Decision.cut(2)
    assert policy.decide(QueueView(1.0, 9, 0.995, 4)) == Decision.cut(4)
    assert policy.decide(QueueView(1.0, 2, 0.995, 4, draining=True)) == Decision.cut(2)
    assert StaticPolicy(4, 0).decide(QueueView(1.0, 1, 1.0, 4)) == Decision.cut(1)
    with pytest.raises(ValueError, match="needs a latency objective"):
        make_policy("adaptive", max_batch_size=4, max_wait_ms=0)


def test_profile_seed_reads_the_columns_a_policy_needs(tmp_path: Path) -> None:
    good = tmp_path / "p.csv"
    good.write_text("batch_size,latency_mean_ms,energy_j_per_batch,other\n1,2.0,0.5,x\n8,10.0,1.6,y\n")
    assert read_profile_seed(good) == {1: (0.002, 0.5), 8: (0.01, 1.6)}
    bad = tmp_path / "bad.json"
    bad.write_text('{"points": [{"batch_size": 2}]}')
    with pytest.raises(ValueError, match="point 1 lacks"):
        read_profile_seed(bad)


def test_serve_settings_refuse_an_adaptive_policy_without_objective_or_profile(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from service.config import Settings

    with pytest.raises(ValidationError, match="needs slo_p99_ms"):
        Settings(batching="adaptive")
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(batching="adaptive", slo_p99_ms=50, batching_profile=tmp_path / "none.json")
    assert Settings(batching="latency-adaptive", slo_p99_ms=50).slo_p99_ms == 50
