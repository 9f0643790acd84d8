"""``greenserve train hpo``: flags from :class:`HpoSettings`, ``--out``, the run."""

from __future__ import annotations

import argparse
from typing import Any

from trainer.cli import add_study_command
from trainer.hpo.run import run_hpo
from trainer.hpo.settings import HpoSettings

NAME = "hpo"
HELP = "Hyperparameter optimisation strategies compared on energy."


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``hpo`` to ``greenserve train``'s sub-commands."""
    return add_study_command(sub, NAME, HELP, HpoSettings, run_hpo)
