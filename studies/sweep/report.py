"""The sweep's report, drawn from ``sweep.csv`` alone (``greenserve sweep --report-only`` redraws it):
``summary.md`` (a table per model, the Pareto front, the recommendation) and the figures of
:mod:`studies.sweep.plots`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from loadgen.figures import amortised_label, attributed_label
from studies.kit.files import write_text_atomic
from studies.sweep.plots import amortised_axis, attributed_axis, plot_energy_vs_batch, plot_pareto
from studies.sweep.points import SAME_BATCHES, Point, pareto, points_from_rows, recommend, same_batches
from studies.sweep.table import read_rows


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def _preamble(rows: Sequence[Mapping[str, str]], points: Sequence[Point], p99_target_ms: float) -> list[str]:
    """The title, the trace, the target, the energy sources, and what the two J/request figures are."""
    sources = sorted({p.energy_source for p in points})
    lines = ["# Batch-configuration sweep", ""]
    traces = sorted({row["trace"] for row in rows})
    lines.append(
        f"Trace: {', '.join(traces)}; p99 target: {p99_target_ms:g} ms; energy source: {', '.join(sources)}."
    )
    parts = {part for source in sources for part in source.split("+")}
    if "estimate" in parts:
        lines.append(
            "Energy is an *estimate* (no sensor here): CPU time × watts per core, see docs/energy.md."
        )
    if "synthetic" in parts:
        lines.append("Energy is *synthetic* (a known-truth test source), not a measurement of this machine.")
    lines.append("")
    lines.append(
        f"Two J/request figures: **attributed** ({attributed_axis(points)}) is the energy the server "
        "charged to the requests answered 200 (their batches' model share, decode and serving), what "
        "the recommendation ranks; **amortised** ("
        + (amortised_axis(points) if any(p.amortised_j_per_request is not None for p in points) else "n/a")
        + ") is every device's energy over the run ÷ those requests, the operator's bill."
    )
    lines.append("")
    return lines


def _model_table(mine: Sequence[Point], best: Point | None) -> list[str]:
    """A model's configurations by attributed J/request, the recommendation in bold."""
    front = {p.key for p in pareto(mine)}
    lines = [
        f"| configuration | {attributed_axis(mine)} | {amortised_axis(mine)} | p99 ms "
        "| throughput req/s | mean batch | rejected | errors | Pareto |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(mine, key=lambda p: p.j_per_request):
        mark = "**" if best is not None and p.key == best.key else ""
        lines.append(
            f"| {mark}{p.label}{mark} | {p.j_per_request:.4g} | {_fmt(p.amortised_j_per_request, '.4g')} "
            f"| {p.p99_ms:.4g} | {p.throughput_rps:.3g} | "
            f"{_fmt(p.mean_batch_size)} | {p.rejected} | {p.errors} | {'yes' if p.key in front else ''} |"
        )
    lines.append("")
    return lines


def _recommendation(mine: Sequence[Point], best: Point | None, p99_target_ms: float) -> list[str]:
    if best is None:
        fastest = min(mine, key=lambda p: p.p99_ms)
        return [
            f"No configuration meets p99 ≤ {p99_target_ms:g} ms without rejections; the lowest p99 is "
            f"{fastest.label} ({fastest.p99_ms:.4g} ms, {fastest.j_per_request:.4g} J/request, "
            f"{fastest.energy_source}, {attributed_label(fastest.energy_source)})."
        ]
    amortised = (
        f"; amortised {best.amortised_j_per_request:.4g} J/request ({best.amortised_energy_source}, "
        f"{amortised_label(best.amortised_energy_source)})"
        if best.amortised_j_per_request is not None
        else ""
    )
    lines = [
        f"Recommendation: **{best.label}** — {best.j_per_request:.4g} J/request "
        f"({best.energy_source}, {attributed_label(best.energy_source)}) "
        f"at p99 {best.p99_ms:.4g} ms, the lowest energy meeting the target{amortised}."
    ]
    twins = same_batches(best, mine)
    if twins:
        gaps = ", ".join(f"{p.j_per_request / best.j_per_request - 1:+.0%}" for p in twins)
        lines.append(
            f"{', '.join(p.label for p in twins)} formed the same batches (mean batch within "
            f"{SAME_BATCHES:.0%}): their J/request differs from it by {gaps}, which is run-to-run "
            "noise, not a property of the setting; among them, the smallest cap bounds memory best."
        )
    return lines


def render_summary(rows: Sequence[Mapping[str, str]], p99_target_ms: float) -> str:
    """The Markdown summary: a table per model (by J/request), the front and the recommendation."""
    points = points_from_rows(rows)
    lines = _preamble(rows, points, p99_target_ms)
    for model in sorted({p.model for p in points}):
        mine = [p for p in points if p.model == model]
        best = recommend(mine, p99_target_ms)
        lines += [f"## {model}", ""]
        lines += _model_table(mine, best)
        lines += _recommendation(mine, best, p99_target_ms)
        lines.append("")
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        lines += ["## Failed configurations", ""]
        lines += [f"- {row['key']}: {row['status']}" for row in failed]
        lines.append("")
    return "\n".join(lines)


def write_report(csv_path: Path, out_dir: Path, *, p99_target_ms: float) -> list[Path]:
    """``summary.md`` and the plots, from the CSV alone."""
    rows = read_rows(csv_path)
    points = points_from_rows(rows)
    outputs = [write_text_atomic(out_dir / "summary.md", render_summary(rows, p99_target_ms))]
    if points:
        outputs.append(plot_pareto(points, out_dir / "pareto.png", p99_target_ms))
        outputs.append(plot_energy_vs_batch(points, out_dir / "energy-vs-batch.png"))
    return outputs
