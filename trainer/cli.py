"""``greenserve train …``: the trainer's sub-command group.

Flags are generated from the studies' settings dataclasses (one source of truth, as ``serve``'s
are from its settings class): ``--conv-levels 1,4``, ``--quick``, ``--no-quick``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from studies.kit.errors import LabError
from studies.kit.flags import DEFAULT_RESULTS, add_dataclass_flags, dataclass_from_args
from trainer.errors import TrainerError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RESULTS", "add_dataclass_flags", "dataclass_from_args", "main", "run"]


def _run(handler: Any, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        for path in handler(args):
            print(path)
    except LabError as exc:  # TrainerError, or the kit's own (a table made another way)
        print(f"greenserve train {args.train_command}: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``greenserve train …`` (the top-level command hands its arguments here)."""
    parser = argparse.ArgumentParser(
        prog="greenserve train", description="Training-side energy experiments (HPO, layer ablation)."
    )
    add_commands(parser)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def add_commands(train: argparse.ArgumentParser) -> None:
    """The experiments, as sub-commands of ``train``."""
    from trainer.ablation import AblationSettings, run_ablation
    from trainer.hpo import HpoSettings, run_hpo, write_hpo_report
    from trainer.report import ablation_report

    sub = train.add_subparsers(dest="train_command", required=True, metavar="EXPERIMENT")

    def add_study(name: str, help_text: str, settings_cls: type, run: Callable[[Any, Path], Path]) -> None:
        """A study command: flags from its settings dataclass, ``--out``, and its run function."""
        parser = sub.add_parser(name, help=help_text)
        add_dataclass_flags(parser, settings_cls)
        parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS / name, help="results directory")

        def handle(args: argparse.Namespace) -> list[Path]:
            return [run(dataclass_from_args(settings_cls, args), args.out)]

        parser.set_defaults(handler=lambda args: _run(handle, args))

    add_study(
        "ablation",
        "Factorial ablation of CNN layers: energy and accuracy per design, Kruskal-Wallis per factor.",
        AblationSettings,
        run_ablation,
    )
    add_study("hpo", "Hyperparameter optimisation strategies compared on energy.", HpoSettings, run_hpo)

    report = sub.add_parser("report", help="Redraw a study's summary and plots from its CSV alone.")
    report.add_argument("csv", type=Path, help="ablation_runs.csv or hpo_trials.csv")
    report.add_argument("--out", type=Path, default=None, help="output directory (default: the CSV's)")

    def do_report(args: argparse.Namespace) -> list[Path]:
        csv_path: Path = args.csv
        if not csv_path.is_file():
            raise TrainerError(f"{csv_path} does not exist")
        out = args.out or csv_path.parent
        with csv_path.open(encoding="utf-8") as f:
            header = f.readline()
        if "conv_layers" in header:
            return list(ablation_report(csv_path, out))
        if "strategy" in header:
            return list(write_hpo_report(csv_path, out))
        raise TrainerError(f"{csv_path} is neither an ablation nor an HPO results table")

    report.set_defaults(handler=lambda args: _run(do_report, args))


def run(command: str, argv: Sequence[str]) -> int:
    """The front door's entry: ``greenserve train <argv…>``."""
    return main(argv)
