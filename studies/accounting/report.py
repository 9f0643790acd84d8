"""The energy accounting benchmark's table: the four figures of each source, side by side."""

from __future__ import annotations

import io
from collections.abc import Sequence

from studies.accounting.run import EnergyCheck


def render(checks: Sequence[EnergyCheck]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Energy accounting under steady closed-loop load (J/request attributed, idle excluded)"
    )
    for column in (
        "source",
        "requests",
        "0 J or null",
        "closure (Σ req + idle) ÷ device",
        "mean mJ/request",
        "truth mJ/request",
        "mean ÷ truth",
        "p99 ÷ p50 (batch size)",
        "parts mJ: model / decode / serving",
    ):
        table.add_column(column, justify="right")
    for c in checks:
        table.add_row(
            c.source,
            str(c.requests),
            str(c.zero_or_null),
            f"{c.closure:.4f}",
            f"{c.mean_j * 1000:.3f}",
            f"{c.truth_j * 1000:.3f}",
            f"{c.mean_vs_truth:.3f}",
            f"{c.p99_over_p50:.2f} ({c.batch_size})",
            " / ".join(f"{c.parts_mean_j[k] * 1000:.2f}" for k in ("model", "decode", "serving")),
        )
    console = Console(file=io.StringIO(), width=170, record=True)
    console.print(table)
    console.print(
        "truth: watts per core × the server's CPU seconds (/proc) ÷ requests — the source's own power "
        "model, idle excluded; synthetic reads through a 100 ms counter with 4 ms reads."
    )
    return console.export_text()
