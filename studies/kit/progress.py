"""What a long study says before and while it runs: its plan with an estimate of how long it will take
(:func:`announce`), and one progress bar with the elapsed and remaining time (:func:`progress_bar`),
on stderr so that a study's stdout stays its results."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``1 h 05 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def announce(study: str, what: str, *, units: int, done: int = 0, estimate_s: float | None = None) -> str:
    """Log (and return) one line saying what ``study`` will do: ``units`` of work, ``done`` of them
    already in its table (a resumed run), and roughly how long the rest takes. E.g. ``zoo: 18 models ×
    5 batch sizes = 90 cells, 12 done, about 14 min 20 s to go (--quick for a smoke run)``."""
    line = f"{study}: {what}"
    if done:
        line += f", {done} of {units} done (resuming)"
    if estimate_s is not None and units > done:
        line += f", about {format_duration(estimate_s)} to go"
    logger.info("%s", line)
    return line


@contextmanager
def progress_bar(
    label: str, total: int, *, completed: int = 0, enabled: bool = True
) -> Iterator[Callable[[str, bool], None]]:
    """A rich progress bar over ``total`` units (``completed`` already done); yields
    ``step(description, advance)``: show what runs now, and count one unit done when ``advance``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        disable=not enabled,
    )
    with progress:
        task = progress.add_task("", total=total, completed=completed)

        def step(description: str, advance: bool) -> None:
            progress.update(task, description=description, advance=1 if advance else 0)

        yield step
