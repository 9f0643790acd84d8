"""The sweep's figures, from its points alone: ``pareto.png`` and ``energy-vs-batch.png``, one
panel per model, each J/request axis naming its source and what the figure holds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib.axes import Axes

from loadgen.figures import amortised_label, attributed_label
from studies.kit.plots import new_figure, save_figure_atomic
from studies.sweep.points import Point, pareto, recommend


def _sources(points: Sequence[Point], *, amortised: bool = False) -> str:
    found = {p.amortised_energy_source if amortised else p.energy_source for p in points}
    return "/".join(sorted(s for s in found if s)) or "no source"


def attributed_axis(points: Sequence[Point]) -> str:
    """The attributed J/request's axis label: ``J/request (rapl, attributed, idle excluded)``."""
    source = _sources(points)
    return f"J/request ({source}, {attributed_label(source)})"


def amortised_axis(points: Sequence[Point]) -> str:
    source = _sources(points, amortised=True)
    return f"J/request ({source}, {amortised_label(source)})"


def _per_model(points: Sequence[Point], path: Path, draw: Callable[[Axes, list[Point]], None]) -> Path:
    """One panel per model (``draw(ax, its points)``), titled and with a legend, saved atomically."""
    models = sorted({p.model for p in points})
    fig, axes = new_figure(6 * len(models), 4.5, panels=len(models))
    for ax, model in zip(axes, models, strict=True):
        draw(ax, [p for p in points if p.model == model])
        ax.set_title(model)
        ax.legend(fontsize=7)
    return save_figure_atomic(fig, path)


def plot_pareto(points: Sequence[Point], path: Path, p99_target_ms: float) -> Path:
    """J/request against p99 latency, one panel per model, the Pareto front joined and highlighted."""

    def draw(ax: Axes, mine: list[Point]) -> None:
        front = pareto(mine)
        ax.scatter(
            [p.p99_ms for p in mine], [p.j_per_request for p in mine], color="0.6", label="configuration"
        )
        ax.plot(
            [p.p99_ms for p in front],
            [p.j_per_request for p in front],
            "o-",
            color="tab:green",
            label="Pareto front",
        )
        for p in mine:
            ax.annotate(
                p.label, (p.p99_ms, p.j_per_request), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        ax.axvline(
            p99_target_ms,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"p99 target {p99_target_ms:g} ms",
        )
        best = recommend(mine, p99_target_ms)
        if best is not None:
            ax.scatter([best.p99_ms], [best.j_per_request], s=160, facecolors="none", edgecolors="tab:red")
        ax.set_xscale("log")
        ax.set_xlabel("p99 latency (ms, from the scheduled start)")
        ax.set_ylabel(attributed_axis(mine))

    return _per_model(points, path, draw)


def _draw_series(ax: Axes, line: list[Point], name: str, *, greedy: bool) -> None:
    """One series against max_batch_size: attributed J/request, and the amortised one (where measured)
    in the same colour, dashed (a line) or hollow (greedy's stars)."""
    sizes = [p.max_batch_size for p in line]
    joules = [p.j_per_request for p in line]
    amortised_sizes = [p.max_batch_size for p in line if p.amortised_j_per_request is not None]
    amortised = [j for p in line if (j := p.amortised_j_per_request) is not None]
    if greedy:
        ax.scatter(sizes, joules, marker="*", s=120, label=f"{name}, attributed")
        if amortised:
            ax.scatter(
                amortised_sizes,
                amortised,
                marker="*",
                s=120,
                facecolors="none",
                edgecolors="0.3",
                label=f"{name}, amortised",
            )
        return
    (drawn,) = ax.plot(sizes, joules, "o-", label=f"{name}, attributed")
    if amortised:
        ax.plot(
            amortised_sizes, amortised, "s--", color=drawn.get_color(), alpha=0.7, label=f"{name}, amortised"
        )


def plot_energy_vs_batch(points: Sequence[Point], path: Path) -> Path:
    """J/request against max_batch_size (one line per max wait, greedy as stars), one panel per model:
    the attributed figure solid, the amortised one (where measured) dashed in the same colour."""

    def draw(ax: Axes, mine: list[Point]) -> None:
        for wait in sorted({p.max_wait_ms for p in mine if not p.greedy}):
            line = sorted(
                (p for p in mine if not p.greedy and p.max_wait_ms == wait), key=lambda p: p.max_batch_size
            )
            _draw_series(ax, line, f"max wait {wait:g} ms", greedy=False)
        greedy = [p for p in mine if p.greedy]
        if greedy:
            _draw_series(ax, greedy, "greedy", greedy=True)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("max_batch_size")
        ylabel = attributed_axis(mine)
        if any(p.amortised_j_per_request is not None for p in mine):
            ylabel += f"\ndashed: {amortised_axis(mine)}"
        ax.set_ylabel(ylabel)

    return _per_model(points, path, draw)
