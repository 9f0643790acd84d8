"""The study's figure per model and trace, from its table and run directories alone: J/request against
p99 for every policy (left), and under the trace's arrival rate the adaptive policy's batch sizes over
time, from its request log (right)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from loadgen.figures import attributed_label
from studies.adaptive.analysis import number, read_batch_sizes
from studies.adaptive.settings import ADAPTIVE, LATENCY_ADAPTIVE, STATIC, TRITON_LIKE
from studies.kit.plots import save_figure_atomic

Row = Mapping[str, Any]
COLOURS = {ADAPTIVE: "tab:green", TRITON_LIKE: "tab:orange", LATENCY_ADAPTIVE: "tab:purple"}


def plot_trace(
    rows: Sequence[Row], *, model: str, trace: str, slo_p99_ms: float, best_key: str | None, path: Path
) -> Path:
    """``path``: the model's policies on one trace. ``best_key``: static_best's policy, circled."""
    fig = Figure(figsize=(12, 5), layout="constrained")
    axes = fig.subplot_mosaic([["energy", "rate"], ["energy", "batch"]], width_ratios=[1, 1.3])
    ax = axes["energy"]
    measured = [r for r in rows if number(r.get("latency_p99_ms")) and number(r.get("j_per_request"))]
    for row in measured:
        x, y = float(row["latency_p99_ms"]), float(row["j_per_request"])
        if row["kind"] == STATIC:
            ax.scatter([x], [y], color="0.6", s=20)
            ax.annotate(row["policy"][7:], (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        else:
            ax.scatter([x], [y], color=COLOURS[row["kind"]], s=60, marker="D", label=row["policy"], zorder=3)
        if row["policy"] == best_key:
            ax.scatter([x], [y], s=180, facecolors="none", edgecolors="tab:red", label="static_best")
    ax.scatter([], [], color="0.6", s=20, label="static configurations")
    ax.axvline(slo_p99_ms, color="tab:red", linestyle="--", linewidth=1, label=f"objective {slo_p99_ms:g} ms")
    if measured:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short range
    source = "/".join(sorted({r["energy_source"] for r in measured if r.get("energy_source")})) or "no source"
    ax.set_xlabel("p99 latency (ms, from the scheduled start)")
    ax.set_ylabel(f"J/request ({source}, {attributed_label(source)})")
    ax.set_title(f"{model}, {trace}")
    ax.legend(fontsize=7)
    _draw_rate(axes["rate"], rows)
    _draw_batches(axes["batch"], rows)
    axes["rate"].sharex(axes["batch"])
    return save_figure_atomic(fig, path)


def _draw_rate(ax: Any, rows: Sequence[Row]) -> None:
    """The trace's arrival rate in 1 s windows."""
    from loadgen.trace import read_trace, window_rates

    trace_file = next((r["trace_file"] for r in rows if r.get("trace_file")), None)
    if trace_file and Path(trace_file).exists():
        rates = window_rates(read_trace(Path(trace_file)), 1.0)
        ax.step(range(len(rates)), rates, where="post", color="tab:blue")
    ax.set_ylabel("arrivals (req/s)")
    ax.set_title("arrival rate, and the adaptive policy's batches", fontsize=9)


def _draw_batches(ax: Any, rows: Sequence[Row]) -> None:
    """Each answered request's batch size at its end time, adaptive (and latency-adaptive, fainter)."""
    for kind, alpha in ((LATENCY_ADAPTIVE, 0.25), (ADAPTIVE, 0.8)):
        row = next((r for r in rows if r["kind"] == kind and r["status"] == "ok"), None)
        log = Path(row["run_dir"]) / "requests.csv" if row else None
        if log is None or not log.exists():
            continue
        points = read_batch_sizes(log)
        ax.scatter(
            [t for t, _ in points], [b for _, b in points], s=6, alpha=alpha, color=COLOURS[kind], label=kind
        )
    ax.set_xlabel("time (s from the trace's start; batches at their answer)")
    ax.set_ylabel("batch size")
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no request log", transform=ax.transAxes, ha="center", color="0.5")
