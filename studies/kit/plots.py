"""Figures with matplotlib's object API (:class:`matplotlib.figure.Figure`, rendered by Agg) rather than
pyplot, so importing this module never switches the process's global backend; saved atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from studies.kit.files import write_atomic


def save_figure_atomic(fig: Figure, path: Path, *, dpi: int = 120) -> Path:
    """Render ``fig`` as PNG to ``path`` atomically; return ``path``."""
    return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def new_figure(width_in: float, height_in: float, *, panels: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure with ``panels`` side-by-side axes, independent of pyplot's global state."""
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, list(axes)


def box_plot(
    ax: Axes,
    groups: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    title: str = "",
    rotate_labels: bool = False,
) -> None:
    """Box plot of each group on ``ax``, with every observation drawn over it.

    Studies have few repeats per group (5 or so), so the points themselves are shown too: a box of
    five values hides as much as it shows. The horizontal jitter is seeded, so redrawing the same
    table gives the same picture.
    """
    labels = list(groups)
    values = [list(map(float, groups[label])) for label in labels]
    positions = list(range(1, len(labels) + 1))
    ax.boxplot(values, positions=positions, widths=0.6, showfliers=False)
    rng = np.random.default_rng(0)
    for pos, vals in zip(positions, values, strict=True):
        jitter = rng.uniform(-0.12, 0.12, size=len(vals))
        ax.scatter(pos + jitter, vals, s=12, alpha=0.6, color="tab:blue", zorder=3)
    ax.set_xticks(positions)
    # set_xticklabels rather than boxplot(tick_labels=...): that keyword only exists from matplotlib 3.9.
    ax.set_xticklabels(labels, rotation=45 if rotate_labels else 0, ha="right" if rotate_labels else "center")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
