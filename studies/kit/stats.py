"""Statistics the studies share: Kruskal–Wallis with its η² effect size, mean and standard deviation,
Pareto fronts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from scipy import stats as scipy_stats

T = TypeVar("T")


@dataclass(frozen=True)
class KruskalResult:
    """A Kruskal–Wallis H test with its η² effect size; the numbers are None when undefined.

    ``reason`` says why they are undefined (one group, too few observations, all values identical),
    or notes that a negative η² estimate was floored to 0.
    """

    n: int  # observations in all non-empty groups
    k: int  # non-empty groups
    h: float | None
    p_value: float | None
    eta_squared: float | None
    reason: str | None = None


def eta_squared_h(h: float, n: int, k: int) -> float:
    """Kruskal–Wallis eta-squared: η²_H = (H − k + 1) / (n − k).

    The share of the rank variance explained by the grouping (Tomczak & Tomczak 2014, "The need to
    report effect size estimates revisited", Trends in Sport Sciences 21(1):19–25; the formula of
    R's ``rstatix::kruskal_effsize``). Conventional reading: < 0.06 small, < 0.14 moderate, ≥ 0.14
    large. It is a bias-corrected estimate, so it can come out slightly negative for a null effect.
    Requires n > k.
    """
    if n <= k:
        raise ValueError(f"η²_H needs more observations than groups, got n={n}, k={k}")
    return (h - k + 1) / (n - k)


def kruskal_eta_squared(groups: Sequence[Sequence[float]]) -> KruskalResult:
    """Kruskal–Wallis H test (``scipy.stats.kruskal``) of ``groups`` and its η²_H effect size.

    Empty groups are dropped. Degenerate inputs do not raise: with fewer than two groups, no more
    observations than groups, non-finite values or all values identical (ranks all tied: H is 0/0),
    the numbers are None and ``reason`` says why. A negative η² estimate is floored to 0, and the
    floor is noted in ``reason``.
    """
    nonempty = [[float(v) for v in g] for g in groups if len(g) > 0]
    k = len(nonempty)
    n = sum(len(g) for g in nonempty)
    if k < 2:
        return KruskalResult(n, k, None, None, None, f"needs at least two groups with data, got {k}")
    if n <= k:
        return KruskalResult(n, k, None, None, None, f"needs more observations than groups (n={n}, k={k})")
    flat = [v for g in nonempty for v in g]
    if not all(math.isfinite(v) for v in flat):
        return KruskalResult(n, k, None, None, None, "non-finite values")
    if min(flat) == max(flat):
        return KruskalResult(n, k, None, None, None, "all values are identical, so H is undefined (0/0)")
    result = scipy_stats.kruskal(*nonempty)
    h, p = float(result.statistic), float(result.pvalue)
    eta = eta_squared_h(h, n, k)
    if eta < 0:
        return KruskalResult(n, k, h, p, 0.0, f"η² estimate {eta:.4f} < 0 (no effect) floored to 0")
    return KruskalResult(n, k, h, p, eta)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where undefined: no values, or one for the std)."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def pareto_front(items: Sequence[T], objectives: Callable[[T], Sequence[float]]) -> list[T]:
    """The items no other item beats: none is lower-or-equal on every objective (all minimised; negate
    one to maximise it) and strictly lower on one. Ties are kept; the order of ``items`` is kept."""
    scored = [(item, tuple(objectives(item))) for item in items]
    return [
        item
        for item, mine in scored
        if not any(
            all(o <= m for o, m in zip(other, mine, strict=True)) and other != mine for _, other in scored
        )
    ]
