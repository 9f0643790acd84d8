"""``python -m studies.serving`` (``make bench``): the serving benchmark's command line.

Its flags are :class:`~studies.serving.settings.BenchSettings`' fields (:mod:`studies.kit.flags`,
so ``--torch-threads`` also answers to ``--threads`` and ``--duration-s`` to ``--duration``), plus
``--report FILE``, which prints a finished run's tables again without measuring anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from studies.kit.errors import LabError
from studies.kit.flags import add_dataclass_flags, dataclass_from_args
from studies.kit.progress import announce
from studies.kit.results import add_report_flag, read_json_result
from studies.serving import run as measurement
from studies.serving.report import RESULT_FILE, RESULT_KEYS, render
from studies.serving.settings import BenchSettings, estimate_s, plan

PROG = "python -m studies.serving"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Serving benchmark: offline predict vs greenserve over HTTP (throughput, J/image), and "
            "greenserve's no-op overhead vs a bare FastAPI app. Exits 0 whether targets pass or "
            "fail; 1 when requests failed."
        ),
    )
    add_dataclass_flags(parser, BenchSettings)
    add_report_flag(parser, what="a finished run's result file (an --out of before)")
    return parser


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """The flags given, the defaults for the others (``--quick``'s for the ones it changes)."""
    given = {f.name for f in dataclasses.fields(BenchSettings) if getattr(args, f.name, None) is not None}
    settings: BenchSettings = dataclass_from_args(BenchSettings, args)
    return settings.with_quick_defaults(given)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through every ``finally``: the servers are stopped on SIGTERM too.
    raise SystemExit(128 + signum)


def plan_line(settings: BenchSettings) -> str:
    """What the run will do and about how long it takes (logged, and printed first)."""
    steps = plan(settings)
    return announce(
        "greenserve serving benchmark",
        f"{len(steps)} points (models {', '.join(settings.models)}; batch sizes "
        f"{', '.join(map(str, settings.batch_sizes))}; {settings.warmup_s:g} s warm-up + "
        f"{settings.duration_s:g} s measured per point; {settings.torch_threads} torch threads"
        f"{'' if settings.quick else '; --quick for a smoke run'})",
        units=len(steps),
        estimate_s=estimate_s(steps, settings),
    )


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    try:
        if args.report is not None:
            render(read_json_result(args.report, keys=RESULT_KEYS, what=RESULT_FILE), console)
            return 0
        settings = settings_from_args(args)
    except LabError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    console.print(plan_line(settings))
    started = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        result = measurement.run(plan(settings), settings, console, progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        console.print("interrupted: every server started was stopped; nothing written")
        return 130
    elapsed_s = time.monotonic() - started
    document = measurement.result_document(settings, result, started_at=started_at, elapsed_s=elapsed_s)
    render(document, console)
    out = measurement.write_result(document, Path(settings.out))
    console.print(f"\nwrote {out} ({elapsed_s / 60:.1f} min)")
    return 1 if document["summary"]["errors_total"] else 0


def run(name: str, argv: Sequence[str]) -> int:
    """The front door's entry: ``greenserve <name> <argv…>`` (``greenserve bench``)."""
    return main(list(argv), prog=f"greenserve {name}")


if __name__ == "__main__":
    raise SystemExit(main())
