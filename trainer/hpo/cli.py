"""``greenserve train hpo``: flags from :class:`HpoSettings`, ``--out``, ``--report-only``, the run."""

from __future__ import annotations

import argparse
from typing import Any

from trainer.cli import add_study_command
from trainer.hpo.run import report_hpo, run_hpo
from trainer.hpo.settings import HpoSettings

NAME = "hpo"
HELP = "Hyperparameter optimisation strategies compared on energy."


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``hpo`` to ``greenserve train``'s sub-commands."""
    return add_study_command(
        sub,
        NAME,
        HELP,
        HpoSettings,
        run_hpo,
        report=report_hpo,
        report_help=(
            "write the trials table, summary and plots from the storage alone (train nothing): "
            "the studies the other flags name, e.g. a shared --study-name's"
        ),
    )
