"""When to cut a batch: the batcher's one decision, as a pure function of the queue, the clock and what
the policy has learned.

The :class:`~service.batching.Batcher` owns the queue, the deadlines, the admission bound and the
drain; a :class:`BatchPolicy` only answers "cut now, this many, or wait until when?" from a
:class:`QueueView`, and learns from what the batcher tells it happened (arrivals, batches with their
compute time and energy, answered requests' latency). Nothing here reads a clock or touches asyncio,
so the queue simulator (:mod:`loadgen.simulate`) runs the very same policy objects on simulated time.

Policies:

* :class:`StaticPolicy` — today's rule, unchanged: cut when ``max_batch_size`` are queued or when
  ``max_wait_ms`` has passed since the oldest queued item arrived (0: greedy).
* ``AdaptivePolicy`` (:mod:`service.adaptive`) — energy-aware under a p99 latency objective.
* ``LatencyAdaptivePolicy`` (:mod:`service.adaptive`) — a BentoML-like baseline: waits as long as
  the latency objective allows, ignoring energy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class QueueView:
    """What a policy sees when the batcher has a free slot and at least one live item queued."""

    now: float  # seconds, the batcher's monotonic clock (simulated time in the simulator)
    queued: int  # live items waiting, ≥ 1
    oldest_enqueued_at: float  # when the oldest of them was queued (same clock as ``now``)
    max_batch_size: int  # the hard cap: no batch is ever larger
    draining: bool = False  # the server is shutting down: waiting helps nobody


@dataclass(frozen=True)
class Decision:
    """``size > 0``: cut a batch of ``size`` items now (``size <= queued``). ``size == 0``: wait,
    and ask again at ``until`` at the latest (``None``: only when something changes — an arrival, a
    slot freed, a setting changed)."""

    size: int
    until: float | None = None

    @staticmethod
    def cut(size: int) -> Decision:
        return Decision(size)

    @staticmethod
    def wait(until: float | None) -> Decision:
        return Decision(0, until)


class BatchPolicy(Protocol):
    """The batcher's decision, and what it learns. Every method is called from one thread (the
    batcher's event loop, or the simulator) and must not block."""

    name: str

    def decide(self, view: QueueView) -> Decision: ...

    def observe_arrival(self, at: float) -> None:
        """An item was queued at ``at``."""

    def observe_batch(self, size: int, started_at: float, compute_s: float, energy_j: float | None) -> None:
        """A batch of ``size`` items ran for ``compute_s``; ``energy_j`` is its model energy (None:
        unknown, e.g. a failing meter)."""

    def observe_latency(self, latency_s: float, at: float) -> None:
        """An item answered at ``at`` had waited and computed ``latency_s`` in all."""

    def describe(self) -> dict[str, float]:
        """The policy's current state for metrics and ``GET /v1/batching``: at least
        ``target_batch_size`` and ``target_wait_seconds``."""
        ...


class StaticPolicy:
    """Cut at ``max_batch_size`` items, or ``max_wait_ms`` after the oldest item arrived."""

    name = "static"

    def __init__(self, max_batch_size: int, max_wait_ms: float) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not (math.isfinite(max_wait_ms) and max_wait_ms >= 0):
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms}")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000

    def decide(self, view: QueueView) -> Decision:
        size = min(self.max_batch_size, view.max_batch_size)
        cutoff = view.oldest_enqueued_at + self.max_wait_s
        if view.queued >= size or view.draining or view.now >= cutoff:
            return Decision.cut(min(size, view.queued))
        return Decision.wait(cutoff)

    def observe_arrival(self, at: float) -> None:
        pass

    def observe_batch(self, size: int, started_at: float, compute_s: float, energy_j: float | None) -> None:
        pass

    def observe_latency(self, latency_s: float, at: float) -> None:
        pass

    def describe(self) -> dict[str, float]:
        return {"target_batch_size": float(self.max_batch_size), "target_wait_seconds": self.max_wait_s}
