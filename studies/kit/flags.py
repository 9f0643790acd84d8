"""Command-line flags, the same everywhere: generated from a study's settings dataclass (one source of
truth, as ``serve``'s flags are from its settings class), and the common names every command shares.

A settings field becomes ``--field-name``; ``tuple`` fields take comma lists (``--batch-sizes 1,4``),
``bool`` fields ``--quick`` / ``--no-quick``. A field may list older names in its metadata
(``field(default=…, metadata={"aliases": ("--threads",)})``): they keep working and are documented
as aliases. The common names (:data:`COMMON_FLAGS`) are the ones a user meets across commands:
``--torch-threads`` (not ``--threads``), ``--duration-s`` (not ``--duration``), ``--out``, ``--quick``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Where studies write by default.
DEFAULT_RESULTS = Path("results")

#: The names shared by every command that has the setting, and the old spellings kept as aliases.
COMMON_FLAGS: dict[str, tuple[str, ...]] = {
    "--torch-threads": ("--threads",),
    "--duration-s": ("--duration",),
}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _tuple_of(kind: Any) -> Any:
    convert = parse_bool if kind is bool else kind

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(convert(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc

    return parse


def _converter(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _converter(args[0])
    if origin is tuple:
        return _tuple_of(args[0] if args else str)
    if annotation is Path:
        return Path
    if annotation in (int, float, str):
        return annotation
    return str


def flag_names(name: str, aliases: Sequence[str] = ()) -> list[str]:
    """``--name`` for a settings field ``name``, then its aliases (its own and :data:`COMMON_FLAGS`')."""
    flag = "--" + name.replace("_", "-")
    return [flag, *aliases, *(a for a in COMMON_FLAGS.get(flag, ()) if a not in aliases)]


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of the settings dataclass ``cls`` (defaults shown in --help)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        names = flag_names(field.name, tuple(field.metadata.get("aliases", ())))
        default = field.default if field.default is not dataclasses.MISSING else None
        if default is None and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
        help_text = f"{field.metadata.get('help', '')} (default: {shown})".strip()
        if len(names) > 1:
            help_text += f" [alias: {', '.join(names[1:])}]"
        if hints[field.name] is bool:
            parser.add_argument(
                *names, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                *names, dest=field.name, type=_converter(hints[field.name]), default=None, help=help_text
            )


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build ``cls`` from the flags given; unspecified ones keep the dataclass defaults."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }
    return cls(**given)


def add_flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument`` under a common name, with its old spellings as aliases
    (``add_flag(parser, "--torch-threads", type=int)`` also accepts ``--threads``)."""
    aliases = COMMON_FLAGS.get(name, ())
    if aliases:
        kwargs["help"] = f"{kwargs.get('help', '')} [alias: {', '.join(aliases)}]".strip()
    return parser.add_argument(name, *aliases, **kwargs)
