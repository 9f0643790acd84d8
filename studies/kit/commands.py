"""How a lab command runs: a usage error and a user error (:class:`~studies.kit.errors.LabError`) are
each one line on stderr with exit status 2, and a reader that leaves a pipe (``… | head``) is not an
error. For the packages' CLIs, so that every lab command answers the same way."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from studies.kit.errors import LabError


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``greenserve zoo run: error: …``) and status 2
    (argparse's own prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_handler(prog: str, handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``handler(args)``'s exit status; a :class:`LabError` is printed as ``<prog>: <message>`` on
    stderr and gives 2; a closed stdout pipe gives 0."""
    try:
        return handler(args)
    except LabError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader left. Point stdout at devnull so that the interpreter's final flush does not
        # raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_study(
    name: str,
    argv: list[str],
    build_parser: Callable[[str], argparse.ArgumentParser],
    handler: Callable[[argparse.Namespace], int],
) -> int:
    """A study's ``greenserve <name> <argv…>``: INFO logs with times (httpx's one line per readiness
    poll of a server left out), the parser built for ``greenserve <name>``, then :func:`run_handler`."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = build_parser(f"greenserve {name}")
    return run_handler(parser.prog, handler, parser.parse_args(argv))
