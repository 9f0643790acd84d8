"""The zoo's three figures, drawn from :func:`studies.zoo.stats.zoo_stats`' result alone (so any table
can be redrawn): J/image and accuracy by year, accuracy against J/image with the Pareto front, and
J/image by batch size. matplotlib's object API through :mod:`studies.kit.plots`, saved atomically."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import NullFormatter, NullLocator

from studies.kit.plots import new_figure, save_figure_atomic
from studies.zoo.catalog import EXCEPTION_MODEL, STUDY_MODELS

PLOT_BY_YEAR = "zoo_energy_by_year.png"
PLOT_PARETO = "zoo_accuracy_vs_energy.png"
PLOT_BY_BATCH = "zoo_energy_by_batch.png"


def _subtitle(st: Mapping[str, Any]) -> str:
    source = "/".join(st["energy_sources"]) or "none"
    threads = "/".join(map(str, st["threads"]))
    return f"{'/'.join(st['devices'])}, {threads} thread(s) · energy source: {source} · random weights"


def _spread_years(models: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each network's x position: its year, offset within ±0.3 among the networks of that year."""
    by_year: dict[int, list[str]] = {}
    for m in models:
        by_year.setdefault(m["year"], []).append(m["model"])
    x = {}
    for year, names in by_year.items():
        for i, name in enumerate(names):
            x[name] = year + (0.0 if len(names) == 1 else -0.3 + 0.6 * i / (len(names) - 1))
    return x


def draw_plots(st: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write the three figures of ``st`` into ``out_dir``; return their paths."""
    ref = st["ref_batch"]
    energy_label = f"J/image ({st['energy_label'].removeprefix('J, ')})"
    with_ref = [m for m in st["models"] if m["ref_j"] is not None]
    paths = []

    # 1. J/image by year, accuracy on a second axis. Networks of the same year are spread a little
    # along x so that their points and names do not sit on each other.
    fig, (ax,) = new_figure(10.0, 6.0)
    acc_ax = ax.twinx()
    x = _spread_years(st["models"])
    for m in with_ref:
        study = m["model"] in STUDY_MODELS
        ax.scatter(x[m["model"]], m["ref_j"], s=40, color="tab:red" if study else "tab:blue", zorder=3)
        ax.annotate(
            m["model"], (x[m["model"]], m["ref_j"]), fontsize=7, xytext=(4, 2), textcoords="offset points"
        )
    trend = [m for m in with_ref if m["model"] in STUDY_MODELS and m["model"] != EXCEPTION_MODEL]
    if len({m["year"] for m in trend}) >= 2:
        slope, intercept = np.polyfit([m["year"] for m in trend], [math.log10(m["ref_j"]) for m in trend], 1)
        years = np.linspace(min(m["year"] for m in st["models"]), max(m["year"] for m in st["models"]), 50)
        ax.plot(
            years,
            10 ** (intercept + slope * years),
            "--",
            color="tab:red",
            alpha=0.6,
            label="log-linear trend of the study's networks (ShuffleNetV2 left out)",
        )
    ax.scatter([], [], color="tab:red", label="J/image, the study's networks")
    ax.scatter([], [], color="tab:blue", label="J/image, other networks")
    acc_ax.scatter(
        [x[m["model"]] for m in st["models"]],
        [m["acc1_pct"] for m in st["models"]],
        marker="^",
        color="tab:green",
        alpha=0.5,
        label="acc@1 (right axis)",
    )
    frontier = st["catalogue"]["accuracy"]["frontier_pct"]
    if frontier:
        acc_ax.step(
            list(frontier),
            list(frontier.values()),
            where="post",
            color="tab:green",
            alpha=0.7,
            label="best acc@1 so far (right axis)",
        )
    acc_ax.set_ylabel("ImageNet-1K acc@1 (%, torchvision metadata)", color="tab:green")
    ax.set_yscale("log")
    ax.set_xlabel("year of the paper")
    ax.set_ylabel(f"{energy_label} at batch {ref}")
    ax.set_title(f"Energy per image and accuracy by year\n{_subtitle(st)}", fontsize=10)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    acc_handles, acc_labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles + acc_handles, labels + acc_labels, loc="outside lower center", ncol=3, fontsize=7)
    paths.append(save_figure_atomic(fig, out_dir / PLOT_BY_YEAR))

    # 2. Accuracy vs J/image, log x, the Pareto front highlighted.
    fig, (ax,) = new_figure(8.5, 5.5)
    front = set(st["pareto_ref"])
    for m in with_ref:
        on_front = m["model"] in front
        ax.scatter(
            m["ref_j"],
            m["acc1_pct"],
            s=50 if on_front else 30,
            color="tab:red" if on_front else "tab:gray",
            zorder=3,
        )
        ax.annotate(
            m["model"], (m["ref_j"], m["acc1_pct"]), fontsize=7, xytext=(4, 2), textcoords="offset points"
        )
    front_models = [m for m in with_ref if m["model"] in front]
    front_models.sort(key=lambda m: m["ref_j"])
    if front_models:
        ax.step(
            [m["ref_j"] for m in front_models],
            [m["acc1_pct"] for m in front_models],
            where="post",
            color="tab:red",
            alpha=0.7,
            label="Pareto front",
        )
        ax.legend(fontsize=8, loc="lower right")
    if with_ref:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labels on the decades only: they overlap
    ax.set_xlabel(f"{energy_label} at batch {ref} (log)")
    ax.set_ylabel("ImageNet-1K acc@1 (%, torchvision metadata)")
    ax.set_title(f"Accuracy vs energy per image\n{_subtitle(st)}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    paths.append(save_figure_atomic(fig, out_dir / PLOT_PARETO))

    # 3. J/image by batch size, one line per model.
    fig, (ax,) = new_figure(10.5, 5.5)
    colours = [f"C{i % 10}" for i in range(len(st["models"]))]
    styles = ["-", "--", ":"]
    drawn = False
    for i, m in enumerate(st["models"]):
        sizes = sorted(m["j_per_image"])
        if sizes:
            ax.plot(
                sizes,
                [m["j_per_image"][b] for b in sizes],
                marker="o",
                markersize=3,
                linestyle=styles[(i // 10) % 3],
                color=colours[i],
                label=m["model"],
            )
            drawn = True
    if drawn:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(st["batch_sizes"], [str(b) for b in st["batch_sizes"]])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel("batch size (log)")
    ax.set_ylabel(energy_label)
    ax.set_title(f"Energy per image by batch size\n{_subtitle(st)}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    paths.append(save_figure_atomic(fig, out_dir / PLOT_BY_BATCH))
    return paths


__all__ = ["PLOT_BY_BATCH", "PLOT_BY_YEAR", "PLOT_PARETO", "draw_plots"]
