"""``greenserve simulate``: predict a batching configuration's figures from a trace and a model profile.

``greenserve simulate --trace t.jsonl --profile results/profile-digits_cnn.csv --max-batch-size 32``

``--max-batch-size`` and ``--max-wait-ms`` take comma-separated lists: every combination is
simulated (a grid, the sweep's: ``greedy`` among the sizes adds its greedy mode) and printed as one
table; ``--out`` writes the rows as CSV, with the sweep's ``key`` to join them with measured rows.

``--batching adaptive --slo-p99-ms 200`` (or ``latency-adaptive``) has the server's policy of that name
(:mod:`service.adaptive`, built as the server builds it, seeded from the profile as a server given
``--batching-profile`` is) decide every cut instead of the static rule: each ``--max-batch-size`` is
then its cap, and ``--max-wait-ms`` does not apply.
Bad input (a trace or profile that cannot be read, a bad value) is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rich import box
from rich.console import Console
from rich.table import Table

from loadgen.errors import GridError
from loadgen.simulate import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_TIMEOUT_MS,
    SimConfig,
    SimResult,
    grid,
    profile_seed,
    simulate_grid,
    write_results,
)
from loadgen.trace import read_trace
from service.policy import POLICY_NAMES, BatchPolicy, make_policy
from studies.profile.format import ModelProfile, read_profile
from studies.sweep.settings import GREEDY

#: As the sweep's: greedy mode without a size to take the largest of.
DEFAULT_GREEDY_MAX_BATCH_SIZE = 128

N = TypeVar("N", int, float)


def parse_list(text: str, flag: str, kind: Callable[[str], N]) -> tuple[N, ...]:
    """``"1,8,32"`` → ``(1, 8, 32)``, duplicates dropped (values are checked by :class:`SimConfig`)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(kind(part))
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise GridError(f"{flag}: {part!r} is not {what}") from None
    if not values:
        raise GridError(f"{flag}: no value in {text!r}")
    return tuple(dict.fromkeys(values))


def parse_sizes(text: str) -> tuple[tuple[int, ...], bool]:
    """``--max-batch-size``: integers and/or ``greedy`` (the sweep's greedy mode); returns the
    sizes and whether greedy was asked for."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    greedy = any(part.lower() == GREEDY for part in parts)
    rest = ",".join(part for part in parts if part.lower() != GREEDY)
    sizes = parse_list(rest, "--max-batch-size", int) if rest or not greedy else ()
    return sizes, greedy


def parse_timeout(text: str) -> float | None:
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise GridError(f"--timeout-ms: {text!r} is not a number (or 'none')") from None


def policy_factory(
    batching: str, slo_p99_ms: float | None, profile: ModelProfile
) -> Callable[[SimConfig], BatchPolicy] | None:
    """A fresh policy per configuration for ``--batching`` (None for ``static``: the configuration's
    own rule, which is the static policy to the bit). Built by :func:`service.policy.make_policy`, as
    the server builds it, with the profile as its seed; one that cannot be built (no
    ``service.adaptive``, a bad objective) is a :class:`GridError`, raised before the first run."""
    if batching == "static":
        if slo_p99_ms is not None:
            raise GridError("--slo-p99-ms applies to --batching adaptive or latency-adaptive, not static")
        return None
    if slo_p99_ms is None:
        raise GridError(f"--batching {batching} needs --slo-p99-ms, the p99 latency objective")
    seed = profile_seed(profile)

    def build(config: SimConfig) -> BatchPolicy:
        try:  # service.adaptive is imported only here, by make_policy
            return make_policy(
                batching,
                max_batch_size=config.max_batch_size,
                max_wait_ms=config.max_wait_ms,
                slo_p99_ms=slo_p99_ms,
                seed=seed,
            )
        except ImportError as exc:
            raise GridError(f"--batching {batching}: the policy cannot be loaded ({exc})") from None
        except ValueError as exc:
            raise GridError(f"--batching {batching}: {exc}") from None

    return build


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def render(results: list[SimResult], console: Console, *, title: str) -> None:
    """One row per configuration: latencies in ms, energy in mJ per request (a column narrow
    enough for 80 columns), ``busy``: the fraction of the run the model was computing."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in (
        "batch",
        "wait",
        "ok",
        "req/s",
        "p50",
        "p90",
        "p99",
        "mean b",
        "mJ/req",
        "429",
        "504",
        "busy",
    ):
        table.add_column(column, justify="right")
    for result in results:
        f = result.figures
        table.add_row(
            str(result.config.max_batch_size),
            # A policy other than the static rule chooses its own wait (the title names it).
            f"{result.config.max_wait_ms:g}" if result.batching == "static" else "auto",
            str(f.completed),
            f"{f.throughput_rps:.1f}",
            _ms(f.latency_p50_ms),
            _ms(f.latency_p90_ms),
            _ms(f.latency_p99_ms),
            "-" if f.mean_batch_size is None else f"{f.mean_batch_size:.3g}",
            "-" if f.j_per_request is None else f"{f.j_per_request * 1000:.3g}",
            str(f.rejected_queue_full),
            str(f.rejected_deadline),
            f"{result.busy_fraction:.1%}",
        )
    console.print(table)


def _run(args: argparse.Namespace) -> int:
    sizes, greedy = parse_sizes(args.max_batch_size)
    waits = parse_list(args.max_wait_ms, "--max-wait-ms", float)
    if args.batching != "static" and (greedy or len(waits) > 1):
        what = "greedy" if greedy else "several --max-wait-ms"
        raise GridError(f"--batching {args.batching} chooses its own wait: {what} does not apply")
    greedy_size = args.greedy_max_batch_size or max(sizes, default=DEFAULT_GREEDY_MAX_BATCH_SIZE)
    trace = read_trace(args.trace)
    profile = read_profile(args.profile)
    policy = policy_factory(args.batching, args.slo_p99_ms, profile)
    base = SimConfig(
        max_batch_size=greedy_size,
        max_wait_ms=waits[0],
        max_queue=args.max_queue,
        max_concurrent_batches=args.max_concurrent_batches,
        timeout_ms=parse_timeout(args.timeout_ms),
        compute_scale=args.compute_scale,
        energy_scale=args.energy_scale,
        service_cv=args.service_cv,
        seed=args.seed,
        batch_overhead_ms=args.batch_overhead_ms,
        pre_queue_ms=args.pre_queue_ms,
        post_batch_ms=args.post_batch_ms,
        overhead_j_per_request=args.overhead_j_per_request,
    )
    if args.overheads_from_profile or args.calibrate_from is not None:
        base = base.with_profile_overheads(profile)
    if args.calibrate_from is not None:
        from loadgen.calibrate import calibrate

        calibration = calibrate(profile, args.calibrate_from)
        base = calibration.apply(base)
        print(f"calibrated on {', '.join(map(str, args.calibrate_from))}: {calibration.describe()}")
    configs = grid(  # each one checked on creation
        base, max_batch_sizes=sizes, max_waits_ms=waits, greedy_max_batch_size=greedy_size if greedy else None
    )
    results = simulate_grid(trace, profile, configs, policy)
    console = Console()
    batching = "" if policy is None else f", batching {args.batching} under p99 {args.slo_p99_ms:g} ms"
    render(
        results,
        console,
        title=(
            f"SIMULATED {profile.model} on {profile.device} ({profile.energy_source}), "
            f"{len(trace)} arrivals in {trace.duration_s:.3g} s{batching}"
        ),
    )
    if args.out is not None:
        write_results(results, args.out)
        console.print(f"saved {args.out}")
    return 0


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not finite: {text}")
    return value


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", type=Path, required=True, help="Arrival trace (.jsonl or .csv).")
    parser.add_argument("--profile", type=Path, required=True, help="Model profile (greenserve profile).")
    parser.add_argument(
        "--max-batch-size",
        default=str(DEFAULT_MAX_BATCH_SIZE),
        help=(
            "Comma-separated integers and/or 'greedy' (the sweep's greedy mode: the largest size, "
            "max wait 0); each one is simulated (default: %(default)s)."
        ),
    )
    parser.add_argument(
        "--greedy-max-batch-size",
        type=int,
        default=None,
        help=f"Greedy mode's max batch size (default: the largest, else {DEFAULT_GREEDY_MAX_BATCH_SIZE}).",
    )
    parser.add_argument(
        "--max-wait-ms",
        default=f"{DEFAULT_MAX_WAIT_MS:g}",
        help="Comma-separated, 0 = greedy: each one is simulated with each size (default: %(default)s).",
    )
    parser.add_argument(
        "--batching",
        choices=POLICY_NAMES,
        default="static",
        help=(
            "Who cuts the batches: the static rule (--max-batch-size, --max-wait-ms), or the server's "
            "adaptive or latency-adaptive policy under --slo-p99-ms, seeded from the profile, with "
            "--max-batch-size as its cap (default: %(default)s)."
        ),
    )
    parser.add_argument(
        "--slo-p99-ms",
        type=_float,
        default=None,
        help="The adaptive policies' p99 latency objective (ms).",
    )
    parser.add_argument(
        "--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="Queued requests before 429."
    )
    parser.add_argument("--max-concurrent-batches", type=int, default=1, help="Batches computed at once.")
    parser.add_argument(
        "--timeout-ms",
        default=f"{DEFAULT_TIMEOUT_MS:g}",
        help="Every request's deadline for compute to start, or 'none' (default: the server's, %(default)s).",
    )
    costs = parser.add_argument_group("costs outside the profile (docs/simulator.md; default 0)")
    costs.add_argument("--compute-scale", type=_float, default=1.0, help="Batch latency multiplier.")
    costs.add_argument("--energy-scale", type=_float, default=1.0, help="Batch energy multiplier.")
    costs.add_argument(
        "--service-cv", type=_float, default=0.0, help="Coefficient of variation of batch times (gamma)."
    )
    costs.add_argument("--seed", type=int, default=0, help="Seed of the random service times.")
    costs.add_argument("--batch-overhead-ms", type=_float, default=0.0, help="Added to each batch.")
    costs.add_argument("--pre-queue-ms", type=_float, default=0.0, help="Arrival to queue entry (decode).")
    costs.add_argument("--post-batch-ms", type=_float, default=0.0, help="Batch end to response.")
    costs.add_argument(
        "--overhead-j-per-request",
        type=_float,
        default=0.0,
        help="Per-request energy charged to the running batch.",
    )
    costs.add_argument(
        "--overheads-from-profile",
        action="store_true",
        help="Take --pre-queue-ms and --overhead-j-per-request from the profile's decode cost.",
    )
    costs.add_argument(
        "--calibrate-from",
        type=Path,
        action="append",
        metavar="RUN_DIR",
        help=(
            "Measure the serving costs (batch time and energy lines, spread, response overhead) on a load "
            "test's output directory, e.g. one of a sweep's runs/; repeat it to fit on several runs "
            "(best: one with small and one with large batches). Implies --overheads-from-profile."
        ),
    )
    parser.add_argument("--out", type=Path, default=None, help="Write the results as CSV.")
    parser.set_defaults(handler=_run)
