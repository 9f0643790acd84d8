"""``greenserve zoo …``: the model-zoo study's commands.

``run`` (the default: ``greenserve zoo --quick`` is ``greenserve zoo run --quick``) measures and
reports; ``report`` redraws the summary and plots from the table alone; ``list`` prints the
catalogue. ``run``'s flags are generated from :class:`studies.zoo.settings.ZooSettings` by the kit
(:mod:`studies.kit.flags`: ``--torch-threads``, alias ``--threads``), as the other studies' are from
theirs. A run first says what it will do and about how long it will take. The top-level command
hands these arguments here whole, and this module imports torch only inside ``run``, so neither
``greenserve serve`` nor ``greenserve zoo list`` pays for it. Bad input is one line on stderr and
exit status 2 (:mod:`studies.kit.commands`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from studies.kit.commands import OneLineParser, run_handler
from studies.kit.flags import DEFAULT_RESULTS, add_dataclass_flags, dataclass_from_args
from studies.zoo.errors import ZooError

DEFAULT_OUT = DEFAULT_RESULTS / "zoo"
COMMANDS = ("run", "report", "list")


def _run(args: argparse.Namespace) -> int:
    from studies.zoo.plan import estimate, format_estimate
    from studies.zoo.run import run_zoo
    from studies.zoo.settings import ZooSettings

    settings = dataclass_from_args(ZooSettings, args)
    if args.dry_run:
        est = estimate(settings)
        print(f"{format_estimate(est)} (random weights)")
        for cell in est.cells:
            state = "runs" if cell.runs else "skipped: over the time budget"
            print(f"  {cell.model:<20} batch {cell.batch_size:>4}: ≈ {cell.predicted_s:7.1f} s  {state}")
        return 0
    try:
        csv_path = run_zoo(settings, args.out, progress=args.progress)
    except KeyboardInterrupt:
        # Every decided cell is already in the table (appended and synced as it finished).
        print(
            f"greenserve zoo run: interrupted; the finished cells are kept in {args.out}; "
            "the same command resumes",
            file=sys.stderr,
        )
        return 130
    from studies.zoo.report import SUMMARY_MD

    print(csv_path)
    print(csv_path.parent / SUMMARY_MD)
    return 0


def _report(args: argparse.Namespace) -> int:
    from studies.zoo.report import zoo_report
    from studies.zoo.table import MEASUREMENTS_CSV

    csv_path: Path = args.csv if args.csv is not None else DEFAULT_OUT / MEASUREMENTS_CSV
    if not csv_path.is_file():
        raise ZooError(f"{csv_path} does not exist")
    for path in zoo_report(csv_path, args.out or csv_path.parent, energy=args.energy):
        print(path)
    return 0


def _list(args: argparse.Namespace) -> int:
    from studies.zoo.catalog import CATALOGUE, QUICK_MODELS, STUDY_MODELS

    print(
        f"{'model':<20} {'year':>4} {'acc@1':>6} {'GFLOPS':>7} {'params':>7} {'input':>5}  "
        f"{'weights':<14} paper"
    )
    for m in CATALOGUE:
        mark = "*" if m.name in STUDY_MODELS else ("q" if m.name in QUICK_MODELS else " ")
        arxiv = f" (arXiv {m.arxiv})" if m.arxiv else ""
        print(
            f"{m.name + mark:<20} {m.year:>4} {m.acc1_pct:>6.2f} {m.gflops:>7.3f} {m.params / 1e6:>6.1f}M "
            f"{m.resolution:>5}  {m.weights:<14} {m.paper}{arxiv}"
        )
    print("* the study's five networks; q measured by --quick. Accuracy: torchvision's DEFAULT weights.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from studies.zoo.settings import ZooSettings

    parser = OneLineParser(
        prog="greenserve zoo",
        description="Model-zoo study: energy per image vs accuracy of a decade of vision networks "
        "(random weights; accuracy from torchvision's metadata).",
    )
    sub = parser.add_subparsers(dest="zoo_command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="Measure J/image and latency per network and batch size, then report (the default).",
        description="Measure every network × batch size not yet in the table, then write the report. "
        "The full default (18 networks × 5 batch sizes) takes about 15 minutes on two CPU cores: it says so "
        "before it starts, shows its progress, and resumes when run again after an interruption. "
        "Unset flags take the mode's defaults (--quick: 3 small networks, batch 1 and 2, 64×64, 1 repeat: "
        "a smoke run in seconds).",
    )
    add_dataclass_flags(run, ZooSettings)
    run.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"results directory (default: {DEFAULT_OUT})"
    )
    run.add_argument(
        "--dry-run", action="store_true", help="print the plan and its time estimate; measure nothing"
    )
    run.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar on stderr"
    )
    run.set_defaults(handler=_run)

    report = sub.add_parser("report", help="Redraw the summary and plots from the table alone.")
    report.add_argument(
        "csv",
        type=Path,
        nargs="?",
        default=None,
        help=f"the table (default: {DEFAULT_OUT}/zoo_measurements.csv)",
    )
    report.add_argument("--out", type=Path, default=None, help="output directory (default: the table's)")
    report.add_argument(
        "--energy",
        choices=("gross", "net"),
        default="gross",
        help="J/image the verdicts use: all the meter counted, or net of idle power (default: gross)",
    )
    report.set_defaults(handler=_report)

    listing = sub.add_parser("list", help="Print the catalogue: year, paper, accuracy, GFLOPS, parameters.")
    listing.set_defaults(handler=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``greenserve zoo …`` (the top-level command hands its arguments here)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["run", *argv]  # ``run`` is the default command
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_handler(f"greenserve zoo {args.zoo_command}", args.handler, args)


def run(command: str, argv: Sequence[str]) -> int:
    """The front door's entry: ``greenserve zoo <argv…>``."""
    return main(argv)


__all__ = ["build_parser", "main", "run"]
