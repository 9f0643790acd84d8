"""``greenserve train …``: the trainer's sub-command group.

Each study registers its own command (:mod:`trainer.ablation.cli`, :mod:`trainer.hpo.cli`) through
:func:`add_study_command`: flags generated from its settings dataclass by :mod:`studies.kit.flags`
(``--conv-levels 1,4``, ``--quick``, ``--no-quick``, ``--torch-threads`` with ``--threads`` as its
old spelling), ``--out``, and its run function. ``greenserve train report`` redraws either study's
report from its table alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from studies.kit.errors import LabError
from studies.kit.flags import DEFAULT_RESULTS, add_dataclass_flags, dataclass_from_args
from trainer.errors import TrainerError

logger = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], Iterable[Path]]


def _run(handler: Handler, args: argparse.Namespace) -> int:
    """Run a command's handler: its output paths on stdout, a user error as one line and status 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        for path in handler(args):
            print(path)
    except LabError as exc:  # TrainerError, or the kit's own (a table made another way)
        print(f"greenserve train {args.train_command}: {exc}", file=sys.stderr)
        return 2
    return 0


def add_study_command(
    sub: Any,
    name: str,
    help_text: str,
    settings_cls: type,
    run: Callable[[Any, Path], Path],
    *,
    report: Callable[[Any, Path], Path] | None = None,
    report_help: str = "write the report from the stored results alone; run nothing",
) -> argparse.ArgumentParser:
    """A study command under ``sub``: flags from its settings dataclass, ``--out`` (default
    ``results/<name>``), and ``run(settings, out_dir)``, whose returned path is printed; with
    ``report``, also ``--report-only``, which calls ``report(settings, out_dir)`` instead."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    add_dataclass_flags(parser, settings_cls)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS / name, help="results directory")
    if report is not None:
        parser.add_argument("--report-only", action="store_true", help=report_help)

    def handle(args: argparse.Namespace) -> list[Path]:
        settings = dataclass_from_args(settings_cls, args)
        if report is not None and args.report_only:
            return [report(settings, args.out)]
        return [run(settings, args.out)]

    parser.set_defaults(handler=lambda args: _run(handle, args))
    return parser


def _redraw(args: argparse.Namespace) -> list[Path]:
    """``greenserve train report CSV``: the report of whichever study wrote the table."""
    from trainer.ablation.report import ablation_report
    from trainer.hpo.report import write_hpo_report

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


def add_commands(train: argparse.ArgumentParser) -> None:
    """The experiments, as sub-commands of ``train``."""
    from trainer.ablation.cli import register as register_ablation
    from trainer.hpo.cli import register as register_hpo

    sub = train.add_subparsers(dest="train_command", required=True, metavar="EXPERIMENT")
    register_ablation(sub)
    register_hpo(sub)
    report = sub.add_parser("report", help="Redraw a study's summary and plots from its CSV alone.")
    report.add_argument("csv", type=Path, help="ablation_runs.csv or hpo_trials.csv")
    report.add_argument("--out", type=Path, default=None, help="output directory (default: the CSV's)")
    report.set_defaults(handler=lambda args: _run(_redraw, args))


def main(argv: Sequence[str] | None = None) -> int:
    """``greenserve train …`` (the top-level command hands its arguments here)."""
    parser = argparse.ArgumentParser(
        prog="greenserve train", description="Training-side energy experiments (HPO, layer ablation)."
    )
    add_commands(parser)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def run(command: str, argv: Sequence[str]) -> int:
    """The front door's entry: ``greenserve train <argv…>``."""
    return main(argv)
