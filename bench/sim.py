"""Simulator validation: does ``greenserve simulate`` predict what a real sweep measures?

``make bench-sim`` (``python -m bench.sim``), for each model:

1. profiles it offline (:func:`loadgen.profile.profile_model`: latency and J per batch size, and
   the decode cost per image), as ``greenserve profile`` does;
2. for each trace (the study's 16 req/s ± 20 %, and a bursty on/off stream of the same mean
   rate), serves each configuration for real and replays the trace with Locust
   (:func:`loadgen.sweep.run_sweep`, so the runs are resumable and land in a sweep CSV);
3. calibrates the simulator's serving costs on TWO of those runs per model: the greedy
   configuration on the steady trace (batches of 1) and the largest batch size with the longest
   wait on the bursty one (:mod:`loadgen.calibrate` fits batch time against size and arrivals,
   which needs small and large batches, steady and bursty arrivals), then simulates
   every other configuration, on both traces, from the trace, the profile and that calibration
   alone, and reports the simulator's relative error on p99 latency and J/request against the
   measurement, with the ±15 % target. Calibration runs are listed but left out of the statistics.

Everything lands in ``results/bench-sim/`` (profiles, sweep CSVs, ``report.json``, ``report.md``);
the figures are printed. Measured and predicted energy carry the same source (the profile's and
the server's meter are the same kind).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadgen.calibrate import Calibration, calibrate
from loadgen.errors import LoadgenError
from loadgen.profile import ModelProfile, profile_model, read_profile, write_profile
from loadgen.simulate import DEFAULT_TIMEOUT_MS, SimConfig, simulate
from loadgen.sweep import CSV_NAME, SweepSettings, configurations, read_rows, run_sweep
from loadgen.trace import Trace, bursty, read_trace, uniform_jitter, write_trace

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("results/bench-sim")
DEFAULT_MODELS = ("digits_cnn", "shufflenet_v2_x0_5")
#: Configurations per model: (max_batch_size, max_wait_ms); "greedy" is added by the sweep.
DEFAULT_BATCH_SIZES = ("16", "64", "greedy")  # greedy is the calibration run: keep it
DEFAULT_WAITS_MS = (200.0, 1000.0)
PROFILE_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
TOLERANCE = 0.15


@dataclass(frozen=True)
class SimBenchSettings:
    models: tuple[str, ...] = DEFAULT_MODELS
    batch_sizes: tuple[str, ...] = DEFAULT_BATCH_SIZES
    max_waits_ms: tuple[float, ...] = DEFAULT_WAITS_MS
    rate: float = 16.0
    duration_s: float = 30.0
    torch_threads: int = 1
    energy_source: str = "auto"
    repeats: int = 10
    reuse_profiles: bool = False
    tolerance: float = TOLERANCE
    out: Path = DEFAULT_OUT


def make_traces(settings: SimBenchSettings) -> dict[str, Path]:
    """The two traces, written once into the results directory (kept, so that runs resume)."""
    traces: dict[str, Trace] = {
        "jitter": uniform_jitter(settings.rate, 0.2, settings.duration_s, seed=0),
        # On/off: twice the rate half of the time, exponential 2 s phases: the same mean rate.
        "bursty": bursty(2 * settings.rate, 0.0, 2.0, 2.0, settings.duration_s, seed=0),
    }
    paths = {}
    for name, trace in traces.items():
        path = settings.out / f"trace-{name}-{settings.rate:g}rps-{settings.duration_s:g}s.jsonl"
        if not path.exists():
            write_trace(trace, path)
        paths[name] = path
    return paths


def model_profile(model: str, settings: SimBenchSettings, console: Console) -> ModelProfile:
    path = settings.out / f"profile-{model}.csv"
    if settings.reuse_profiles and path.exists():
        return read_profile(path)
    console.print(f"profiling {model} offline ({', '.join(map(str, PROFILE_BATCH_SIZES))}) …")
    profile = profile_model(
        model,
        batch_sizes=PROFILE_BATCH_SIZES,
        repeats=settings.repeats,
        torch_threads=settings.torch_threads,
        energy_source=settings.energy_source,
    )
    write_profile(profile, path)
    return profile


def _error(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None or measured == 0:
        return None
    return predicted / measured - 1.0


def compare(
    rows: Sequence[dict[str, str]],
    trace: Trace,
    profile: ModelProfile,
    calibration: Calibration,
    tolerance: float,
) -> list[dict[str, Any]]:
    """Simulate every measured row's configuration; errors are predicted ÷ measured − 1."""
    out = []
    for row in rows:
        if row["status"] != "ok" or row["model"] != profile.model:
            continue
        timeout = float(row["timeout_ms"]) if row["timeout_ms"] else None
        config = SimConfig(
            max_batch_size=int(row["max_batch_size"]),
            max_wait_ms=float(row["max_wait_ms"]),
            max_queue=int(row["max_queue"]),
            timeout_ms=timeout if timeout is not None else DEFAULT_TIMEOUT_MS,
        )
        config = calibration.apply(config.with_profile_overheads(profile))
        predicted = simulate(trace, profile, config).figures
        p99_error = _error(predicted.latency_p99_ms, float(row["latency_p99_ms"]))
        j_error = _error(predicted.j_per_request, float(row["j_per_request"]))
        within = [e for e in (p99_error, j_error) if e is not None]
        out.append(
            {
                "key": row["key"],
                "model": row["model"],
                "measured": {
                    "latency_p99_ms": float(row["latency_p99_ms"]),
                    "j_per_request": float(row["j_per_request"]),
                    "mean_batch_size": float(row["mean_batch_size"]) if row["mean_batch_size"] else None,
                    "energy_source": row["energy_source"],
                },
                "predicted": dataclasses.asdict(predicted),
                "p99_error": p99_error,
                "j_error": j_error,
                "within_tolerance": bool(within) and all(abs(e) <= tolerance for e in within),
            }
        )
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def render(report: dict[str, Any], console: Console) -> None:
    sources = sorted({c["measured"]["energy_source"] for c in report["comparisons"]})
    table = Table(
        title=f"simulator vs sweep (target ±{report['tolerance']:.0%}); energy source: {', '.join(sources)}"
    )
    for column in (
        "trace",
        "configuration",
        "p99 ms meas/sim",
        "err",
        "J/req meas/sim",
        "err",
        "batch meas/sim",
    ):
        table.add_column(column, justify="right" if column != "configuration" else "left")
    for item in report["comparisons"]:
        m, p = item["measured"], item["predicted"]
        ok = "green" if item["within_tolerance"] else "red"
        table.add_row(
            item["trace"],
            item["key"] + (" (calibration)" if item["calibration_run"] else ""),
            f"{m['latency_p99_ms']:.0f} / {p['latency_p99_ms']:.0f}",
            f"[{ok}]{_pct(item['p99_error'])}[/]",
            f"{m['j_per_request']:.3g} / {p['j_per_request']:.3g}",
            f"[{ok}]{_pct(item['j_error'])}[/]",
            f"{m['mean_batch_size'] or float('nan'):.1f} / {p['mean_batch_size'] or float('nan'):.1f}",
        )
    console.print(table)
    s = report["summary"]
    console.print(
        f"{s['within']} of {s['count']} validated configurations (calibration runs excluded) "
        f"within ±{report['tolerance']:.0%} on both; "
        f"mean |error| p99 {s['mean_abs_p99_error']:.1%}, J/request {s['mean_abs_j_error']:.1%}; "
        f"max |error| p99 {s['max_abs_p99_error']:.1%}, J/request {s['max_abs_j_error']:.1%}"
    )


def summarize(comparisons: Sequence[dict[str, Any]]) -> dict[str, Any]:
    comparisons = [c for c in comparisons if not c["calibration_run"]]
    p99 = [abs(c["p99_error"]) for c in comparisons if c["p99_error"] is not None]
    joules = [abs(c["j_error"]) for c in comparisons if c["j_error"] is not None]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else math.nan

    return {
        "count": len(comparisons),
        "within": sum(1 for c in comparisons if c["within_tolerance"]),
        "mean_abs_p99_error": mean(p99),
        "mean_abs_j_error": mean(joules),
        "max_abs_p99_error": max(p99, default=math.nan),
        "max_abs_j_error": max(joules, default=math.nan),
    }


def run(settings: SimBenchSettings, console: Console) -> dict[str, Any]:
    settings.out.mkdir(parents=True, exist_ok=True)
    traces = make_traces(settings)
    profiles = {model: model_profile(model, settings, console) for model in settings.models}
    sweep_settings = SweepSettings(
        models=settings.models,
        batch_sizes=settings.batch_sizes,
        max_waits_ms=settings.max_waits_ms,
        torch_threads=settings.torch_threads,
        energy_source=settings.energy_source,
    )
    rows: dict[str, list[dict[str, str]]] = {}
    for name, trace_path in traces.items():
        console.print(f"sweep on the {name} trace ({trace_path}) …")
        run_sweep(sweep_settings, trace_path, settings.out / f"sweep-{name}")
        rows[name] = read_rows(settings.out / f"sweep-{name}" / CSV_NAME)
    # Per model, two calibration runs: greedy on the first trace (small batches at a steady rate)
    # and the largest batches with the longest wait on the second (large batches, bursts).
    first, second = list(traces)
    calibrations: dict[str, Calibration] = {}
    for model, profile in profiles.items():
        mine = [c for c in configurations(sweep_settings) if c.model == model]
        greedy = next(c for c in mine if c.greedy)
        largest = max((c for c in mine if not c.greedy), key=lambda c: (c.max_batch_size, c.max_wait_ms))
        chosen = [(first, greedy), (second, largest)]
        calibrations[model] = calibrate(
            profile,
            [settings.out / f"sweep-{name}" / "runs" / c.slug for name, c in chosen],
            source_keys=[f"{name}:{c.key}" for name, c in chosen],
        )
        console.print(f"{model} calibrated on {first} {greedy.key} and {second} {largest.key}:")
        console.print(f"  {calibrations[model].describe()}")
    comparisons: list[dict[str, Any]] = []
    for name, trace_path in traces.items():
        trace = read_trace(trace_path)
        for model, profile in profiles.items():
            for item in compare(rows[name], trace, profile, calibrations[model], settings.tolerance):
                item["calibration_run"] = f"{name}:{item['key']}" in calibrations[model].source_keys
                comparisons.append({"trace": name, **item})
    report = {
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()
        },
        "tolerance": settings.tolerance,
        "profiles": {m: str(settings.out / f"profile-{m}.csv") for m in settings.models},
        "calibrations": {
            m: {**dataclasses.asdict(c), "post_batch_samples_ms": len(c.post_batch_samples_ms)}
            for m, c in calibrations.items()
        },
        "comparisons": comparisons,
        "summary": summarize(comparisons),
    }
    (settings.out / "report.json").write_text(
        json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8"
    )
    return report


def build_parser() -> argparse.ArgumentParser:
    defaults = SimBenchSettings()
    parser = argparse.ArgumentParser(prog="python -m bench.sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(defaults.models))
    parser.add_argument("--batch-sizes", default=",".join(defaults.batch_sizes))
    parser.add_argument("--max-waits-ms", default=",".join(f"{w:g}" for w in defaults.max_waits_ms))
    parser.add_argument("--rate", type=float, default=defaults.rate)
    parser.add_argument("--duration", type=float, default=defaults.duration_s)
    parser.add_argument("--torch-threads", type=int, default=defaults.torch_threads)
    parser.add_argument("--energy-source", default=defaults.energy_source)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--reuse-profiles", action="store_true", help="use profiles already in --out")
    parser.add_argument("--out", type=Path, default=defaults.out)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    args = build_parser().parse_args(argv)
    try:
        settings = SimBenchSettings(
            models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
            batch_sizes=tuple(b.strip() for b in args.batch_sizes.split(",") if b.strip()),
            max_waits_ms=tuple(float(w) for w in args.max_waits_ms.split(",") if w.strip()),
            rate=args.rate,
            duration_s=args.duration,
            torch_threads=args.torch_threads,
            energy_source=args.energy_source,
            repeats=args.repeats,
            reuse_profiles=args.reuse_profiles,
            out=args.out,
        )
    except ValueError as exc:
        print(f"bench.sim: {exc}", file=sys.stderr)
        return 2
    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    try:
        report = run(settings, console)
    except LoadgenError as exc:
        print(f"bench.sim: {exc}", file=sys.stderr)
        return 2
    render(report, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
