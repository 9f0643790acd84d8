"""Statistics, plots and markdown for the training studies, drawn from their CSV tables alone.

The helpers any study reuses (atomic writes, Kruskal–Wallis with η², box plots) are in
:mod:`studies.kit`. This is the layer ablation's report: it reads
``ablation_runs.csv`` (written by :mod:`trainer.ablation`) and nothing else, so a finished or
half-finished study can be redrawn at any time without re-running it (``greenserve train report``).

Plots use matplotlib's object API (:class:`matplotlib.figure.Figure`, rendered by Agg) rather than
pyplot, so importing this module never switches the process's global backend.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from energy.profile import energy_label, source_idle_included
from studies.kit.files import write_csv_atomic, write_json_atomic, write_text_atomic
from studies.kit.plots import box_plot, new_figure, save_figure_atomic
from studies.kit.stats import kruskal_eta_squared, mean_std
from trainer.errors import TrainerError

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".3g", *, na: str = "n/a") -> str:
    return na if value is None else format(value, spec)


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f}%"


# ---------------------------------------------------------------------------------------------
# The layer ablation's table and report
# ---------------------------------------------------------------------------------------------

#: Columns of ``ablation_runs.csv``, in order. One row is one training run of one design.
ABLATION_COLUMNS: tuple[str, ...] = (
    "dataset",
    "model",
    "design_id",
    "conv_layers",
    "linear_layers",
    "activation",
    "repeat",
    "run_order",
    "seed",
    "epochs",
    "params",
    "accuracy",
    "energy_j",
    "energy_net_j",
    "energy_source",
    "seconds",
)

#: The ablation's factors: CSV column → label used in tables and plots.
ABLATION_FACTORS: dict[str, str] = {
    "conv_layers": "conv layers",
    "linear_layers": "linear layers",
    "activation": "ReLU",
}

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

ENERGY_COLUMNS = ("energy_j", "energy_net_j")

RUNS_CSV = "ablation_runs.csv"
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

Level = int | bool


def format_bool(value: bool) -> str:
    """How the ablation table writes a boolean level."""
    return "true" if value else "false"


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _level_label(factor: str, level: Level) -> str:
    if factor == "activation":
        return "on" if level else "off"
    return str(int(level))


def read_ablation_runs(runs_csv: Path) -> list[dict[str, Any]]:
    """Parse ``ablation_runs.csv`` into typed rows; a bad file is a TrainerError naming the line.

    A final line without its newline (a study killed mid-write) is ignored.
    """
    try:
        text = runs_csv.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrainerError(f"no ablation table at {runs_csv}") from None
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ABLATION_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise TrainerError(f"{runs_csv} is not an ablation table: missing columns {', '.join(missing)}")
    ints = ("conv_layers", "linear_layers", "repeat", "run_order", "seed", "epochs", "params")
    floats = ("accuracy", "energy_j", "energy_net_j", "seconds")
    rows: list[dict[str, Any]] = []
    for line, raw in enumerate(reader, start=2):
        try:
            row: dict[str, Any] = {c: raw[c] for c in ("dataset", "model", "design_id", "energy_source")}
            row.update({c: int(raw[c]) for c in ints})
            row.update({c: float(raw[c]) for c in floats})
            row["activation"] = _parse_bool(raw["activation"])
        except (TypeError, ValueError) as exc:
            raise TrainerError(f"{runs_csv}, line {line}: {exc}") from None
        rows.append(row)
    return rows


def _sort_key(row: Mapping[str, Any]) -> tuple[int, int, bool]:
    return int(row["conv_layers"]), int(row["linear_layers"]), bool(row["activation"])


def _design_stats(rows: Sequence[Mapping[str, Any]], energy_column: str) -> list[dict[str, Any]]:
    by_design: dict[str, list[Mapping[str, Any]]] = {}
    for row in sorted(rows, key=_sort_key):
        by_design.setdefault(str(row["design_id"]), []).append(row)
    out = []
    for design_id, runs in by_design.items():
        e_mean, e_std = mean_std([float(r[energy_column]) for r in runs])
        a_mean, a_std = mean_std([float(r["accuracy"]) for r in runs])
        s_mean, _ = mean_std([float(r["seconds"]) for r in runs])
        out.append(
            {
                "design_id": design_id,
                "conv_layers": runs[0]["conv_layers"],
                "linear_layers": runs[0]["linear_layers"],
                "activation": runs[0]["activation"],
                "runs": len(runs),
                "params": runs[0]["params"],
                "energy_mean_j": e_mean,
                "energy_std_j": e_std,
                "accuracy_mean": a_mean,
                "accuracy_std": a_std,
                "seconds_mean": s_mean,
            }
        )
    return out


def _factor_stats(rows: Sequence[Mapping[str, Any]], factor: str, energy_column: str) -> dict[str, Any]:
    """One factor's effect: low → high level, stratified over the other factors' level combinations."""
    levels: list[Level] = sorted({row[factor] for row in rows})
    others = [f for f in ABLATION_FACTORS if f != factor]
    kw = kruskal_eta_squared([[float(r[energy_column]) for r in rows if r[factor] == lv] for lv in levels])
    out: dict[str, Any] = {
        "factor": factor,
        "levels": levels,
        "low": levels[0] if levels else None,
        "high": levels[-1] if levels else None,
        "n": kw.n,
        "k": kw.k,
        "kruskal_h": kw.h,
        "p_value": kw.p_value,
        "eta_squared": kw.eta_squared,
        "energy_low_mean_j": None,
        "energy_high_mean_j": None,
        "energy_increase": None,
        "energy_increase_marginal": None,
        "strata": 0,
        "accuracy_low_mean": None,
        "accuracy_high_mean": None,
        "accuracy_diff": None,
        "note": kw.reason,
    }
    if len(levels) < 2:
        out["note"] = f"the factor has {len(levels)} level(s) in the table: no effect to measure"
        return out
    low, high = levels[0], levels[-1]

    def mean_of(column: str, level: Level, stratum: tuple[Any, ...] | None = None) -> float | None:
        vals = [
            float(r[column])
            for r in rows
            if r[factor] == level and (stratum is None or tuple(r[o] for o in others) == stratum)
        ]
        return statistics.fmean(vals) if vals else None

    e_low, e_high = mean_of(energy_column, low), mean_of(energy_column, high)
    a_low, a_high = mean_of("accuracy", low), mean_of("accuracy", high)
    out.update(energy_low_mean_j=e_low, energy_high_mean_j=e_high, accuracy_low_mean=a_low)
    out["accuracy_high_mean"] = a_high
    if e_low is not None and e_high is not None and e_low > 0:
        out["energy_increase_marginal"] = e_high / e_low - 1
    # The headline figure: in each combination of the other factors' levels (a stratum), the mean
    # energy at the high level over the mean at the low level, minus one; then the plain mean over
    # strata, so each combination of the other factors counts once, whatever its energy scale.
    ratios, acc_diffs = [], []
    strata = sorted({tuple(r[o] for o in others) for r in rows})
    for stratum in strata:
        sl, sh = mean_of(energy_column, low, stratum), mean_of(energy_column, high, stratum)
        if sl is not None and sh is not None and sl > 0:
            ratios.append(sh / sl - 1)
        al, ah = mean_of("accuracy", low, stratum), mean_of("accuracy", high, stratum)
        if al is not None and ah is not None:
            acc_diffs.append(ah - al)
    out["strata"] = len(ratios)
    if ratios:
        out["energy_increase"] = statistics.fmean(ratios)
    if acc_diffs:
        out["accuracy_diff"] = statistics.fmean(acc_diffs)
    if len(ratios) < len(strata):
        gap = f"{len(strata) - len(ratios)} of {len(strata)} strata lack a level or have zero energy"
        out["note"] = f"{out['note']}; {gap}" if out["note"] else gap
    return out


def ablation_stats(rows: Sequence[Mapping[str, Any]], *, energy_column: str = "energy_j") -> dict[str, Any]:
    """The ablation's statistics from its table's rows (a pure function; JSON-ready).

    Per design: runs, mean/std of energy and accuracy. Per factor: the relative energy increase
    from its lowest to its highest level (stratified; see :func:`_factor_stats`), the same from the
    marginal means, the accuracy difference, and a Kruskal–Wallis test of the energy grouped by the
    factor's levels with its η²_H. ``largest_energy_effect`` is the factor with the largest
    absolute relative increase; ``largest_eta_squared`` the one with the largest η².
    """
    if energy_column not in ENERGY_COLUMNS:
        raise TrainerError(f"energy column must be one of {', '.join(ENERGY_COLUMNS)}, got {energy_column!r}")
    designs = _design_stats(rows, energy_column)
    factors = [_factor_stats(rows, f, energy_column) for f in ABLATION_FACTORS]
    # A factor whose increase is exactly 0 has no effect to rank (e.g. every energy identical).
    with_increase = [f for f in factors if f["energy_increase"]]
    with_eta = [f for f in factors if f["eta_squared"]]  # None or 0: nothing to rank
    run_counts = sorted({d["runs"] for d in designs})
    sources = sorted({str(r["energy_source"]) for r in rows})
    return {
        "energy_column": energy_column,
        "energy_sources": sources,
        "energy_label": _energy_label(sources, energy_column),
        "datasets": sorted({str(r["dataset"]) for r in rows}),
        "models": sorted({str(r["model"]) for r in rows}),
        "epochs": sorted({int(r["epochs"]) for r in rows}),
        "runs": len(rows),
        "designs_count": len(designs),
        "runs_per_design": run_counts,
        "balanced": len(run_counts) <= 1,
        "designs": designs,
        "factors": factors,
        "largest_energy_effect": (
            max(with_increase, key=lambda f: abs(f["energy_increase"]))["factor"] if with_increase else None
        ),
        "largest_eta_squared": max(with_eta, key=lambda f: f["eta_squared"])["factor"] if with_eta else None,
    }


def _energy_label(sources: Sequence[str], energy_column: str, what: str = "energy per run") -> str:
    """``energy per run (J, rapl, idle included)``; for ``energy_net_j``, ``net energy per run (J,
    rapl, idle subtracted)`` (the estimate has no idle to include or subtract: "idle not included")."""
    net = energy_column == "energy_net_j"
    return energy_label(
        f"net {what}" if net else what,
        "/".join(sources) or None,
        net=net,
        idle_included=source_idle_included("+".join(sources)) if sources else None,
    )


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
    ordered = sorted(rows, key=_sort_key)
    by_design: dict[str, list[Mapping[str, Any]]] = {
        k: list(g) for k, g in itertools.groupby(ordered, key=lambda r: str(r["design_id"]))
    }
    ylabel = _energy_label(st["energy_sources"], col)
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


__all__ = [
    "ABLATION_COLUMNS",
    "ABLATION_FACTORS",
    "STUDY_REFERENCE",
    "ablation_report",
    "ablation_stats",
    "read_ablation_runs",
    "render_ablation_summary",
]
