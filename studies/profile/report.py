"""The profile as a table on the terminal: latency and energy per batch size, each figure's source
and idle in the title, the decode + preprocess cost and any notes below it."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from studies.profile.format import ModelProfile


def render(profile: ModelProfile, console: Console) -> None:
    table = Table(
        title=(
            f"{profile.model} on {profile.device} (weights {profile.weights or 'default'}, "
            f"torch threads {profile.torch_threads or 'default'}); batch energy: {profile.energy_label}"
        )
    )
    for column in ("batch", "timed", "ms mean", "p50", "p99", "std", "img/s", "J/batch", "J/img"):
        table.add_column(column, justify="right")
    for p in profile.points:
        table.add_row(
            str(p.batch_size),
            str(p.batches),
            f"{p.latency_mean_ms:.3g}",
            f"{p.latency_p50_ms:.3g}",
            f"{p.latency_p99_ms:.3g}",
            f"{p.latency_std_ms:.2g}",
            f"{p.images_per_s:.0f}",
            f"{p.energy_j_per_batch:.3g}",
            f"{p.energy_j_per_image:.3g}",
        )
    console.print(table)
    if profile.preprocess_ms_per_image is not None and profile.preprocess_j_per_image is not None:
        console.print(
            f"decode + preprocess per image: {profile.preprocess_ms_per_image:.3g} ms, "
            f"{profile.preprocess_j_per_image:.3g} J ({profile.preprocess_energy_label})"
        )
    elif profile.preprocess_ms_per_image is not None:
        console.print(
            f"decode + preprocess per image: {profile.preprocess_ms_per_image:.3g} ms, energy unknown "
            f"({profile.preprocess_energy_source or 'no source'})"
        )
    for note in profile.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
