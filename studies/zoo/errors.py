"""The zoo study's error: a user error (bad settings, an unknown network, an unusable table)."""

from __future__ import annotations

from studies.kit.errors import LabError


class ZooError(LabError):
    """A user error in the zoo study, reported before any work (the CLI prints it and exits 2)."""
