"""The simulator check's measurement: traces, offline profiles, the real sweeps, the calibration, and
the simulator's prediction of every measured configuration (:func:`run`).

The sweeps resume (their rows are kept in ``<out>/sweep-<trace>/``), and so does the whole check:
rerun it with the same settings and only what is missing is measured.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from loadgen.calibrate import Calibration, calibrate
from loadgen.simulate import DEFAULT_TIMEOUT_MS, SimConfig, simulate
from loadgen.trace import Trace, bursty, read_trace, uniform_jitter, write_trace
from studies.kit.files import write_text_atomic
from studies.kit.progress import announce
from studies.profile.format import ModelProfile, read_profile, write_profile
from studies.profile.run import profile_model
from studies.simcheck.report import summarize
from studies.simcheck.settings import PROFILE_BATCH_SIZES, SimCheckSettings
from studies.sweep.run import estimate_s as sweep_estimate_s
from studies.sweep.run import run_sweep
from studies.sweep.settings import configurations
from studies.sweep.table import CSV_NAME, read_rows

#: A rough guess of one model's offline profile (every batch size, its repeats), for the estimate.
PROFILE_ESTIMATE_S = 60.0


def make_traces(settings: SimCheckSettings) -> dict[str, Path]:
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


def model_profile(model: str, settings: SimCheckSettings, console: Console) -> ModelProfile:
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


def plan_line(settings: SimCheckSettings, traces: dict[str, Path]) -> str:
    """What the check will do and about how long the rest takes (the sweeps' finished rows and the
    profiles kept by ``--reuse-profiles`` count as done)."""
    configs = configurations(settings.sweep_settings())
    units = len(configs) * len(traces)
    done = 0
    estimate_s = 0.0
    for name, path in traces.items():
        rows = read_rows(settings.out / f"sweep-{name}" / CSV_NAME)
        finished = {row["key"] for row in rows if row["status"] == "ok"}
        pending = sum(1 for c in configs if c.key not in finished)
        done += len(configs) - pending
        estimate_s += sweep_estimate_s(pending, read_trace(path).duration_s, rows)
    profiles = sum(
        1
        for model in settings.models
        if not (settings.reuse_profiles and (settings.out / f"profile-{model}.csv").exists())
    )
    estimate_s += profiles * PROFILE_ESTIMATE_S
    return announce(
        "simulator check",
        f"{len(settings.models)} model(s), {profiles} offline profile(s) to make, then "
        f"{len(traces)} traces × {len(configs)} configurations = {units} served runs of "
        f"{settings.duration_s:g} s",
        units=units,
        done=done,
        estimate_s=estimate_s,
    )


def run(settings: SimCheckSettings, console: Console) -> dict[str, Any]:
    settings.out.mkdir(parents=True, exist_ok=True)
    traces = make_traces(settings)
    sweep_settings = settings.sweep_settings()
    console.print(plan_line(settings, traces))
    profiles = {model: model_profile(model, settings, console) for model in settings.models}
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
    # NaN stays NaN (as before): a summary of no comparisons has no mean error.
    write_text_atomic(settings.out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    return report
