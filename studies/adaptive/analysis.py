"""The study's analysis, pure functions of its table and request logs: the violation windows of one
run, the best static configuration chosen in hindsight, ``summary.json``'s document and the targets
of issue 14, each with the margin by which it is met or missed."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from studies.adaptive.settings import ADAPTIVE, LATENCY_ADAPTIVE, STATIC, TRITON_LIKE

#: A request that was not answered 200 counts as this late in its window's p99: later than any objective.
FAILED_MS = 1e12
#: The targets (issue 14).
ADAPTIVE_VS_BEST = 1.05  # adaptive J/request ≤ 1.05 × static_best, on every trace
ONE_SETTING = 1.15  # no static configuration within 1.15 × static_best on every trace
DIURNAL_VS_BASELINES = 0.90  # diurnal: adaptive ≤ 0.90 × triton_like and latency_adaptive
STATIC_BEST = "static_best"
SUMMARY_POLICIES = (ADAPTIVE, STATIC_BEST, TRITON_LIKE, LATENCY_ADAPTIVE)

Row = Mapping[str, Any]


def number(value: Any) -> float | None:
    """A cell as a number; None for an empty or absent one."""
    if value is None or value == "":
        return None
    return float(value)


@dataclass(frozen=True)
class WindowStats:
    """One run's windows: those judged (at least the minimum of requests), those whose p99 exceeded
    the objective, and how many of those were the first window of a step up in the arrival rate."""

    windows: int
    violations: int
    step_violations: int
    p99_ms: tuple[float, ...]  # each judged window's p99 (FAILED_MS where it is a failure)
    starts_s: tuple[float, ...]  # each judged window's start

    @property
    def violations_after_steps(self) -> int:
        """Violations outside the first window of a step: what the adaptive target counts."""
        return self.violations - self.step_violations


def violation_windows(
    requests: Sequence[tuple[float, float | None]],
    *,
    window_s: float,
    slo_p99_ms: float,
    min_requests: int,
    step_ratio: float,
) -> WindowStats:
    """Windows ``[k·w, (k+1)·w)`` of the requests' *arrival* (scheduled) times ``(arrival_s,
    latency_ms or None)``; None is a request not answered 200, which counts as later than any
    objective. A window with fewer than ``min_requests`` requests is not judged; a judged one is a
    violation when its p99 (numpy's linear interpolation, as every p99 of the lab) exceeds
    ``slo_p99_ms``. A window is the first of a step when it holds at least ``step_ratio`` × the
    arrivals of the window before it and that one was not itself a step."""
    if not requests:
        return WindowStats(0, 0, 0, (), ())
    count = int(max(arrival for arrival, _ in requests) // window_s) + 1
    latencies: list[list[float]] = [[] for _ in range(count)]
    for arrival, latency in requests:
        latencies[int(arrival // window_s)].append(FAILED_MS if latency is None else latency)
    steps = [False] * count
    for k in range(1, count):
        previous = len(latencies[k - 1])
        steps[k] = not steps[k - 1] and len(latencies[k]) >= step_ratio * max(previous, 1)
    p99s, starts = [], []
    violations = step_violations = 0
    for k, values in enumerate(latencies):
        if len(values) < min_requests:
            continue
        p99 = float(np.percentile(np.asarray(values, dtype=np.float64), 99))
        p99s.append(p99)
        starts.append(k * window_s)
        if p99 > slo_p99_ms:
            violations += 1
            step_violations += steps[k]
    return WindowStats(len(p99s), violations, step_violations, tuple(p99s), tuple(starts))


def read_request_log(path: Path) -> list[tuple[float, float | None]]:
    """``(scheduled_s, latency_ms)`` of every request in a load test's ``requests.csv`` (latency None
    unless it was answered 200)."""
    with path.open(newline="", encoding="utf-8") as f:
        return [
            (
                float(row["scheduled_s"]),
                float(row["latency_ms"]) if row["status"] == "200" and row["latency_ms"] else None,
            )
            for row in csv.DictReader(f)
            if row["scheduled_s"]
        ]


def read_batch_sizes(path: Path) -> list[tuple[float, int]]:
    """``(end_s, batch_size)`` of every request answered 200, by end time: the batches over time."""
    with path.open(newline="", encoding="utf-8") as f:
        points = [
            (float(row["end_s"]), int(float(row["batch_size"])))
            for row in csv.DictReader(f)
            if row["status"] == "200" and row["end_s"] and row["batch_size"]
        ]
    return sorted(points)


def ok_rows(rows: Sequence[Row], model: str, trace: str) -> list[Row]:
    return [r for r in rows if r["status"] == "ok" and r["model"] == model and r["trace"] == trace]


def meets_objective(row: Row, slo_p99_ms: float) -> bool:
    """The run's p99 is within the objective and every request was answered 200."""
    p99 = number(row.get("latency_p99_ms"))
    return (
        p99 is not None
        and p99 <= slo_p99_ms
        and int(float(row["rejected"])) == 0
        and int(float(row["errors"])) == 0
        and number(row.get("j_per_request")) is not None
    )


def static_best(rows: Sequence[Row], slo_p99_ms: float) -> Row | None:
    """Among one trace's static grid rows, the lowest attributed J/request meeting the objective
    (ties: the lower p99) — chosen in hindsight; None when none meets it."""
    eligible = [r for r in rows if r["kind"] == STATIC and meets_objective(r, slo_p99_ms)]
    if not eligible:
        return None
    return min(eligible, key=lambda r: (float(r["j_per_request"]), float(r["latency_p99_ms"])))


def fallback_static(rows: Sequence[Row]) -> Row | None:
    """When no static configuration meets the objective: the one with the lowest p99."""
    measured = [r for r in rows if r["kind"] == STATIC and number(r.get("latency_p99_ms")) is not None]
    return min(measured, key=lambda r: float(r["latency_p99_ms"])) if measured else None


def _entry(row: Row) -> dict[str, Any]:
    """A policy's figures in ``summary.json``'s shape."""
    return {
        "j_per_request": number(row.get("j_per_request")),
        "p99_ms": number(row.get("latency_p99_ms")),
        "violation_windows": int(float(row["violation_windows"])),
        "windows": int(float(row["windows"])),
        "requests": int(float(row["completed"])),
    }


def summary_document(rows: Sequence[Row], *, model: str, slo_p99_ms: float) -> dict[str, Any]:
    """``summary.json`` for ``model``: ``{"slo_p99_ms", "model", "energy_source", "traces": {TRACE:
    {POLICY: {"j_per_request", "p99_ms", "violation_windows", "windows", "requests"}}}}`` with
    POLICY: ``adaptive``, ``static_best``, ``triton_like``, ``latency_adaptive`` (each where
    measured) and every static configuration by its key. ``static_best`` is the hindsight choice,
    or, when no static configuration meets the objective, the one with the lowest p99."""
    traces: dict[str, dict[str, Any]] = {}
    sources: set[str] = set()
    for trace in dict.fromkeys(r["trace"] for r in rows if r["model"] == model):
        mine = ok_rows(rows, model, trace)
        sources |= {r["energy_source"] for r in mine if r.get("energy_source")}
        entries = {r["policy"]: _entry(r) for r in mine}
        best = static_best(mine, slo_p99_ms) or fallback_static(mine)
        if best is not None:
            entries[STATIC_BEST] = _entry(best)
        named = {p: entries[p] for p in SUMMARY_POLICIES if p in entries}
        traces[trace] = {**named, **{k: v for k, v in entries.items() if k not in named}}
    return {
        "slo_p99_ms": slo_p99_ms,
        "model": model,
        "energy_source": "/".join(sorted(sources)) or None,
        "traces": traces,
    }


@dataclass(frozen=True)
class Target:
    """One target's verdict: ``met`` (None: not measurable here), and the figures in words."""

    name: str
    met: bool | None
    detail: str


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def check_targets(rows: Sequence[Row], *, model: str, slo_p99_ms: float) -> list[Target]:
    """Issue 14's targets for ``model``'s rows, each saying by how much it is met or missed."""
    targets: list[Target] = []
    by_trace = {t: ok_rows(rows, model, t) for t in dict.fromkeys(r["trace"] for r in rows)}
    by_trace = {t: mine for t, mine in by_trace.items() if mine}
    bests = {t: static_best(mine, slo_p99_ms) for t, mine in by_trace.items()}
    for trace, mine in by_trace.items():
        adaptive = next((r for r in mine if r["kind"] == ADAPTIVE), None)
        if adaptive is None:
            targets.append(Target(f"{trace}: adaptive", None, "the adaptive run is missing"))
            continue
        after = int(float(adaptive["violation_windows"])) - int(float(adaptive["step_violation_windows"]))
        targets.append(
            Target(
                f"{trace}: adaptive has 0 windows over the objective (the first of a step excepted)",
                after == 0,
                f"{after} window(s) over {slo_p99_ms:g} ms of {adaptive['windows']} judged "
                f"({adaptive['step_violation_windows']} more at the start of a step, excepted)",
            )
        )
        best = bests[trace]
        ratio = _ratio(number(adaptive.get("j_per_request")), number(best["j_per_request"]) if best else None)
        if best is None or ratio is None:
            targets.append(
                Target(
                    f"{trace}: adaptive J/request ≤ {ADAPTIVE_VS_BEST}× static_best",
                    None,
                    "no static configuration meets the objective: there is no static_best",
                )
            )
        else:
            targets.append(
                Target(
                    f"{trace}: adaptive J/request ≤ {ADAPTIVE_VS_BEST}× static_best",
                    ratio <= ADAPTIVE_VS_BEST,
                    f"{ratio:.3f}× static_best ({best['policy']}): " + _margin(ratio, ADAPTIVE_VS_BEST),
                )
            )
    targets.append(_one_setting(by_trace, bests, slo_p99_ms))
    if "diurnal" in by_trace:
        mine = by_trace["diurnal"]
        adaptive = next((r for r in mine if r["kind"] == ADAPTIVE), None)
        for baseline in (TRITON_LIKE, LATENCY_ADAPTIVE):
            other = next((r for r in mine if r["kind"] == baseline), None)
            name = f"diurnal: adaptive J/request ≤ {DIURNAL_VS_BASELINES}× {baseline}"
            ratio = _ratio(
                number(adaptive.get("j_per_request")) if adaptive else None,
                number(other.get("j_per_request")) if other else None,
            )
            if ratio is None:
                targets.append(Target(name, None, "a run is missing"))
            else:
                targets.append(
                    Target(
                        name,
                        ratio <= DIURNAL_VS_BASELINES,
                        f"{ratio:.3f}× {baseline}: " + _margin(ratio, DIURNAL_VS_BASELINES),
                    )
                )
    return targets


def _margin(value: float, limit: float) -> str:
    if value <= limit:
        return f"met, {limit - value:.3f} under the limit"
    return f"missed by {value - limit:.3f} ({value / limit - 1:.1%} over the limit)"


def _one_setting(
    by_trace: Mapping[str, Sequence[Row]], bests: Mapping[str, Row | None], slo_p99_ms: float
) -> Target:
    """No single static configuration is within ONE_SETTING × static_best on every trace while
    meeting the objective on every trace (else adaptivity buys nothing a fixed setting does not)."""
    name = (
        f"no single static configuration is within {ONE_SETTING}× of static_best on every trace "
        "while meeting the objective"
    )
    if not by_trace or any(b is None for b in bests.values()):
        return Target(name, None, "some trace has no static_best")
    worst: dict[str, float] = {}
    for trace, mine in by_trace.items():
        best = bests[trace]
        assert best is not None
        for row in mine:
            if row["kind"] != STATIC:
                continue
            ratio = float(row["j_per_request"]) / float(best["j_per_request"])
            value = ratio if meets_objective(row, slo_p99_ms) else math.inf
            worst[row["policy"]] = max(worst.get(row["policy"], 0.0), value)
    for policy in list(worst):
        if any(policy not in {r["policy"] for r in mine} for mine in by_trace.values()):
            worst[policy] = math.inf  # not measured on every trace
    if not worst:
        return Target(name, None, "no static configuration was measured")
    closest = min(worst, key=lambda p: worst[p])
    value = worst[closest]
    if math.isinf(value):
        return Target(name, True, "no static configuration meets the objective on every trace")
    met = value > ONE_SETTING
    detail = f"the closest, {closest}, is {value:.3f}× static_best on its worst trace: " + (
        f"met, {value - ONE_SETTING:.3f} beyond {ONE_SETTING}×"
        if met
        else f"missed: it is within {ONE_SETTING}× everywhere ({ONE_SETTING - value:.3f} to spare), so one "
        "fixed setting serves every trace"
    )
    return Target(name, met, detail)


def relative_error(predicted: float | None, measured: float | None) -> float | None:
    """predicted ÷ measured − 1 (None where either is missing or the measurement is 0)."""
    if predicted is None or measured is None or measured == 0:
        return None
    return predicted / measured - 1.0
