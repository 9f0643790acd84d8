"""The ``greenserve`` command. Each package owns its sub-commands; this module owns ``serve`` and
``train-default``. ``serve``'s flags are generated from :class:`service.config.Settings`, so every
setting is a flag and an environment variable (``GREENSERVE_<NAME>``) with one source of truth.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from service.config import Settings

logger = logging.getLogger(__name__)


def _flag_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """argparse ``type`` and ``choices`` for a settings field's annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if origin is typing.Literal:
        return str, [str(a) for a in typing.get_args(annotation)]
    if annotation in (int, float, str, Path):
        return annotation, None
    if annotation is SecretStr:
        return str, None
    return str, None


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"GREENSERVE_{name.upper()}"
        default = field.default
        shown = "" if isinstance(default, SecretStr) or default is None else f" (default: {default})"
        help_text = f"{field.description or ''}{shown} [env {env}]"
        if field.annotation is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        kind, choices = _flag_type(field.annotation)
        parser.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags given on the command line win over environment variables, which win over defaults."""
    given = {
        name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None
    }
    return Settings(**given)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"greenserve serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    from service.server import serve

    return serve(settings)


def _train_default(args: argparse.Namespace) -> int:
    configure_logging("info")
    from service import digits

    out = Path(args.out) if args.out else digits.default_checkpoint_path()
    result = digits.train(out, epochs=args.epochs, seed=args.seed)
    print(
        f"saved {out} ({out.stat().st_size / 1024:.0f} KiB): train accuracy {result['train_accuracy']:.4f}, "
        f"held-out accuracy {result['test_accuracy']:.4f}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greenserve", description="Energy-aware image-classification serving."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="Start the HTTP server.", description="Start the HTTP server.")
    add_settings_flags(serve)
    serve.set_defaults(handler=_serve)
    train = commands.add_parser(
        "train-default",
        help="Re-create the embedded digits model checkpoint.",
        description="Train the embedded digits CNN on scikit-learn's digits (held-out split untouched).",
    )
    train.add_argument("--out", help="Checkpoint path (default: the packaged service/assets/digits_cnn.pt).")
    train.add_argument("--epochs", type=int, default=60)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler=_train_default)
    # Each package owns its sub-command group (DESIGN.md). ``greenserve train …`` is handed to
    # trainer.cli whole (see main), so that serve does not import optuna, scipy and matplotlib:
    # listed here only for the top-level help.
    commands.add_parser("train", help="Training-side energy experiments: greenserve train --help.")
    commands.add_parser(  # handed to trainer.zoo_cli whole, like train
        "zoo",
        help="Model-zoo study: energy per image vs accuracy, 2012-2022 networks: greenserve zoo --help.",
    )
    # The load generator's commands are handed to loadgen.cli the same way.
    from loadgen.cli import COMMANDS as LOADGEN_COMMANDS

    for name, help_text in LOADGEN_COMMANDS.items():
        commands.add_parser(name, help=f"{help_text} (greenserve {name} --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from trainer.cli import main as train_main

        return train_main(argv[1:])
    if argv[:1] == ["zoo"]:
        from trainer.zoo_cli import main as zoo_main

        return zoo_main(argv[1:])
    from loadgen.cli import COMMANDS as LOADGEN_COMMANDS

    if argv[:1] and argv[0] in LOADGEN_COMMANDS:
        from loadgen.cli import main as loadgen_main

        return loadgen_main(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
