"""Plots of an HPO study, drawn from arrays computed from the trials table (:func:`trainer.hpo.curves`).

Figures are built on matplotlib's object API with the Agg canvas, so nothing here touches pyplot's
global state or needs a display; each function returns PNG bytes for the caller to write atomically.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from energy.profile import energy_label

Series = Mapping[str, Mapping[str, np.ndarray]]


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


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def best_so_far_png(series: Series, *, target_accuracy: float) -> bytes:
    """Best-so-far held-out accuracy vs round, one line per strategy (mean ± std over repeats).

    Two panels: every round, and the same zoomed on the top of the range, where the strategies differ
    (the first rounds' spread would otherwise flatten the part that matters).
    """
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    full, zoom = fig.subplots(1, 2)
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
    return _png(fig)


def cumulative_energy_png(series: Series, *, energy_source: str) -> bytes:
    """Cumulative training energy vs round, one line per strategy (mean ± std over repeats)."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
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
    return _png(fig)
