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

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: The policies ``--batching`` selects (service.batching builds them with :func:`make_policy`).
POLICY_NAMES = ("static", "adaptive", "latency-adaptive")


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


def make_policy(
    name: str,
    *,
    max_batch_size: int,
    max_wait_ms: float,
    slo_p99_ms: float | None = None,
    seed: Mapping[int, tuple[float, float]] | None = None,
) -> BatchPolicy:
    """The policy ``name`` (one of :data:`POLICY_NAMES`). ``static`` uses ``max_wait_ms``; the
    adaptive ones need ``slo_p99_ms`` and keep ``max_batch_size`` as their cap; ``seed`` maps a batch
    size to its (compute s, energy J) from a profile, for the energy-aware one."""
    if name == "static":
        return StaticPolicy(max_batch_size, max_wait_ms)
    if name not in POLICY_NAMES:
        raise ValueError(f"unknown batching policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
    if slo_p99_ms is None:
        raise ValueError(f"batching policy {name!r} needs a latency objective (slo_p99_ms)")
    from service.adaptive import AdaptivePolicy, LatencyAdaptivePolicy

    if name == "adaptive":
        return AdaptivePolicy(slo_p99_ms, max_batch_size, seed=seed)
    return LatencyAdaptivePolicy(slo_p99_ms, max_batch_size)


def read_profile_seed(path: Path) -> dict[int, tuple[float, float]]:
    """Batch size → (mean compute s, energy J per batch) from a ``greenserve profile`` file (.json or
    .csv). Only the columns a policy needs are read, so the server does not import the lab that
    writes the file; a file without them is a ``ValueError`` naming what is missing."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        rows = data.get("points") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: not a profile (no points list)")
    elif path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        raise ValueError(f"{path}: a profile is a .json or .csv file")
    seed: dict[int, tuple[float, float]] = {}
    for index, row in enumerate(rows, start=1):
        try:
            size = int(row["batch_size"])
            compute_s = float(row["latency_mean_ms"]) / 1000
            energy_j = float(row["energy_j_per_batch"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: point {index} lacks batch_size, latency_mean_ms or energy_j_per_batch ({exc})"
            ) from None
        if size < 1 or not (math.isfinite(compute_s) and compute_s > 0 and math.isfinite(energy_j)):
            raise ValueError(f"{path}: point {index} has an unusable size, time or energy")
        seed[size] = (compute_s, energy_j)
    if not seed:
        raise ValueError(f"{path}: the profile has no points")
    return seed
