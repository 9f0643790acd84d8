"""The trainer's one error type: bad names, levels or data directories, reported before any work."""

from __future__ import annotations

import math

from studies.kit.errors import LabError


class TrainerError(LabError):
    """A user error in a training experiment's settings or data (the CLI prints it and exits 2)."""


def check_energy_settings(energy_source: str, watts_per_core: float | None) -> None:
    """The energy settings every study shares: a known source, and a finite ``watts_per_core`` > 0."""
    from energy import SOURCE_CHOICES

    if energy_source not in SOURCE_CHOICES:
        choices = ", ".join(SOURCE_CHOICES)
        raise TrainerError(f"unknown energy source {energy_source!r}; choose one of {choices}")
    if watts_per_core is not None and not (math.isfinite(watts_per_core) and watts_per_core > 0):
        raise TrainerError(f"watts_per_core must be a finite number > 0, got {watts_per_core!r}")


def check_dataset_and_model(dataset: str, model: str) -> None:
    """The names every study shares: a registered dataset and a registered model."""
    from trainer.data import dataset_names
    from trainer.models import model_names

    if dataset not in dataset_names():
        raise TrainerError(f"unknown dataset {dataset!r}; choose one of {', '.join(dataset_names())}")
    if model not in model_names():
        raise TrainerError(f"unknown model {model!r}; choose one of {', '.join(model_names())}")
