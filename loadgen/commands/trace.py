"""``greenserve trace generate|stats|check``: make, summarise and validate arrival traces.

``generate`` has one sub-command per generator of :data:`loadgen.trace.GENERATORS`, its flags
built from the generator's parameter spec, so that a new generator needs no CLI code; a common
name (``--duration-s``) keeps its old spelling (``--duration``) as an alias. Every
mistake (a bad parameter, a malformed file) is a :class:`~loadgen.errors.TraceError`, which
:mod:`loadgen.cli` prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from loadgen.trace import (
    GENERATORS,
    Param,
    TraceKind,
    TraceStats,
    generate,
    read_trace,
    trace_stats,
    write_trace,
)
from studies.kit.flags import add_flag


def _print_stats(stats: TraceStats) -> None:
    rows = stats.rows()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def _add_param(parser: argparse.ArgumentParser, param: Param) -> None:
    shown = " ".join(f"{v:g}" for v in param.default) if isinstance(param.default, tuple) else param.default
    help_text = param.help if param.default is None else f"{param.help} Default: {shown}."
    help_text = help_text.replace("%", "%%")  # argparse %-formats help strings
    metavar = param.option.lstrip("-").replace("-", "_").upper()
    # add_flag: a common name (--duration-s) also takes its old spelling (--duration) as an alias.
    if param.kind == "floats":
        add_flag(parser, param.option, dest=param.name, type=float, nargs="+", metavar="RATE", help=help_text)
    else:
        kind = int if param.kind == "int" else float
        add_flag(parser, param.option, dest=param.name, type=kind, metavar=metavar, help=help_text)


def _generate(args: argparse.Namespace) -> int:
    kind: TraceKind = args.generator
    given = {p.name: getattr(args, p.name) for p in kind.params if getattr(args, p.name) is not None}
    trace = generate(kind.name, **given)
    out: Path = args.out
    write_trace(trace, out)
    params: dict[str, Any] = {p.name: given.get(p.name, p.default) for p in kind.params}
    # step has no duration parameter: its length is the number of steps × the step.
    rates = params.get("rates")
    duration_s = float(params["duration_s"] if rates is None else len(rates) * params["step_s"])
    shown = ", ".join(
        f"{name}={' '.join(f'{v:g}' for v in value) if isinstance(value, (tuple, list)) else value}"
        for name, value in params.items()
    )
    print(f"wrote {out}: {kind.name} ({shown})")
    _print_stats(trace_stats(trace, duration_s=duration_s, window_s=args.window))
    return 0


def _stats(args: argparse.Namespace) -> int:
    stats = trace_stats(read_trace(args.file), window_s=args.window)
    if args.json:
        print(json.dumps(dataclasses.asdict(stats)))
    else:
        print(f"{args.file}:")
        _print_stats(stats)
    return 0


def _check(args: argparse.Namespace) -> int:
    trace = read_trace(args.file)
    print(f"{args.file}: ok, {len(trace)} arrivals over {trace.duration_s:g} s")
    return 0


def _window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window", type=float, default=1.0, metavar="S", help="Window of the peak rate (s). Default: 1."
    )


def register(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    gen = actions.add_parser(
        "generate",
        help="Generate a trace and write it (.jsonl or .csv).",
        description="Generate a seeded arrival trace by kind, write it, and print its statistics.",
    )
    kinds = gen.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind in GENERATORS.values():
        # argparse %-formats help strings (not descriptions): "±20 %" must be written "%%".
        sub = kinds.add_parser(kind.name, help=kind.summary.replace("%", "%%"), description=kind.summary)
        sub.add_argument(
            "--out", type=Path, required=True, metavar="FILE", help="Trace file: .jsonl, .ndjson or .csv."
        )
        for param in kind.params:
            _add_param(sub, param)
        _window(sub)
        sub.set_defaults(handler=_generate, generator=kind)

    stats = actions.add_parser(
        "stats",
        help="Print a trace's statistics.",
        description="Arrivals, mean rate, inter-arrival mean and CV, and peak rate of a trace file.",
    )
    stats.add_argument("file", type=Path, metavar="FILE")
    _window(stats)
    stats.add_argument("--json", action="store_true", help="One JSON object instead of a table.")
    stats.set_defaults(handler=_stats)

    check = actions.add_parser(
        "check",
        help="Validate a trace file (exit 0 when usable, 2 otherwise).",
        description="Read a trace file as a replay would; a problem is reported with its line.",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(handler=_check)
