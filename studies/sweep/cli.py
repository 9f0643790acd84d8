"""``greenserve sweep``: serve each batching configuration of a grid and replay one trace against it.

The flags are generated from :class:`~studies.sweep.settings.SweepSettings` (the grid and what is
fixed across it) and :class:`~studies.sweep.settings.TraceSettings` (the trace); old spellings stay
as aliases (``--threads`` for ``--torch-threads``, ``--duration`` for ``--duration-s``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from loadgen.errors import GridError
from studies.kit.commands import OneLineParser, run_study
from studies.kit.flags import DEFAULT_RESULTS, add_dataclass_flags, dataclass_from_args
from studies.sweep.settings import ENERGY_SOURCES, SweepSettings, TraceSettings, configurations
from studies.sweep.table import CSV_NAME

DEFAULT_OUT = DEFAULT_RESULTS / "sweep"
DESCRIPTION = "Serve each batching configuration of a grid, replay a trace, record the figures."


def build_parser(prog: str = "greenserve sweep") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description=DESCRIPTION,
        epilog="It says what it will run and about how long it takes before it starts; docs/sweep.md.",
    )
    add_dataclass_flags(parser, SweepSettings, skip=("energy_source",))
    parser.add_argument(
        "--energy-source",
        dest="energy_source",
        choices=ENERGY_SOURCES,
        default=None,
        help="the servers' --energy-source (synthetic: a known-truth test source, not a measurement) "
        "(default: auto)",
    )
    add_dataclass_flags(parser, TraceSettings)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results directory (default: %(default)s)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="redraw the report from the CSV; run nothing"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def handle(args: argparse.Namespace) -> int:
    from studies.sweep.report import write_report
    from studies.sweep.run import run_sweep, trace_path

    out = Path(args.out)
    settings: SweepSettings = dataclass_from_args(SweepSettings, args)
    if args.report_only:
        csv_path = out / CSV_NAME
        if not csv_path.exists():
            raise GridError(f"{csv_path} does not exist: nothing to report")
        for path in write_report(csv_path, out, p99_target_ms=settings.p99_target_ms):
            print(f"wrote {path}")
        return 0
    configurations(settings)  # a bad grid fails before a trace is written
    trace = trace_path(dataclass_from_args(TraceSettings, args), out)
    result = run_sweep(settings, trace, out, progress=not args.no_progress)
    print(f"{result.ran} configuration(s) run, {result.skipped} already done, {result.failed} failed")
    for path in [result.csv_path, *result.outputs]:
        print(f"wrote {path}")
    print((out / "summary.md").read_text(encoding="utf-8"))
    return 1 if result.failed else 0


def run(name: str, argv: Sequence[str]) -> int:
    """The front door's entry: ``greenserve sweep <argv…>``."""
    return run_study(name, list(argv), build_parser, handle)
