"""The ablation's report, drawn from ``ablation_runs.csv`` alone: a markdown summary, the
statistics as CSV and JSON, and box plots (:func:`ablation_report`). A finished or half-finished
study can be redrawn at any time without re-running it (``greenserve train report``).

The statistics are :mod:`trainer.ablation.stats`'; figures, atomic writes and box plots come from
:mod:`studies.kit`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from studies.kit.files import write_csv_atomic, write_json_atomic, write_text_atomic
from studies.kit.plots import box_plot, new_figure, save_figure_atomic
from trainer.ablation.stats import ABLATION_FACTORS, Level, ablation_stats, design_order, energy_axis_label
from trainer.ablation.table import format_bool, read_ablation_runs
from trainer.errors import TrainerError

logger = logging.getLogger(__name__)

#: The study's published figures (relative energy increase low → high level, η² of the energy
#: grouped by the factor, accuracy gained), shown next to ours for comparison.
STUDY_REFERENCE: dict[str, dict[str, str]] = {
    "conv_layers": {
        "energy": "+95% (FashionMNIST), +66% (CIFAR-10)",
        "eta_squared": "≈ 0.75",
        "accuracy": "+0.008 (FashionMNIST), +0.067 (CIFAR-10)",
    },
    "linear_layers": {"energy": "+5% (FashionMNIST), +7% (CIFAR-10)", "eta_squared": "—", "accuracy": "—"},
    "activation": {"energy": "+3%", "eta_squared": "—", "accuracy": "—"},
}

SUMMARY_MD = "ablation_summary.md"
STATS_CSV = "ablation_stats.csv"
STATS_JSON = "ablation_stats.json"
DESIGNS_CSV = "ablation_designs.csv"
PLOT_ENERGY_DESIGN = "ablation_energy_by_design.png"
PLOT_ENERGY_FACTOR = "ablation_energy_by_factor.png"
PLOT_ACCURACY_DESIGN = "ablation_accuracy_by_design.png"

_STATS_COLUMNS = (
    "factor",
    "low",
    "high",
    "n",
    "k",
    "energy_low_mean_j",
    "energy_high_mean_j",
    "energy_increase",
    "energy_increase_marginal",
    "strata",
    "accuracy_low_mean",
    "accuracy_high_mean",
    "accuracy_diff",
    "kruskal_h",
    "p_value",
    "eta_squared",
    "note",
)
_DESIGN_COLUMNS = (
    "design_id",
    "conv_layers",
    "linear_layers",
    "activation",
    "runs",
    "params",
    "energy_mean_j",
    "energy_std_j",
    "accuracy_mean",
    "accuracy_std",
    "seconds_mean",
)


def _fmt(value: float | None, spec: str = ".3g", *, na: str = "n/a") -> str:
    return na if value is None else format(value, spec)


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f}%"


def _level_label(factor: str, level: Level) -> str:
    if factor == "activation":
        return "on" if level else "off"
    return str(int(level))


def _source_banner(sources: Sequence[str]) -> str:
    if not sources:
        return "> **Energy source: none** — the table has no runs."
    if len(sources) > 1:
        return (
            f"> **Energy sources: {', '.join(sources)} — mixed.** Runs measured by different sources "
            "cannot be compared with each other; re-run the study with one source."
        )
    if sources[0] == "estimate":
        return (
            "> **Energy source: estimate.** No energy sensor was readable, so every joule here is an "
            "*estimate*: this process's CPU time × an assumed power per core. It ranks designs by the "
            "compute they use; it is not a measurement of the machine's consumption."
        )
    if sources[0] == "synthetic":
        return "> **Energy source: synthetic.** A known-truth test source, not a measurement."
    return (
        f"> **Energy source: {sources[0]}** (a hardware counter: every joule includes the devices' "
        "idle draw)."
    )


def _levels_text(factor: str, f: Mapping[str, Any]) -> str:
    if f["low"] is None:
        return "—"
    return f"{_level_label(factor, f['low'])} → {_level_label(factor, f['high'])}"


def render_ablation_summary(st: Mapping[str, Any]) -> str:
    """The markdown summary of :func:`ablation_stats`' result."""
    col = st["energy_column"]
    factors = {f["factor"]: f for f in st["factors"]}
    lines = [
        "# Layer ablation: energy and accuracy of a simple CNN",
        "",
        _source_banner(st["energy_sources"]),
        "",
        f"Dataset {', '.join(st['datasets']) or '—'} · model {', '.join(st['models']) or '—'} · "
        f"{st['runs']} runs of {st['designs_count']} designs "
        f"({'-'.join(map(str, st['runs_per_design'])) or 0} per design) · "
        f"epochs {', '.join(map(str, st['epochs'])) or '—'} · energy column `{col}`: "
        f"{st['energy_label']}.",
        "",
    ]
    if not st["balanced"]:
        lines += ["**Unbalanced table**: designs have different numbers of runs (an unfinished study?).", ""]
    lines += ["## Result", ""]
    largest = st["largest_energy_effect"]
    if largest is None:
        lines.append("No factor has a measurable energy effect in this table (see the notes below).")
    else:
        f = factors[largest]
        lines.append(
            f"The factor with the largest energy effect is **{ABLATION_FACTORS[largest]}** "
            f"({_levels_text(largest, f)}: {_fmt_pct(f['energy_increase'])} energy, "
            f"η² = {_fmt(f['eta_squared'], '.2f')}, p = {_fmt(f['p_value'], '.2g')}; "
            f"accuracy {_fmt(f['accuracy_diff'], '+.3f')})."
        )
        if f["p_value"] is None or f["p_value"] >= 0.05:
            lines.append(
                "Its Kruskal–Wallis test is not significant at the 5% level: with these runs the ranking "
                "may be noise."
            )
        by_eta = st["largest_eta_squared"]
        if by_eta is not None and by_eta != largest:
            lines.append(
                f"By effect size η² the largest is **{ABLATION_FACTORS[by_eta]}** instead: the relative "
                "increase and the rank-based effect size disagree, so read both."
            )
    lines += [
        "",
        "## Factors",
        "",
        "Energy increase: mean energy at the high level ÷ mean at the low level − 1, within each combination "
        "of the other factors' levels, averaged over those combinations (marginal: the same from the "
        "factor's overall means). η² = (H − k + 1) / (n − k) from the Kruskal–Wallis H of the energy "
        "grouped by the factor's levels.",
        "",
        "| factor | levels | energy increase | marginal | accuracy Δ | H | p | η² | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in factors.items():
        lines.append(
            f"| {ABLATION_FACTORS[name]} | {_levels_text(name, f)} | {_fmt_pct(f['energy_increase'])} | "
            f"{_fmt_pct(f['energy_increase_marginal'])} | {_fmt(f['accuracy_diff'], '+.3f')} | "
            f"{_fmt(f['kruskal_h'], '.2f')} | {_fmt(f['p_value'], '.2g')} | "
            f"{_fmt(f['eta_squared'], '.2f')} | {f['note'] or ''} |"
        )
    lines += [
        "",
        "## Compared with the study",
        "",
        "The study trained on FashionMNIST and CIFAR-10 with a measured energy source; compare directions "
        "and rankings, not magnitudes.",
        "",
        "| figure | ours | study |",
        "|---|---|---|",
    ]
    for name, ref in STUDY_REFERENCE.items():
        f = factors[name]
        label = ABLATION_FACTORS[name]
        lines.append(f"| energy increase, {label} | {_fmt_pct(f['energy_increase'])} | {ref['energy']} |")
        if ref["eta_squared"] != "—":
            lines.append(f"| η², {label} | {_fmt(f['eta_squared'], '.2f')} | {ref['eta_squared']} |")
        if ref["accuracy"] != "—":
            lines.append(f"| accuracy Δ, {label} | {_fmt(f['accuracy_diff'], '+.3f')} | {ref['accuracy']} |")
    lines += [
        "",
        "## Designs",
        "",
        f"| design | conv | linear | ReLU | runs | params | {st['energy_label']}, mean ± std "
        "| accuracy, mean ± std | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in st["designs"]:
        lines.append(
            f"| {d['design_id']} | {d['conv_layers']} | {d['linear_layers']} | "
            f"{_level_label('activation', d['activation'])} | {d['runs']} | {d['params']} | "
            f"{_fmt(d['energy_mean_j'], '.1f')} ± {_fmt(d['energy_std_j'], '.1f')} | "
            f"{_fmt(d['accuracy_mean'], '.3f')} ± {_fmt(d['accuracy_std'], '.3f')} | "
            f"{_fmt(d['seconds_mean'], '.2f')} |"
        )
    lines += [
        "",
        "## Plots",
        "",
        f"![energy per design]({PLOT_ENERGY_DESIGN})",
        "",
        f"![energy by factor level]({PLOT_ENERGY_FACTOR})",
        "",
        f"![accuracy per design]({PLOT_ACCURACY_DESIGN})",
        "",
    ]
    return "\n".join(lines)


def _plots(rows: Sequence[Mapping[str, Any]], st: Mapping[str, Any], out_dir: Path) -> list[Path]:
    col = st["energy_column"]
    ordered = sorted(rows, key=design_order)
    by_design: dict[str, list[Mapping[str, Any]]] = {
        k: list(g) for k, g in itertools.groupby(ordered, key=lambda r: str(r["design_id"]))
    }
    ylabel = energy_axis_label(st["energy_sources"], col)
    width = max(6.0, 0.8 * len(by_design) + 2)
    paths = []

    fig, (ax,) = new_figure(width, 4.5)
    groups = {k: [float(r[col]) for r in v] for k, v in by_design.items()}
    box_plot(ax, groups, ylabel=ylabel, title="Energy per design", rotate_labels=True)
    paths.append(save_figure_atomic(fig, out_dir / PLOT_ENERGY_DESIGN))

    fig, axes = new_figure(4.0 * len(ABLATION_FACTORS), 4.0, panels=len(ABLATION_FACTORS))
    for ax, f in zip(axes, st["factors"], strict=True):
        name = f["factor"]
        level_groups = {
            _level_label(name, lv): [float(r[col]) for r in rows if r[name] == lv] for lv in f["levels"]
        }
        eta = _fmt(f["eta_squared"], ".2f")
        box_plot(ax, level_groups, ylabel=ylabel, title=f"{ABLATION_FACTORS[name]} (η² {eta})")
    paths.append(save_figure_atomic(fig, out_dir / PLOT_ENERGY_FACTOR))

    fig, (ax,) = new_figure(width, 4.5)
    groups = {k: [float(r["accuracy"]) for r in v] for k, v in by_design.items()}
    box_plot(ax, groups, ylabel="held-out accuracy", title="Accuracy per design", rotate_labels=True)
    paths.append(save_figure_atomic(fig, out_dir / PLOT_ACCURACY_DESIGN))
    return paths


def ablation_report(runs_csv: Path, out_dir: Path, *, energy_column: str = "energy_j") -> list[Path]:
    """Statistics, plots and a markdown summary of an ablation table, from the CSV alone.

    Writes (atomically) ``ablation_summary.md``, ``ablation_stats.csv`` (one row per factor),
    ``ablation_designs.csv`` (one row per design), ``ablation_stats.json`` (everything) and three
    PNG box plots into ``out_dir``, and returns their paths. ``energy_column`` picks ``energy_j``
    (all the meter counted) or ``energy_net_j`` (idle power subtracted; equal for ``estimate``).
    Raises TrainerError for a missing or malformed table, or one without runs.
    """
    rows = read_ablation_runs(Path(runs_csv))
    if not rows:
        raise TrainerError(f"{runs_csv} has no runs yet: nothing to report")
    st = ablation_stats(rows, energy_column=energy_column)
    out_dir = Path(out_dir)
    paths = [
        write_text_atomic(out_dir / SUMMARY_MD, render_ablation_summary(st)),
        write_json_atomic(out_dir / STATS_JSON, st),
        write_csv_atomic(
            out_dir / STATS_CSV,
            _STATS_COLUMNS,
            [{**f, "low": _fmt_level(f["low"]), "high": _fmt_level(f["high"])} for f in st["factors"]],
        ),
        write_csv_atomic(
            out_dir / DESIGNS_CSV,
            _DESIGN_COLUMNS,
            [{**d, "activation": format_bool(d["activation"])} for d in st["designs"]],
        ),
    ]
    paths += _plots(rows, st, out_dir)
    logger.info("ablation report: %d files in %s", len(paths), out_dir)
    return paths


def _fmt_level(level: Level | None) -> str | None:
    if level is None:
        return None
    return format_bool(level) if isinstance(level, bool) else str(level)
