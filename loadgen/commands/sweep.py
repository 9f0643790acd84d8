"""``greenserve sweep``: serve each batching configuration of a grid and replay one trace against it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadgen import sweep
from loadgen.errors import GridError

DEFAULT_OUT = Path("results/sweep")


def _csv_of(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc

    return parse


def register(parser: argparse.ArgumentParser) -> None:
    defaults = sweep.SweepSettings()
    grid = parser.add_argument_group("grid")
    grid.add_argument(
        "--models", type=_csv_of(str), default=defaults.models, help="comma-separated (default: %(default)s)"
    )
    grid.add_argument(
        "--batch-sizes",
        type=_csv_of(str),
        default=defaults.batch_sizes,
        help="max_batch_size values and/or 'greedy' (default: 16,32,64,128,greedy — the study's sizes)",
    )
    grid.add_argument(
        "--max-waits-ms",
        type=_csv_of(float),
        default=defaults.max_waits_ms,
        help="max_wait_ms values (default: %(default)s)",
    )
    grid.add_argument(
        "--greedy-max-batch-size", type=int, help="greedy mode's max_batch_size (default: the largest size)"
    )
    fixed = parser.add_argument_group("fixed across the grid")
    fixed.add_argument("--max-queue", type=int, default=defaults.max_queue)
    fixed.add_argument("--timeout-ms", type=float, help="per-request deadline sent as X-Request-Timeout-Ms")
    fixed.add_argument(
        "--weights", help="weights for every model (default: embedded digits_cnn, random otherwise)"
    )
    fixed.add_argument("--device", default=defaults.device)
    fixed.add_argument("--torch-threads", type=int, default=defaults.torch_threads)
    fixed.add_argument(
        "--energy-source",
        default=defaults.energy_source,
        choices=("auto", "nvml", "rapl", "estimate", "synthetic"),
        help="the server's --energy-source (synthetic: a known-truth test source, not a measurement)",
    )
    fixed.add_argument("--images", help="'digits', 'photos' or a directory (default: per model)")
    trace = parser.add_argument_group("trace (default: the study's 16 req/s ±20 %% for 30 s)")
    trace.add_argument(
        "--trace", type=Path, help="a trace file (JSON Lines or CSV); default: generated into --out"
    )
    trace.add_argument("--rate", type=float, default=sweep.DEFAULT_TRACE_RATE, help="generated trace: req/s")
    trace.add_argument(
        "--jitter", type=float, default=sweep.DEFAULT_TRACE_JITTER, help="generated trace: ± fraction"
    )
    trace.add_argument(
        "--duration", type=float, default=sweep.DEFAULT_TRACE_DURATION_S, help="generated trace: s"
    )
    trace.add_argument("--seed", type=int, default=0, help="generated trace: seed")
    parser.add_argument(
        "--p99-target-ms", type=float, default=defaults.p99_target_ms, help="for the recommendation"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results directory (default: %(default)s)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="redraw the report from the CSV; run nothing"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_handle)


def _trace_path(args: argparse.Namespace) -> Path:
    if args.trace is not None:
        return Path(args.trace)
    from loadgen.trace import uniform_jitter, write_trace

    path = Path(args.out) / f"trace-jitter-{args.rate:g}rps-{args.duration:g}s-seed{args.seed}.jsonl"
    if not path.exists():
        write_trace(uniform_jitter(args.rate, args.jitter, args.duration, seed=args.seed), path)
    return path


def _handle(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.report_only:
        csv_path = out / sweep.CSV_NAME
        if not csv_path.exists():
            raise GridError(f"{csv_path} does not exist: nothing to report")
        for path in sweep.write_report(csv_path, out, p99_target_ms=args.p99_target_ms):
            print(f"wrote {path}")
        return 0
    settings = sweep.SweepSettings(
        models=args.models,
        batch_sizes=args.batch_sizes,
        max_waits_ms=args.max_waits_ms,
        greedy_max_batch_size=args.greedy_max_batch_size,
        max_queue=args.max_queue,
        timeout_ms=args.timeout_ms,
        weights=args.weights,
        device=args.device,
        torch_threads=args.torch_threads,
        energy_source=args.energy_source,
        images=args.images,
        p99_target_ms=args.p99_target_ms,
    )
    sweep.configurations(settings)  # a bad grid fails before a trace is written
    result = sweep.run_sweep(settings, _trace_path(args), out, progress=not args.no_progress)
    print(f"{result.ran} configuration(s) run, {result.skipped} already done, {result.failed} failed")
    for path in [result.csv_path, *result.outputs]:
        print(f"wrote {path}")
    print((out / "summary.md").read_text(encoding="utf-8"))
    return 1 if result.failed else 0
