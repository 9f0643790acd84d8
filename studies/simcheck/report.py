"""The simulator check's report, from ``report.json``'s content alone: the table of measured vs simulated
figures per configuration, and :func:`summarize` (pure) over the validated ones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def render(report: dict[str, Any], console: Console) -> None:
    sources = sorted({c["measured"]["energy_source"] for c in report["comparisons"]})
    table = Table(
        title=f"simulator vs sweep (target ±{report['tolerance']:.0%}); energy source: {', '.join(sources)}"
    )
    for column in (
        "trace",
        "configuration",
        "p99 ms meas/sim",
        "err",
        "J/req meas/sim",
        "err",
        "batch meas/sim",
    ):
        table.add_column(column, justify="right" if column != "configuration" else "left")
    for item in report["comparisons"]:
        m, p = item["measured"], item["predicted"]
        ok = "green" if item["within_tolerance"] else "red"
        table.add_row(
            item["trace"],
            item["key"] + (" (calibration)" if item["calibration_run"] else ""),
            f"{m['latency_p99_ms']:.0f} / {p['latency_p99_ms']:.0f}",
            f"[{ok}]{_pct(item['p99_error'])}[/]",
            f"{m['j_per_request']:.3g} / {p['j_per_request']:.3g}",
            f"[{ok}]{_pct(item['j_error'])}[/]",
            f"{m['mean_batch_size'] or float('nan'):.1f} / {p['mean_batch_size'] or float('nan'):.1f}",
        )
    console.print(table)
    s = report["summary"]
    console.print(
        f"{s['within']} of {s['count']} validated configurations (calibration runs excluded) "
        f"within ±{report['tolerance']:.0%} on both; "
        f"mean |error| p99 {s['mean_abs_p99_error']:.1%}, J/request {s['mean_abs_j_error']:.1%}; "
        f"max |error| p99 {s['max_abs_p99_error']:.1%}, J/request {s['max_abs_j_error']:.1%}"
    )


def summarize(comparisons: Sequence[dict[str, Any]]) -> dict[str, Any]:
    comparisons = [c for c in comparisons if not c["calibration_run"]]
    p99 = [abs(c["p99_error"]) for c in comparisons if c["p99_error"] is not None]
    joules = [abs(c["j_error"]) for c in comparisons if c["j_error"] is not None]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else math.nan

    return {
        "count": len(comparisons),
        "within": sum(1 for c in comparisons if c["within_tolerance"]),
        "mean_abs_p99_error": mean(p99),
        "mean_abs_j_error": mean(joules),
        "max_abs_p99_error": max(p99, default=math.nan),
        "max_abs_j_error": max(joules, default=math.nan),
    }
