"""The trainer's one error type: bad names, levels or data directories, reported before any work."""

from __future__ import annotations


class TrainerError(ValueError):
    """A user error in a training experiment's settings or data (the CLI prints it and exits 2)."""
