"""The ``greenserve`` command: one front door over each package's own sub-commands.

Each command belongs to one package, which parses its own flags. The table below says which; a
package's module is imported only when one of its commands runs (or for ``--help``), so
``greenserve serve`` imports the server and nothing of the lab (``loadgen``, ``trainer``,
``studies``: tests/test_layout.py checks it). The lab's packages need the ``load``/``train``/
``studies`` extras; a base install that lacks them says which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from greenserve import __version__


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # imported when the command runs; its ``run(name, argv)`` runs it (the exit code)
    help: str
    extra: str | None = None  # the pip extra the package needs beyond the base install


COMMANDS: tuple[Command, ...] = (
    # The server's own.
    Command("serve", "service.cli", "Start the HTTP server."),
    Command(
        "train-default",
        "service.cli",
        "Re-create the embedded digits model checkpoint.",
        extra="train",
    ),
    # Traffic: traces, load tests, the queue simulator.
    Command("trace", "loadgen.cli", "Generate, inspect and check arrival traces.", "load"),
    Command(
        "loadtest",
        "loadgen.cli",
        "Replay a trace (or closed-loop users) against a server with Locust.",
        "load",
    ),
    Command(
        "simulate",
        "loadgen.cli",
        "Predict a configuration's figures from a trace and a model profile (no server).",
        "load",
    ),
    # The inference-side studies.
    Command(
        "profile",
        "studies.profile.cli",
        "Offline model profile: latency and J/image per batch size (no HTTP).",
        "studies",
    ),
    Command(
        "sweep",
        "studies.sweep.cli",
        "Serve each batching configuration of a grid, replay a trace, record the figures.",
        "studies",
    ),
    Command(
        "bench-adaptive",
        "studies.adaptive.cli",
        "Adaptive batching vs every static setting of a grid, a Triton-like and a latency-adaptive "
        "baseline on 3 traces (make bench-adaptive).",
        "studies",
    ),
    Command(
        "zoo",
        "studies.zoo.cli",
        "Model-zoo study: energy per image vs accuracy of 2012-2022 networks (greenserve zoo --help).",
        "studies",
    ),
    Command(
        "bench",
        "studies.serving.cli",
        "Serving benchmark: offline vs served throughput and J/image, no-op overhead (make bench).",
        "studies",
    ),
    Command(
        "bench-energy",
        "studies.accounting.cli",
        "Energy accounting vs a known truth: 0 J responses, closure, J/request, p99/p50 (make bench-energy).",
        "studies",
    ),
    Command(
        "bench-sim",
        "studies.simcheck.cli",
        "Simulator vs real server: p99 and J/request errors (make bench-sim).",
        "studies",
    ),
    # The training-side studies.
    Command(
        "train",
        "trainer.cli",
        "Training-side energy experiments: HPO strategies, CNN-layer ablation (greenserve train --help).",
        "train",
    ),
)
BY_NAME = {command.name: command for command in COMMANDS}

#: Modules each extra brings, checked before a command of the lab runs (found, not imported: Locust
#: patches the standard library when imported).
EXTRA_MODULES = {
    "load": ("locust", "httpx", "matplotlib"),
    "train": ("sklearn", "optuna", "scipy", "matplotlib"),
    "studies": ("locust", "httpx", "sklearn", "scipy", "matplotlib"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def build_parser() -> argparse.ArgumentParser:
    """The top level only (each command's own flags are its package's: ``greenserve CMD --help``)."""
    parser = argparse.ArgumentParser(
        prog="greenserve",
        description="Energy-aware image-classification serving, and the lab that measures it.",
        epilog="Each command has its own --help. docs/architecture.md lists them all.",
    )
    parser.add_argument("--version", action="version", version=f"greenserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        commands.add_parser(command.name, help=command.help, add_help=False)
    return parser


def _missing_extra(command: Command) -> str | None:
    if command.extra is None:
        return None
    missing = [m for m in EXTRA_MODULES[command.extra] if not _installed(m)]
    if not missing:
        return None
    return (
        f"greenserve {command.name}: needs {', '.join(missing)}, which this installation lacks: "
        f"pip install 'greenserve[{command.extra}]'"
    )


def _load(command: Command) -> Callable[[str, list[str]], int]:
    message = _missing_extra(command)
    if message is not None:
        print(message, file=sys.stderr)
        raise SystemExit(2)
    try:
        module = importlib.import_module(command.module)
    except ImportError as exc:
        missing = exc.name or str(exc)
        hint = f"pip install 'greenserve[{command.extra}]'" if command.extra else "reinstall greenserve"
        print(
            f"greenserve {command.name}: needs {missing!r}, which this installation lacks: {hint}",
            file=sys.stderr,
        )
        raise SystemExit(2) from exc
    run: Callable[[str, list[str]], int] = module.run
    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in BY_NAME:
        command = BY_NAME[args[0]]
        return _load(command)(command.name, args[1:])
    build_parser().parse_args(args)  # --help, --version, or a usage error (exit 2)
    return 2  # pragma: no cover - parse_args exits for every argv that names no command


if __name__ == "__main__":
    raise SystemExit(main())
