"""The lab's error root."""

from __future__ import annotations


class LabError(ValueError):
    """A user error in a lab command: bad settings, an unusable input file, a table made another way.
    Each lab package subclasses it (``LoadgenError``, ``TrainerError``); the commands print it as one
    line and exit with status 2."""
