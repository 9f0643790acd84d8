"""``python -m studies.simcheck`` (``make bench-sim``): does the simulator predict what a real sweep
measures? Its flags are :class:`~studies.simcheck.settings.SimCheckSettings`' fields
(:mod:`studies.kit.flags`: ``--duration-s`` also answers to ``--duration``, ``--torch-threads`` to
``--threads``); ``--report`` prints a finished check's table again from its ``report.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.console import Console

from studies.kit.errors import LabError
from studies.kit.flags import add_dataclass_flags, dataclass_from_args
from studies.kit.results import add_report_flag, read_json_result
from studies.simcheck import run as measurement
from studies.simcheck.report import render
from studies.simcheck.settings import SimCheckSettings

PROG = "python -m studies.simcheck"
#: What report.json holds that the table needs (``--report FILE`` checks for it).
REPORT_KEYS = ("tolerance", "comparisons", "summary")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Simulator validation: does greenserve simulate predict what a real sweep measures?",
    )
    add_dataclass_flags(parser, SimCheckSettings)
    add_report_flag(parser, what="a finished check's report.json")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    args = build_parser(prog).parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    try:
        if args.report is not None:
            report = read_json_result(
                args.report,
                keys=("tolerance", "comparisons", "summary"),
                what="a simulator check's report.json",
            )
        else:
            settings: SimCheckSettings = dataclass_from_args(SimCheckSettings, args)
            report = measurement.run(settings, console)
    except LabError as exc:  # bad settings, or LoadgenError (a trace, a sweep table made otherwise)
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    render(report, console)
    return 0


def run(name: str, argv: Sequence[str]) -> int:
    """The front door's entry: ``greenserve <name> <argv…>`` (``greenserve bench-sim``)."""
    return main(list(argv), prog=f"greenserve {name}")


if __name__ == "__main__":
    raise SystemExit(main())
