"""The study's report, drawn from ``adaptive.csv`` and the run directories alone (``--report-only``
redraws it): ``summary.md`` (per model and trace, every policy's figures and the simulator's beside
them; the targets, each met or missed by how much), ``summary.json`` and ``summary_<model>.json``
(issue 14's shape), and one figure per model and trace."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loadgen.figures import amortised_label, attributed_label
from studies.adaptive.analysis import (
    check_targets,
    fallback_static,
    number,
    ok_rows,
    relative_error,
    static_best,
    summary_document,
)
from studies.adaptive.plots import plot_trace
from studies.adaptive.settings import STATIC, AdaptiveSettings
from studies.adaptive.table import read_rows
from studies.kit.files import write_json_atomic, write_text_atomic

Row = Mapping[str, Any]


def _fmt(value: Any, spec: str = ".4g") -> str:
    n = number(value)
    return "n/a" if n is None else format(n, spec)


def _error(predicted: Any, measured: Any) -> str:
    error = relative_error(number(predicted), number(measured))
    return "n/a" if error is None else f"{error:+.0%}"


def _trace_table(mine: Sequence[Row], best: Row | None, fallback: bool) -> list[str]:
    source = "/".join(sorted({r["energy_source"] for r in mine if r.get("energy_source")})) or "n/a"
    amortised = "/".join(
        sorted({r["amortised_energy_source"] for r in mine if r.get("amortised_energy_source")})
    )
    lines = [
        f"| policy | J/request ({source}, {attributed_label(source)}) | J/request "
        f"({amortised or 'n/a'}, {amortised_label(amortised or None)}) | p50 ms | p99 ms | windows over "
        "/ judged (at a step) | answered / sent | mean batch | sim p99 ms (error) | sim J/request (error) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(mine, key=lambda r: (r["kind"] == STATIC, number(r.get("j_per_request")) or 0.0))
    for r in order:
        mark = "**" if best is not None and r["key"] == best["key"] else ""
        name = f"{mark}{r['policy']}{mark}" + (" (static_best)" if mark and not fallback else "")
        sim_p99 = r.get("sim_latency_p99_ms")
        sim = (
            f"{_fmt(sim_p99)} ({_error(sim_p99, r['latency_p99_ms'])})"
            if number(r.get("sim_latency_p99_ms")) is not None
            else (r.get("sim_note") or "n/a")
        )
        sim_j = (
            f"{_fmt(r.get('sim_j_per_request'))} ({_error(r.get('sim_j_per_request'), r['j_per_request'])})"
            if number(r.get("sim_j_per_request")) is not None
            else "n/a"
        )
        lines.append(
            f"| {name} | {_fmt(r.get('j_per_request'))} | {_fmt(r.get('amortised_j_per_request'))} "
            f"| {_fmt(r.get('latency_p50_ms'))} | {_fmt(r.get('latency_p99_ms'))} "
            f"| {r['violation_windows']} / {r['windows']} ({r['step_violation_windows']}) "
            f"| {r['completed']} / {r['requests']} | {_fmt(r.get('mean_batch_size'), '.3g')} "
            f"| {sim} | {sim_j} |"
        )
    return [*lines, ""]


def _simulator_errors(rows: Sequence[Row]) -> list[str]:
    p99 = [
        e
        for r in rows
        if (e := relative_error(number(r.get("sim_latency_p99_ms")), number(r.get("latency_p99_ms"))))
        is not None
    ]
    joules = [
        e
        for r in rows
        if (e := relative_error(number(r.get("sim_j_per_request")), number(r.get("j_per_request"))))
        is not None
    ]
    if not p99 and not joules:
        notes = sorted({r["sim_note"] for r in rows if r.get("sim_note")})
        return ["The simulator was not run beside these runs" + (f": {'; '.join(notes)}." if notes else ".")]
    lines = [
        "The simulator (`loadgen.simulate`, the model's offline profile, no calibration) over the same "
        "traces and policies: median |error| (predicted ÷ measured − 1) "
        f"p99 {statistics.median(abs(e) for e in p99):.0%} over {len(p99)} runs, "
        if p99
        else "The simulator: no p99 predicted, ",
    ]
    lines[0] += (
        f"J/request {statistics.median(abs(e) for e in joules):.0%} over {len(joules)} runs."
        if joules
        else "no J/request predicted."
    )
    notes = sorted({r["sim_note"] for r in rows if r.get("sim_note")})
    if notes:
        lines.append(f"Not simulated: {'; '.join(notes)}.")
    return lines


def render_summary(rows: Sequence[Row], settings: AdaptiveSettings) -> str:
    """The Markdown summary: per model, a table per trace, the targets, the simulator's error."""
    slo = settings.slo_p99_ms
    lines = [
        "# Energy-aware adaptive batching under a p99 objective",
        "",
        f"Objective: p99 ≤ {slo:g} ms. Windows: {settings.window_s:g} s of arrival time, judged "
        f"with at least {settings.min_window_requests} requests; a failed request counts as over the "
        f"objective; a window with ≥ {settings.step_ratio:g}× its predecessor's arrivals is the first "
        "of a step (excepted by the adaptive target, still counted in the table). static_best: the "
        "lowest attributed J/request among the static configurations whose whole-run p99 meets the "
        "objective with every request answered 200, chosen in hindsight per trace. The simulator is "
        "uncalibrated (the offline profile alone): it leaves out what serving adds to each request.",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += [f"## {model}", ""]
        for trace in dict.fromkeys(r["trace"] for r in rows if r["model"] == model):
            mine = ok_rows(rows, model, trace)
            if not mine:
                continue
            best = static_best(mine, slo)
            shown = best or fallback_static(mine)
            lines += [f"### {trace}", ""]
            if best is None:
                lines.append(
                    f"No static configuration meets the objective on this trace; the lowest p99 is "
                    f"{shown['policy'] if shown else 'n/a'} (static_best in summary.json stands for it)."
                )
                lines.append("")
            lines += _trace_table(mine, shown, best is None)
        lines += ["### Targets", ""]
        for target in check_targets(rows, model=model, slo_p99_ms=slo):
            verdict = {True: "met", False: "**missed**", None: "not measurable"}[target.met]
            lines.append(f"- {target.name}: {verdict} — {target.detail}")
        lines.append("")
        lines += _simulator_errors([r for r in rows if r["model"] == model and r["status"] == "ok"])
        lines.append("")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["## Failed runs", ""]
        lines += [f"- {r['key']}: {r['status']}" for r in failed]
        lines.append("")
    return "\n".join(lines)


def write_report(csv_path: Path, out_dir: Path, settings: AdaptiveSettings) -> list[Path]:
    """``summary.md``, the summaries (``summary.json``: the first model's; ``summary_<model>.json``:
    each model's) and the figures, from the table and the run directories alone."""
    rows = read_rows(csv_path)
    outputs = [write_text_atomic(out_dir / "summary.md", render_summary(rows, settings))]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for index, model in enumerate(models):
        document = summary_document(rows, model=model, slo_p99_ms=settings.slo_p99_ms)
        if index == 0:
            outputs.append(write_json_atomic(out_dir / "summary.json", document))
        outputs.append(write_json_atomic(out_dir / f"summary_{model}.json", document))
        for trace in document["traces"]:
            mine = ok_rows(rows, model, trace)
            best = static_best(mine, settings.slo_p99_ms)
            outputs.append(
                plot_trace(
                    mine,
                    model=model,
                    trace=trace,
                    slo_p99_ms=settings.slo_p99_ms,
                    best_key=best["policy"] if best else None,
                    path=out_dir / f"{model}-{trace}.png",
                )
            )
    return outputs
