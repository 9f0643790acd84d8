"""``greenserve trace|simulate|loadtest …``: the load generator's sub-command group (the studies that
use it, ``profile`` and ``sweep``, are :mod:`studies`' own commands).

The front door (:mod:`greenserve.cli`) hands these arguments here whole (:func:`run`), so that
``serve`` imports none of this. Each command lives in :mod:`loadgen.commands` with a ``register(subparsers)``
function; a :class:`~loadgen.errors.LoadgenError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from studies.kit.errors import LabError

#: Command name → module in loadgen.commands that registers it.
COMMANDS = {
    "trace": "Generate, inspect and check arrival traces.",
    "simulate": "Predict a configuration's figures from a trace and a model profile (no server).",
}


def build_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"greenserve {command}", description=COMMANDS[command])
    module = importlib.import_module(f"loadgen.commands.{command}")
    module.register(parser)
    return parser


def main(command: str, argv: Sequence[str]) -> int:
    """Run ``greenserve <command> <argv…>``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll is noise
    args = build_parser(command).parse_args(list(argv))
    try:
        code: int = args.handler(args)
    except LabError as exc:  # LoadgenError, or the kit's own
        print(f"greenserve {command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # ``greenserve trace stats … | head``: the reader left; not an error of ours. Point stdout
        # at devnull so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


def run(command: str, argv: Sequence[str]) -> int:
    """The front door's entry: ``greenserve <command> <argv…>``."""
    if command == "loadtest":
        from loadgen.loadtest import main as loadtest_main

        return loadtest_main(list(argv))
    return main(command, argv)
