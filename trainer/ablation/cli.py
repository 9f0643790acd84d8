"""``greenserve train ablation``: flags from :class:`AblationSettings`, ``--out``, the run."""

from __future__ import annotations

import argparse
from typing import Any

from trainer.ablation.run import run_ablation
from trainer.ablation.settings import AblationSettings
from trainer.cli import add_study_command

NAME = "ablation"
HELP = "Factorial ablation of CNN layers: energy and accuracy per design, Kruskal-Wallis per factor."


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``ablation`` to ``greenserve train``'s sub-commands."""
    return add_study_command(sub, NAME, HELP, AblationSettings, run_ablation)
