"""Trace generators: each a pure function of its parameters and ``seed`` (numpy's ``default_rng``), so a
trace named in a study's table can be re-created exactly. Every one returns the arrivals in
[0, duration_s), sorted. The nonhomogeneous ones (ramp, diurnal) use Lewis–Shedler thinning: a
homogeneous Poisson process at the highest rate, each arrival kept with probability
rate(t) / highest rate, which is exact for any bounded rate function. The formulas are in
``docs/traces.md``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from loadgen.errors import TraceError
from loadgen.trace.arrivals import Times, Trace, check_number, check_size


def _rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TraceError(f"seed must be an integer ≥ 0, got {seed!r}")
    return np.random.default_rng(seed)


def _homogeneous(rate: float, duration_s: float, rng: np.random.Generator) -> Times:
    """A Poisson process of ``rate`` (req/s) on [0, duration_s): cumulative exponential gaps.

    Gaps are drawn in chunks sized to cover the duration with high probability, and more are
    drawn in the rare case they fall short, so the result is exact rather than truncated.
    """
    if rate <= 0:
        return np.empty(0)
    expected = rate * duration_s
    chunk = int(expected + 6 * math.sqrt(expected) + 16)
    parts = [np.cumsum(rng.exponential(1.0 / rate, chunk))]
    while parts[-1][-1] < duration_s:
        parts.append(parts[-1][-1] + np.cumsum(rng.exponential(1.0 / rate, chunk)))
    times = np.concatenate(parts)
    return times[times < duration_s]


def _thinned(
    rate_at: Callable[[Times], Times], rate_max: float, duration_s: float, rng: np.random.Generator
) -> Times:
    """A nonhomogeneous Poisson process with rate ``rate_at(t)`` ≤ ``rate_max`` (thinning)."""
    candidates = _homogeneous(rate_max, duration_s, rng)
    keep = rng.random(candidates.size) * rate_max < rate_at(candidates)
    return candidates[keep]


def _trace(times: Times, duration_s: float, expected: float, kind: str) -> Trace:
    times = np.sort(times[(times >= 0) & (times < duration_s)])
    if times.size == 0:
        raise TraceError(
            f"the {kind} trace has no arrivals (about {expected:.3g} expected); "
            "raise the rate or the duration, or try another seed"
        )
    return Trace(tuple(times.tolist()))


def poisson(rate: float, duration_s: float, seed: int = 0) -> Trace:
    """Poisson arrivals: independent exponential inter-arrival times of mean ``1 / rate``.

    The memoryless baseline of queueing theory (M/·/· queues): the inter-arrival coefficient of
    variation is 1, and the number of arrivals in any window of length w is Poisson(rate × w).
    """
    rate = check_number("rate", rate, unit="req/s")
    duration_s = check_number("duration_s", duration_s, unit="s")
    check_size(rate * duration_s)
    return _trace(_homogeneous(rate, duration_s, _rng(seed)), duration_s, rate * duration_s, "poisson")


def uniform_jitter(rate: float, jitter: float, duration_s: float, seed: int = 0) -> Trace:
    """Nearly periodic arrivals: the first at 0, then gaps uniform in [(1 − jitter)/rate, (1 + jitter)/rate].

    The study's load (16 req/s ± 20 %: ``rate=16, jitter=0.2``): a steady client whose sending is
    slightly irregular. ``jitter=0`` is exactly periodic; the gap CV is jitter / √3.
    """
    rate = check_number("rate", rate, unit="req/s")
    jitter = check_number("jitter", jitter, strict=False)
    if jitter >= 1:
        raise TraceError(f"jitter must be in [0, 1) (a fraction of the period), got {jitter!r}")
    duration_s = check_number("duration_s", duration_s, unit="s")
    period_s = 1.0 / rate
    count = int(duration_s / (period_s * (1 - jitter))) + 1  # gaps enough even if all are shortest
    check_size(count)
    rng = _rng(seed)
    gaps = rng.uniform(period_s * (1 - jitter), period_s * (1 + jitter), count)
    times = np.concatenate(([0.0], np.cumsum(gaps)))
    return _trace(times, duration_s, rate * duration_s, "uniform-jitter")


def bursty_mean_rate(rate_on: float, rate_off: float, mean_on_s: float, mean_off_s: float) -> float:
    """The long-run mean rate of :func:`bursty`: the state rates weighted by the time in each state."""
    return (rate_on * mean_on_s + rate_off * mean_off_s) / (mean_on_s + mean_off_s)


def bursty(
    rate_on: float,
    rate_off: float,
    mean_on_s: float,
    mean_off_s: float,
    duration_s: float,
    seed: int = 0,
) -> Trace:
    """On/off bursts: a two-state Markov-modulated Poisson process (MMPP-2).

    The source alternates between an *on* state (Poisson arrivals at ``rate_on``) and an *off*
    state (``rate_off``, which may be 0), staying in each for an exponential time of mean
    ``mean_on_s`` / ``mean_off_s``. The first state is on with probability mean_on / (mean_on +
    mean_off), and exponential holding times are memoryless, so the process is stationary from
    t = 0: its mean rate is :func:`bursty_mean_rate` over any window, and its inter-arrival CV is
    above 1 whenever the two rates differ — what makes a batcher's queue grow in bursts.
    """
    rate_on = check_number("rate_on", rate_on, unit="req/s")
    rate_off = check_number("rate_off", rate_off, strict=False, unit="req/s")
    mean_on_s = check_number("mean_on_s", mean_on_s, unit="s")
    mean_off_s = check_number("mean_off_s", mean_off_s, unit="s")
    duration_s = check_number("duration_s", duration_s, unit="s")
    check_size(max(rate_on, rate_off) * duration_s)
    check_size(2 * duration_s / (mean_on_s + mean_off_s), "on/off periods")
    rng = _rng(seed)
    first_on = bool(rng.random() < mean_on_s / (mean_on_s + mean_off_s))
    first, second = ((mean_on_s, rate_on), (mean_off_s, rate_off))[:: 1 if first_on else -1]
    # State periods alternate first, second, first, …: draw them in chunks until they cover the run.
    pairs = int(duration_s / (mean_on_s + mean_off_s)) + 8
    means = np.tile([first[0], second[0]], pairs)
    lengths = [rng.exponential(1.0, means.size) * means]
    while np.sum([part.sum() for part in lengths]) < duration_s:
        lengths.append(rng.exponential(1.0, means.size) * means)
    length = np.concatenate(lengths)
    ends = np.cumsum(length)
    starts = ends - length
    inside = starts < duration_s
    starts, spans = starts[inside], np.minimum(ends[inside], duration_s) - starts[inside]
    rates = np.resize(np.array([first[1], second[1]]), starts.size)
    # Given the number of Poisson arrivals in a period, their times are independent and uniform.
    counts = rng.poisson(rates * spans)
    times = np.repeat(starts, counts) + rng.random(int(counts.sum())) * np.repeat(spans, counts)
    expected = bursty_mean_rate(rate_on, rate_off, mean_on_s, mean_off_s) * duration_s
    return _trace(times, duration_s, expected, "bursty")


def ramp(start_rate: float, end_rate: float, duration_s: float, seed: int = 0) -> Trace:
    """Poisson arrivals whose rate changes linearly from ``start_rate`` at 0 to ``end_rate`` at the end.

    rate(t) = start + (end − start) · t / duration; either end may be 0 (not both). Finds the load at
    which a configuration starts to queue, in one run.
    """
    start_rate = check_number("start_rate", start_rate, strict=False, unit="req/s")
    end_rate = check_number("end_rate", end_rate, strict=False, unit="req/s")
    duration_s = check_number("duration_s", duration_s, unit="s")
    rate_max = max(start_rate, end_rate)
    if rate_max == 0:
        raise TraceError("start_rate and end_rate are both 0: the ramp has no arrivals")
    check_size(rate_max * duration_s)
    slope = (end_rate - start_rate) / duration_s

    def rate_at(t: Times) -> Times:
        return start_rate + slope * t

    times = _thinned(rate_at, rate_max, duration_s, _rng(seed))
    return _trace(times, duration_s, (start_rate + end_rate) / 2 * duration_s, "ramp")


def step(rates: Sequence[float], step_s: float, seed: int = 0) -> Trace:
    """Poisson arrivals at ``rates[0]`` for ``step_s`` seconds, then ``rates[1]``, …

    Piecewise-constant load, the Locust "shape" of stages as data: the duration is
    ``len(rates) × step_s``. A rate may be 0 (a pause), not all of them.
    """
    if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence) or not rates:
        raise TraceError(f"rates must be a non-empty list of rates (req/s), got {rates!r}")
    checked = [check_number(f"rates[{i}]", r, strict=False, unit="req/s") for i, r in enumerate(rates)]
    step_s = check_number("step_s", step_s, unit="s")
    if max(checked) == 0:
        raise TraceError("every rate is 0: the step trace has no arrivals")
    check_size(max(checked) * step_s * len(checked))
    rng = _rng(seed)
    duration_s = step_s * len(checked)
    parts = [index * step_s + _homogeneous(rate, step_s, rng) for index, rate in enumerate(checked)]
    return _trace(np.concatenate(parts), duration_s, sum(checked) * step_s, "step")


def diurnal(
    mean_rate: float, peak_to_trough: float, period_s: float, duration_s: float, seed: int = 0
) -> Trace:
    """A day's traffic compressed into ``period_s``: a sinusoidal rate, trough at 0, peak at period/2.

    rate(t) = mean_rate · (1 − a · cos(2πt / period)) with a = (r − 1) / (r + 1) for
    ``peak_to_trough`` = r ≥ 1, so the peak is mean · (1 + a), the trough mean · (1 − a), and their
    ratio r. Over whole periods the mean rate is ``mean_rate``.
    """
    mean_rate = check_number("mean_rate", mean_rate, unit="req/s")
    peak_to_trough = check_number("peak_to_trough", peak_to_trough, minimum=1.0, strict=False)
    period_s = check_number("period_s", period_s, unit="s")
    duration_s = check_number("duration_s", duration_s, unit="s")
    amplitude = (peak_to_trough - 1) / (peak_to_trough + 1)
    rate_max = mean_rate * (1 + amplitude)
    check_size(rate_max * duration_s)

    def rate_at(t: Times) -> Times:
        return mean_rate * (1 - amplitude * np.cos(2 * np.pi * t / period_s))

    times = _thinned(rate_at, rate_max, duration_s, _rng(seed))
    return _trace(times, duration_s, mean_rate * duration_s, "diurnal")
