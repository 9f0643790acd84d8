"""Batching under a p99 latency objective: :class:`AdaptivePolicy` (energy-aware) and
:class:`LatencyAdaptivePolicy` (a BentoML-like baseline that waits as long as the objective allows).

Both are pure :class:`~service.policy.BatchPolicy` objects: no clock, no I/O; they learn only from what
the batcher (or the simulator) tells them.

**What they learn.** Per batch size, EWMAs of the compute time (and its mean absolute deviation) and of
the model energy per batch; a profile point (``seed``) counts as one observation. Unseen sizes, from the
seen: time linear between neighbours, the smallest's below it, and beyond the largest L the larger of
c(L)·n/L and the least-squares a + b·n of the three largest (conservative); energy between neighbours at
a J/image 2% below the better of the two (optimistic: the size gets tried once, then is known), the
smallest's J/image below it, that least-squares a + b·n beyond (unknown with one size known: unknown
energy "may lower J/request", so larger sizes get explored). The arrival rate: an EWMA of the gaps, reset
to the mean of the last 8 when that is 3× off (a 10× step is seen within about 6 arrivals). The observed
p99 of the last 500 answers within 30 s: past (1 − margin/2)·objective, the margin grows by the excess
(to at most 0.6).

**The decision rule** (AdaptivePolicy). Let B = objective·(1 − margin) be the latency budget,
D = oldest_enqueued_at + B, q the queued items, c(n) the projected compute time of n items (mean + 2
deviations), J(n) = energy(n)/n, g the expected time to the next arrival (the mean gap, or the silence
since the last arrival once that is longer: a drop in the rate counts at once), r = 1/g.

1. Draining, or no compute time known yet: cut what is queued (up to the cap).
2. b*, the energy-efficient size: the smallest size within 1% of the least J(n) among sizes with c(n) ≤ B
   (the largest such size while some of them have unknown energy).
3. The queue needs throughput when r·c(b*) > 0.9·b* (it stays so until r·c(b*) < 0.7·b*): the target is
   then the smallest n ≥ b* with r·c(n) ≤ 0.9·n (else the cap), and once q reaches it, all that is queued
   is cut (up to the cap). Otherwise the target is b*, never passed, unless the backlog would not clear
   in time in batches of b* (now + ⌈q/b*⌉·c(b*) > D): then the smallest size that clears it.
4. q ≥ target: cut.
5. Wait only while (a) now + g + c(q+1) ≤ D and (b) some size m in (q, target] lowers J/request by more
   than 1% (J(m) < 0.99·J(q)) and can be gathered in time (now + (m − q)·g + c(m) ≤ D); where J/image
   falls with size this is the issue's "one more request lowers J/request". In the throughput regime (b)
   is not asked. The wait's ``until`` is the last instant at which (a) still holds if nothing arrives
   (g growing with the silence): the batcher asks again then, and the policy cuts.
6. Otherwise cut what is queued.

LatencyAdaptivePolicy learns and projects the same way, with target = the cap and step 5's (a) only.

``regime`` (the batcher logs its changes): ``learning`` (no compute time known), ``throughput`` (step 3),
``latency-bound`` (the objective, not energy, limits the batch: b* is below the least-J/image size, or
cannot be gathered in time, (b* − 1)·g + c(b*) > B), else ``energy``; the baseline's: ``learning``,
``latency``. :meth:`describe` adds to the target's size and wait the projected p99 (target wait +
c(target), + one batch when the queue needs throughput), the observed p99 (NaN while unknown), the
arrival rate and the margin; ``learned()`` is the table (size → compute s, energy J; NaN: unknown).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from service.policy import Decision, QueueView

_ALPHA = 0.2  # weight of a new batch observation (after the first few: a running mean until then)
_RATE_ALPHA = 0.1  # weight of a new inter-arrival gap
_JUMP_GAPS, _JUMP_FACTOR, _MIN_GAP_S = 8, 3.0, 1e-6  # the fast rate detector: window, how far off
_LATENCY_WINDOW, _LATENCY_HORIZON_S, _MIN_LATENCIES, _MAX_MARGIN = 500, 30.0, 50, 0.6
_TOLERANCE = 0.01  # J/image differences under 1% justify no wait
_EXPLORE = 0.02  # an untried size between two known ones is assumed 2% better than both
_BUSY, _CALM = 0.9, 0.7  # utilisation entering / leaving the throughput regime
_DEVIATIONS, _FIT_POINTS = 2.0, 3  # compute's allowance; sizes beyond follow the 3 largest ones' trend


@dataclass
class _Ewma:
    value: float
    dev: float = 0.0
    count: int = 1

    def add(self, x: float) -> None:
        alpha = max(_ALPHA, 1 / (self.count + 1))
        self.dev += alpha * (abs(x - self.value) - self.dev)
        self.value += alpha * (x - self.value)
        self.count += 1


@dataclass(frozen=True)
class _Table:
    """Estimates for sizes 1..cap (index 0 unused): mean and high compute time, energy per batch."""

    mean: list[float]
    high: list[float]
    energy: list[float | None]


def _values(table: Mapping[int, _Ewma], deviations: float = 0.0) -> dict[int, float]:
    return {size: e.value + deviations * e.dev for size, e in table.items()}


def _curve(points: Mapping[int, float], cap: int, *, time: bool) -> list[float | None]:
    """Times (``time``) or energies of sizes 0..cap from the known sizes' (the module docstring's rule)."""
    keys = sorted(points)
    if not keys:
        return [None] * (cap + 1)
    first, last, fit = keys[0], keys[-1], None
    if len(keys) >= 2:  # least squares a + b·n through the largest known sizes: the local trend
        near = keys[-_FIT_POINTS:]
        mx, my = sum(near) / len(near), sum(points[x] for x in near) / len(near)
        b = sum((x - mx) * (points[x] - my) for x in near) / sum((x - mx) ** 2 for x in near)
        fit = (my - b * mx, b)
    curve: list[float | None] = []
    for n in range(cap + 1):
        at = bisect.bisect_left(keys, n)
        if at < len(keys) and keys[at] == n:
            curve.append(points[n])
        elif at == 0:  # below the smallest known size
            curve.append(points[first] if time else points[first] * n / first)
        elif at < len(keys):
            lo, hi = keys[at - 1], keys[at]
            if time:
                curve.append(points[lo] + (points[hi] - points[lo]) * (n - lo) / (hi - lo))
            else:  # better than either neighbour's J/image: optimistic, so that the size gets tried
                curve.append(n * min(points[lo] / lo, points[hi] / hi) * (1 - _EXPLORE))
        elif time:
            grow = points[last] * n / last
            curve.append(grow if fit is None else max(grow, fit[0] + fit[1] * n))
        else:
            curve.append(None if fit is None else max(0.0, fit[0] + fit[1] * n))
    return curve


class _Learner:
    """What both policies learn: compute time and energy per size, the arrival rate, the observed p99."""

    def __init__(self, slo_p99_ms: float, max_batch_size: int, *, margin: float = 0.2) -> None:
        if not (math.isfinite(slo_p99_ms) and slo_p99_ms > 0):
            raise ValueError(f"slo_p99_ms must be a finite number > 0, got {slo_p99_ms}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not (0 <= margin < 1):
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        self.slo_s, self.max_batch_size, self.margin = slo_p99_ms / 1000, max_batch_size, margin
        self._compute: dict[int, _Ewma] = {}
        self._energy: dict[int, _Ewma] = {}
        self._version = 0
        self._cache: tuple[tuple[int, int], _Table | None] | None = None
        self._gap: float | None = None  # the mean inter-arrival gap, s
        self._last_arrival: float | None = None
        self._recent: deque[float] = deque(maxlen=_JUMP_GAPS)
        self._latencies: deque[tuple[float, float]] = deque(maxlen=_LATENCY_WINDOW)
        self._p99: float | None = math.nan  # None: to recompute
        self._regime = "learning"
        self._shown = (math.nan, math.nan, math.nan)  # target size, target wait, projected p99

    @property
    def regime(self) -> str:
        return self._regime

    def observe_arrival(self, at: float) -> None:
        if self._last_arrival is not None:
            gap = max(0.0, at - self._last_arrival)
            self._recent.append(gap)
            self._gap = gap if self._gap is None else self._gap + _RATE_ALPHA * (gap - self._gap)
            if len(self._recent) == _JUMP_GAPS:
                short = sum(self._recent) / _JUMP_GAPS
                if short * _JUMP_FACTOR < self._gap or short > _JUMP_FACTOR * self._gap:
                    self._gap = short  # a rate step: forget the old rate
        self._last_arrival = at if self._last_arrival is None else max(self._last_arrival, at)

    def observe_batch(self, size: int, started_at: float, compute_s: float, energy_j: float | None) -> None:
        if size < 1 or not (math.isfinite(compute_s) and compute_s >= 0):
            return
        # count 0: the first observation sets the value
        self._compute.setdefault(size, _Ewma(compute_s, count=0)).add(compute_s)
        if energy_j is not None and math.isfinite(energy_j) and energy_j >= 0:
            self._energy.setdefault(size, _Ewma(energy_j, count=0)).add(energy_j)
        self._version += 1

    def observe_latency(self, latency_s: float, at: float) -> None:
        if not math.isfinite(latency_s):
            return
        self._latencies.append((at, latency_s))
        while self._latencies and self._latencies[0][0] < at - _LATENCY_HORIZON_S:
            self._latencies.popleft()
        self._p99 = None

    def observed_p99_s(self) -> float:
        """The nearest-rank p99 of the recent answers (NaN with fewer than 50)."""
        if self._p99 is None:
            values = sorted(latency for _, latency in self._latencies)
            n = len(values)
            self._p99 = values[math.ceil(0.99 * n) - 1] if n >= _MIN_LATENCIES else math.nan
        return self._p99

    @property
    def margin_effective(self) -> float:
        """The margin, grown by how far the observed p99 passes (1 − margin/2) of the objective."""
        excess = (self.observed_p99_s() - self.slo_s * (1 - self.margin / 2)) / self.slo_s
        if not excess > 0:  # (NaN: unknown)
            return self.margin
        return max(self.margin, min(_MAX_MARGIN, self.margin + excess))

    def learned(self) -> dict[int, tuple[float, float]]:
        """Batch size → (compute s, energy J per batch; NaN: unknown) for the sizes seen or seeded."""
        return {
            size: (e.value, self._energy[size].value if size in self._energy else math.nan)
            for size, e in sorted(self._compute.items())
        }

    def estimate(self, size: int) -> tuple[float, float | None] | None:
        """The projected (mean compute s, energy J or None) of a batch of ``size`` (None: nothing known)."""
        compute = _curve(_values(self._compute), size, time=True)[size]
        return None if compute is None else (compute, _curve(_values(self._energy), size, time=False)[size])

    def _table(self, cap: int) -> _Table | None:
        if self._cache is None or self._cache[0] != (self._version, cap):
            table = None
            if self._compute:
                mean = [v or 0.0 for v in _curve(_values(self._compute), cap, time=True)]
                high = _curve(_values(self._compute, _DEVIATIONS), cap, time=True)
                energy = _curve(_values(self._energy), cap, time=False)
                table = _Table(mean, [max(h or 0.0, m) for h, m in zip(high, mean, strict=True)], energy)
            self._cache = ((self._version, cap), table)
        return self._cache[1]

    def _gap_at(self, now: float) -> float | None:
        """The expected time to the next arrival (None: unknown)."""
        if self._gap is None or self._last_arrival is None:
            return None
        return max(self._gap, now - self._last_arrival, _MIN_GAP_S)

    def _latest_wait(self, now: float, deadline: float, compute_s: float) -> float | None:
        """The last instant t ≥ now at which t + gap(t) + compute_s ≤ deadline (None: none)."""
        if self._gap is None or self._last_arrival is None:
            return None
        until = min(deadline - compute_s - self._gap, (deadline - compute_s + self._last_arrival) / 2)
        return until if until >= now else None

    def _show(self, table: _Table, target: int, budget: float, gap: float | None, busy: bool) -> None:
        fill = 0.0 if gap is None else (target - 1) * gap
        wait = max(0.0, min(budget - table.high[target], fill))
        self._shown = (float(target), wait, wait + table.high[target] + (table.mean[target] if busy else 0))

    def describe(self) -> dict[str, float]:
        gap = self._gap_at(self._last_arrival) if self._last_arrival is not None else None
        return {
            "target_batch_size": self._shown[0],
            "target_wait_seconds": self._shown[1],
            "projected_p99_seconds": self._shown[2],
            "observed_p99_seconds": self.observed_p99_s(),
            "arrival_rate_per_second": math.nan if gap is None else 1 / gap,
            "margin": self.margin_effective,
        }


class AdaptivePolicy(_Learner):
    """Energy-aware batching under a p99 objective (the module docstring has the rule)."""

    name = "adaptive"

    def __init__(
        self,
        slo_p99_ms: float,
        max_batch_size: int,
        *,
        margin: float = 0.2,
        seed: Mapping[int, tuple[float, float]] | None = None,
    ) -> None:
        super().__init__(slo_p99_ms, max_batch_size, margin=margin)
        for size, (compute_s, energy_j) in (seed or {}).items():
            if size < 1 or not (math.isfinite(compute_s) and compute_s > 0):
                raise ValueError(f"seed: batch size {size} has an unusable size or time ({compute_s} s)")
            self._compute[size] = _Ewma(compute_s)
            if math.isfinite(energy_j) and energy_j >= 0:
                self._energy[size] = _Ewma(energy_j)
        self._busy = False
        self._best: tuple[tuple[int, int, float], tuple[int, bool]] | None = None

    def _best_size(self, table: _Table, cap: int, budget: float) -> tuple[int, bool]:
        """(b*, whether the objective rather than energy limits it)."""
        key = (self._version, cap, budget)
        if self._best is None or self._best[0] != key:
            per_image = [(math.inf if e is None else e / n) for n, e in enumerate(table.energy) if n > 0]
            fits = [n for n in range(1, cap + 1) if table.high[n] <= budget] or [1]
            if any(table.energy[n] is None for n in fits):
                self._best = (key, (fits[-1], False))  # explore: unknown energy may be lower
            else:
                least = min(per_image[n - 1] for n in fits)
                best = next(n for n in fits if per_image[n - 1] <= least * (1 + _TOLERANCE))
                self._best = (key, (best, min(per_image) < per_image[best - 1] * (1 - _TOLERANCE)))
        return self._best[1]

    def _lowers(self, table: _Table, q: int, target: int, now: float, deadline: float, gap: float) -> bool:
        """Whether gathering some m in (q, target] in time lowers J/request by more than the tolerance."""
        here = table.energy[q]
        for m in range(q + 1, target + 1):
            if now + (m - q) * gap + table.high[m] > deadline:
                return False
            there = table.energy[m]
            if here is None or there is None or there / m < here / q * (1 - _TOLERANCE):
                return True
        return False

    def decide(self, view: QueueView) -> Decision:
        q, cap = view.queued, min(self.max_batch_size, view.max_batch_size)
        if q < 1:
            return Decision.wait(None)
        table = self._table(cap)
        if view.draining or table is None:
            self._regime = "learning" if table is None else self._regime
            return Decision.cut(min(q, cap))
        now, budget = view.now, self.slo_s * (1 - self.margin_effective)
        deadline, gap = view.oldest_enqueued_at + budget, self._gap_at(view.now)
        rate = 0.0 if gap is None else 1 / gap
        best, limited = self._best_size(table, cap, budget)
        self._busy = rate * table.mean[best] > (_CALM if self._busy else _BUSY) * best
        target = best
        if self._busy:
            target = next((n for n in range(best, cap + 1) if rate * table.mean[n] <= _BUSY * n), cap)
            self._regime = "throughput"
        else:
            fill = math.inf if gap is None else (best - 1) * gap + table.high[best]
            slack = 0.8 if self._regime == "latency-bound" else 1.0  # hysteresis: no flapping
            self._regime = "latency-bound" if limited or fill > slack * budget else "energy"
        self._show(table, target, budget, gap, self._busy)
        if self._busy and q >= target:
            return Decision.cut(min(q, cap))
        if not self._busy and q > best:
            clears = (s for s in range(best, cap + 1) if now + math.ceil(q / s) * table.high[s] <= deadline)
            return Decision.cut(min(q, next(clears, cap)))
        if q >= target:
            return Decision.cut(target)
        until = self._latest_wait(now, deadline, table.high[q + 1])
        worth = self._busy or (gap is not None and self._lowers(table, q, target, now, deadline, gap))
        return Decision.wait(until) if until is not None and worth else Decision.cut(q)


class LatencyAdaptivePolicy(_Learner):
    """BentoML-like: wait for more while the oldest item's projected completion meets the objective,
    whatever the energy; cut at the cap."""

    name = "latency-adaptive"

    def decide(self, view: QueueView) -> Decision:
        q, cap = view.queued, min(self.max_batch_size, view.max_batch_size)
        if q < 1:
            return Decision.wait(None)
        table = self._table(cap)
        self._regime = "learning" if table is None else "latency"
        if view.draining or table is None or q >= cap:
            return Decision.cut(min(q, cap))
        budget = self.slo_s * (1 - self.margin_effective)
        self._show(table, cap, budget, self._gap_at(view.now), False)
        until = self._latest_wait(view.now, view.oldest_enqueued_at + budget, table.high[q + 1])
        return Decision.cut(q) if until is None else Decision.wait(until)
