"""The load generator's errors: each one is a user mistake or an unusable input, shown as one clear
message and exit code 2 by the CLI (never a traceback)."""

from __future__ import annotations

from energy.profile import BatchProfileError
from studies.kit.errors import LabError


class LoadgenError(LabError):
    """Base class: bad input to a loadgen command (a trace, a grid, a profile, a setting)."""


class TraceError(LoadgenError):
    """A trace that cannot be used; the message names the file and, where it applies, the line."""


class GridError(LoadgenError):
    """A sweep grid that cannot be run (unknown model, bad batch size or wait)."""


class ProfileError(LoadgenError, BatchProfileError):
    """A model profile that cannot be used by the simulator (missing, malformed, empty)."""
