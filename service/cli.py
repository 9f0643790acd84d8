"""The server's own commands, ``serve`` and ``train-default`` (the front door, :mod:`greenserve.cli`,
hands them here; ``python -m service.cli serve`` works as well). ``serve``'s flags are generated
from :class:`service.config.Settings`, so every setting is a flag and an environment variable
(``GREENSERVE_<NAME>``) with one source of truth. Nothing here imports the lab.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr, ValidationError

from service import logs
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


def configure_logging(level: str, log_format: Literal["text", "json"] = "text") -> None:
    logs.configure_logging(level, log_format)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"greenserve serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    from service.server import serve

    return serve(settings)


def _train_default(args: argparse.Namespace) -> int:
    configure_logging("info")
    from service import digits

    out = Path(args.out) if args.out else digits.default_checkpoint_path()
    try:
        result = digits.train(out, epochs=args.epochs, seed=args.seed)
    except ModuleNotFoundError as exc:  # the digits data ship with scikit-learn: the train extra
        print(
            f"greenserve train-default: needs {exc.name!r}: pip install 'greenserve[train]'", file=sys.stderr
        )
        return 2
    print(
        f"saved {out} ({out.stat().st_size / 1024:.0f} KiB): train accuracy {result['train_accuracy']:.4f}, "
        f"held-out accuracy {result['test_accuracy']:.4f}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greenserve", description="The greenserve server's commands.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", prog="greenserve serve", help="Start the HTTP server.", description="Start the HTTP server."
    )
    add_settings_flags(serve)
    serve.set_defaults(handler=_serve)
    train = commands.add_parser(
        "train-default",
        prog="greenserve train-default",
        help="Re-create the embedded digits model checkpoint.",
        description="Train the embedded digits CNN on scikit-learn's digits (held-out split untouched).",
    )
    train.add_argument("--out", help="Checkpoint path (default: the packaged service/assets/digits_cnn.pt).")
    train.add_argument("--epochs", type=int, default=60)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler=_train_default)
    return parser


def run(command: str, argv: Sequence[str]) -> int:
    """``greenserve <command> <argv…>`` for the server's commands (the front door's entry)."""
    return main([command, *argv])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
