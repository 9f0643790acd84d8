"""``python -m studies.accounting`` (``make bench-energy``): the energy accounting benchmark's command.

Its flags are :class:`~studies.accounting.settings.AccountingSettings`' fields
(:mod:`studies.kit.flags`: ``--duration-s`` also answers to ``--duration``). It prints the table,
then each source's figures as a dict.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from studies.accounting.report import render
from studies.accounting.run import measure_all, plan_line
from studies.accounting.settings import AccountingSettings
from studies.kit.errors import LabError
from studies.kit.flags import add_dataclass_flags, dataclass_from_args

PROG = "python -m studies.accounting"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    from studies.accounting import run as measurement

    description = (measurement.__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_dataclass_flags(parser, AccountingSettings)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not Path("/proc/self/stat").exists():
        print(f"{prog} needs Linux's /proc to read the server's CPU time", file=sys.stderr)
        return 2
    try:
        settings: AccountingSettings = dataclass_from_args(AccountingSettings, args)
        print(plan_line(settings), file=sys.stderr, flush=True)
        checks = measure_all(settings)
    except LabError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(render(checks))
    for check in checks:
        print({k: v for k, v in asdict(check).items()})
    return 0


def run(name: str, argv: Sequence[str]) -> int:
    """The front door's entry: ``greenserve <name> <argv…>`` (``greenserve bench-energy``)."""
    return main(list(argv), prog=f"greenserve {name}")


if __name__ == "__main__":
    raise SystemExit(main())
