"""The sweep's analysis, from its table alone: the ok rows as points, the Pareto front of p99
latency and J/request, and the recommendation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from studies.kit.stats import pareto_front
from studies.sweep.settings import GREEDY, SweepConfig
from studies.sweep.table import number

#: Two configurations whose mean batch sizes differ by less than this formed the same batches.
SAME_BATCHES = 0.05


@dataclass(frozen=True)
class Point:
    """One ok row of the CSV, as numbers."""

    key: str
    model: str
    greedy: bool
    max_batch_size: int
    max_wait_ms: float
    p99_ms: float
    j_per_request: float
    energy_source: str
    throughput_rps: float
    mean_batch_size: float | None
    rejected: int
    errors: int
    amortised_j_per_request: float | None = None
    amortised_energy_source: str | None = None

    @property
    def label(self) -> str:
        return SweepConfig(self.model, self.max_batch_size, self.max_wait_ms, self.greedy).label

    @property
    def clean(self) -> bool:
        """Nothing rejected, nothing failed."""
        return self.rejected == 0 and self.errors == 0


def points_from_rows(rows: Sequence[Mapping[str, str]]) -> list[Point]:
    points = []
    for row in rows:
        p99 = number(row["latency_p99_ms"])
        joules = number(row["j_per_request"])
        if row["status"] != "ok" or p99 is None or joules is None:
            continue
        points.append(
            Point(
                key=row["key"],
                model=row["model"],
                greedy=row["mode"] == GREEDY,
                max_batch_size=int(row["max_batch_size"]),
                max_wait_ms=float(row["max_wait_ms"]),
                p99_ms=p99,
                j_per_request=joules,
                energy_source=row["energy_source"],
                throughput_rps=float(row["throughput_rps"]),
                mean_batch_size=number(row["mean_batch_size"]),
                rejected=int(row["rejected_queue_full"]) + int(row["rejected_deadline"]),
                errors=int(row["errors"]),
                amortised_j_per_request=number(row.get("amortised_j_per_request")),
                amortised_energy_source=row.get("amortised_energy_source") or None,
            )
        )
    return points


def pareto(points: Sequence[Point]) -> list[Point]:
    """Points no other point beats on both p99 and J/request (ties kept), by increasing p99."""
    front = pareto_front(points, lambda p: (p.p99_ms, p.j_per_request))
    return sorted(front, key=lambda p: (p.p99_ms, p.j_per_request))


def recommend(points: Sequence[Point], p99_target_ms: float) -> Point | None:
    """The lowest-J/request clean point meeting the p99 target (ties: the lower p99), or None."""
    eligible = [p for p in points if p.clean and p.p99_ms <= p99_target_ms]
    return min(eligible, key=lambda p: (p.j_per_request, p.p99_ms)) if eligible else None


def same_batches(best: Point, points: Sequence[Point]) -> list[Point]:
    """Other clean configurations of ``best``'s model that formed the same batches (the cap did not
    bind, or bound alike): their energy cannot differ for a reason the setting explains."""
    if best.mean_batch_size is None:
        return []
    return [
        p
        for p in points
        if p.key != best.key
        and p.clean
        and p.mean_batch_size is not None
        and abs(p.mean_batch_size / best.mean_batch_size - 1) < SAME_BATCHES
        and abs(p.p99_ms / best.p99_ms - 1) < 0.25
    ]
