"""``greenserve bench-adaptive`` (``python -m studies.adaptive``, ``make bench-adaptive``): the adaptive
policy against every static configuration of a grid and two baselines, on three traces, with real
servers.

The flags are generated from :class:`~studies.adaptive.settings.AdaptiveSettings`; ``--quick``
starts from :data:`~studies.adaptive.settings.QUICK` (one model, traces of a few seconds, two static
configurations), and flags given beside it override it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from studies.adaptive.settings import AdaptiveError, AdaptiveSettings, settings_from
from studies.adaptive.table import CSV_NAME
from studies.kit.commands import OneLineParser, run_study
from studies.kit.flags import DEFAULT_RESULTS, add_dataclass_flags

DEFAULT_OUT = DEFAULT_RESULTS / "adaptive"
DESCRIPTION = (
    "The adaptive batching policy against every static configuration of a grid, a Triton-like and a "
    "latency-adaptive baseline, on diurnal, bursty and steady traces, with real servers."
)


def build_parser(prog: str = "greenserve bench-adaptive") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description=DESCRIPTION,
        epilog="It says what it will run and about how long it takes before it starts; docs/adaptive.md.",
    )
    add_dataclass_flags(parser, AdaptiveSettings)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: one model (digits_cnn), 3 s traces, 2 static configurations, 1 s windows",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results directory (default: %(default)s)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="redraw the report from the table; run nothing"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def settings_from_args(args: argparse.Namespace) -> AdaptiveSettings:
    import dataclasses

    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(AdaptiveSettings)
        if getattr(args, f.name, None) is not None
    }
    return settings_from(given, quick=args.quick)


def handle(args: argparse.Namespace) -> int:
    from studies.adaptive.report import write_report
    from studies.adaptive.run import run_study

    out = Path(args.out)
    settings = settings_from_args(args)
    if args.report_only:
        csv_path = out / CSV_NAME
        if not csv_path.exists():
            raise AdaptiveError(f"{csv_path} does not exist: nothing to report")
        for path in write_report(csv_path, out, settings):
            print(f"wrote {path}")
        return 0
    result = run_study(settings, out, progress=not args.no_progress)
    print(f"{result.ran} run(s), {result.skipped} already done, {result.failed} failed")
    for path in [result.csv_path, *result.outputs]:
        print(f"wrote {path}")
    print((out / "summary.md").read_text(encoding="utf-8"))
    return 1 if result.failed else 0


def run(name: str, argv: Sequence[str]) -> int:
    """The front door's entry: ``greenserve bench-adaptive <argv…>``."""
    return run_study(name, list(argv), build_parser, handle)
