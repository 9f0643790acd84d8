"""The HPO study's report, drawn from its trials table alone (:func:`write_hpo_report`): the
summary as CSV and Markdown, and two plots — best-so-far accuracy and cumulative energy against the
round, one line per strategy (mean ± std over repeats). Figures and atomic writes come from
:mod:`studies.kit`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from energy.profile import energy_label, idle_phrase
from studies.kit.files import write_text_atomic
from studies.kit.plots import new_figure, save_figure_atomic
from trainer.errors import TrainerError
from trainer.hpo.summary import SUMMARY_COLUMNS, curves, summarize_trials
from trainer.hpo.table import read_trials_csv, write_table

SUMMARY_CSV = "hpo_summary.csv"
SUMMARY_MD = "hpo_summary.md"
BEST_SO_FAR_PNG = "hpo_best_so_far.png"
ENERGY_PNG = "hpo_cumulative_energy.png"

#: Per strategy, repeats × rounds arrays of best-so-far accuracy and cumulative energy (:func:`curves`).
Series = Mapping[str, Mapping[str, np.ndarray]]


def _fmt(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    return _fmt(mean, digits) if math.isnan(std) else f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"


def summary_markdown(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary table as Markdown, with every energy column labelled by its source and whether
    it includes the devices' idle draw (the trials' ``energy_j``: everything the meter read)."""
    sources = sorted({str(s["energy_source"]) for s in summary})
    label = "+".join(sources) or "unknown"
    idle = idle_phrase(label)
    lines = ["# HPO strategies: accuracy and energy", ""]
    if any("estimate" in s.split("+") for s in sources):
        lines += [
            "> **⚠ ENERGY IS AN ESTIMATE, NOT A MEASUREMENT.** Source `estimate`: this process's CPU",
            "> time × watts per core (no power sensor was read). Compare strategies with each other,",
            "> not with a meter.",
            "",
        ]
    if len(sources) > 1:
        lines += [
            f"> **Mixed energy sources ({', '.join(sources)}): the energy columns are not comparable.**",
            "",
        ]
    if summary:
        first = summary[0]
        lines += [
            f"Target accuracy: **{_fmt(first['target_accuracy'], 4)}**. Rounds to target: the first round "
            "whose best-so-far accuracy (completed trials only) reaches it; energy to target sums the "
            "training energy of rounds 1 to that one, pruned rounds included. Means ± sample std over the "
            "repeats that reached it; best accuracy and energy per study over all "
            f"{first['repeats']} repeat(s) of {first['rounds']} rounds. Energy is everything the "
            f"meter read during each trial's training ({label}, {idle}).",
            "",
        ]
    unit = f"J, {label}, {idle}"
    header = [
        "strategy",
        "best accuracy",
        "rounds to target",
        "reached",
        f"energy to target ({unit})",
        f"energy/round ({unit})",
        "epochs/round",
        "pruned rounds",
        f"energy/study ({unit})",
        f"total energy ({unit})",
        f"sampler overhead/round ({unit})",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        cells = [
            s["strategy"],
            _pm(s["best_accuracy_mean"], s["best_accuracy_std"], 4),
            _pm(s["rounds_to_target_mean"], s["rounds_to_target_std"], 1),
            f"{s['reached']}/{s['repeats']}",
            _pm(s["energy_to_target_j_mean"], s["energy_to_target_j_std"], 1),
            _fmt(s["energy_per_round_j_mean"], 2),
            _fmt(s["epochs_per_round_mean"], 2),
            str(s["pruned_rounds"]),
            _pm(s["study_energy_j_mean"], s["study_energy_j_std"], 1),
            _fmt(s["total_energy_j"], 1),
            _fmt(s["sampler_energy_per_round_j_mean"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    pruning = [s for s in summary if s["pruning_baseline"]]
    if pruning:
        lines += ["", "## Energy saved by pruning", ""]
        by_name = {s["strategy"]: s for s in summary}
        for s in pruning:
            base = by_name[s["pruning_baseline"]]

            def pair(key: str, digits: int, s: Mapping[str, Any] = s, base: Mapping[str, Any] = base) -> str:
                return f"{_fmt(s[key], digits)} vs {_fmt(base[key], digits)}"

            lines.append(
                f"- **{s['strategy']}** vs **{base['strategy']}**: "
                f"{_fmt(s['pruning_energy_saved_pct'], 1)}% less energy per study "
                f"({pair('study_energy_j_mean', 1)} J, {label}, {idle}); "
                f"best accuracy {pair('best_accuracy_mean', 4)}; "
                f"energy to target {pair('energy_to_target_j_mean', 1)} J "
                f"(reached {s['reached']}/{s['repeats']} vs {base['reached']}/{base['repeats']})."
            )
    return "\n".join(lines) + "\n"


def _band(ax: Axes, values: np.ndarray, label: str, clip: tuple[float, float] | None = None) -> None:
    """Mean over repeats (rows) as a line, ± one standard deviation as a band when there are ≥ 2 repeats."""
    rounds = np.arange(1, values.shape[1] + 1)
    with warnings.catch_warnings():
        # Rounds before a repeat's first completed trial are NaN in every repeat; the mean there is
        # NaN on purpose (nothing to plot), not a problem worth numpy's "mean of empty slice" warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] >= 2 else None
    (line,) = ax.plot(rounds, mean, label=label, linewidth=1.8)
    if std is not None:
        low, high = mean - std, mean + std
        if clip is not None:
            low, high = np.clip(low, *clip), np.clip(high, *clip)
        ax.fill_between(rounds, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def best_so_far_figure(series: Series, *, target_accuracy: float) -> Figure:
    """Best-so-far held-out accuracy vs round, one line per strategy (mean ± std over repeats).

    Two panels: every round, and the same zoomed on the top of the range, where the strategies differ
    (the first rounds' spread would otherwise flatten the part that matters).
    """
    fig, (full, zoom) = new_figure(11, 4.5, panels=2)
    finals = [
        float(np.nanmin(a["best_so_far"][:, -1]))
        for a in series.values()
        if np.isfinite(a["best_so_far"][:, -1]).any()
    ]
    floor = min([*finals, target_accuracy] if not math.isnan(target_accuracy) else finals or [0.0])
    for ax in (full, zoom):
        for strategy, arrays in series.items():
            _band(ax, arrays["best_so_far"], strategy, clip=(0.0, 1.0))
        if not math.isnan(target_accuracy):
            ax.axhline(
                target_accuracy,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"target {target_accuracy:.3f}",
            )
        ax.set_xlabel("round (trial)")
        ax.grid(alpha=0.3)
    full.set_ylabel("best held-out accuracy so far")
    full.set_title("every round")
    zoom.set_title("zoomed on the top")
    zoom.set_ylim(max(0.0, floor - 2 * (1.0 - floor) - 0.005), 1.0)
    zoom.legend(loc="lower right")
    fig.suptitle("HPO: best accuracy vs round (mean ± std over repeats; completed trials only)")
    return fig


def cumulative_energy_figure(series: Series, *, energy_source: str) -> Figure:
    """Cumulative training energy vs round, one line per strategy (mean ± std over repeats)."""
    fig, (ax,) = new_figure(7, 4.5)
    for strategy, arrays in series.items():
        _band(ax, arrays["cumulative_energy_j"], strategy)
    ax.set_xlabel("round (trial)")
    ax.set_ylabel(energy_label("cumulative energy", energy_source))
    title = "HPO: cumulative training energy vs round"
    if energy_source == "estimate":
        title += " — ESTIMATE (CPU time × W/core)"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return fig


def write_hpo_report(
    trials_csv: Path,
    out_dir: Path,
    *,
    target_accuracy: float | None = None,
    target_fraction: float | None = None,
) -> list[Path]:
    """Redraw the summary (CSV and Markdown) and the plots from a trials table alone; return their paths."""
    rows = read_trials_csv(Path(trials_csv))
    if not rows:
        raise TrainerError(f"{trials_csv} has no trials")
    summary = summarize_trials(rows, target_accuracy=target_accuracy, target_fraction=target_fraction)
    out_dir = Path(out_dir)
    target = summary[0]["target_accuracy"]
    source = summary[0]["energy_source"] if len({s["energy_source"] for s in summary}) == 1 else "mixed"
    series = curves(rows)
    return [
        write_table(out_dir / SUMMARY_CSV, SUMMARY_COLUMNS, summary),
        write_text_atomic(out_dir / SUMMARY_MD, summary_markdown(summary)),
        save_figure_atomic(best_so_far_figure(series, target_accuracy=target), out_dir / BEST_SO_FAR_PNG),
        save_figure_atomic(cumulative_energy_figure(series, energy_source=source), out_dir / ENERGY_PNG),
    ]
