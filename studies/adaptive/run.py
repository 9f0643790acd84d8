"""Running the study: the traces (written once into ``--out``), then for each model × trace × policy a
real ``greenserve serve`` replaying the trace open-loop (:func:`loadgen.loadtest.run_trace`), its row
in ``adaptive.csv`` with the violation windows of its request log, and the simulator's prediction
of the same run beside it.

A row already in the table with ``status == ok`` is skipped (a killed study resumes); a failed one
is recorded with its error and retried next time; a table made with other settings is refused.
Before it starts the study says what it will run and about how long it takes, then shows a progress
bar with the time left.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studies.adaptive.analysis import number, read_request_log, violation_windows
from studies.adaptive.report import write_report
from studies.adaptive.settings import (
    ADAPTIVE,
    LATENCY_ADAPTIVE,
    PROFILE_BATCH_SIZES,
    AdaptiveError,
    AdaptiveSettings,
    Policy,
    check_models,
    policies,
    weights_for,
)
from studies.adaptive.table import CSV_NAME, SETTINGS_NAME, read_rows, write_rows
from studies.kit.files import check_settings_file, write_json_atomic
from studies.kit.progress import announce, progress_bar

if TYPE_CHECKING:
    from loadgen.trace import Trace
    from studies.profile.format import ModelProfile

logger = logging.getLogger(__name__)

#: Rough cost of one run beyond its trace: the server's start and warm-up, Locust's start, the drain
#: and stop (the sweep's figure). Used for the plan's estimate until the table has measured rows.
OVERHEAD_S = 15.0
#: A rough guess of one model's offline profile for the simulator, for the estimate.
PROFILE_ESTIMATE_S = 30.0
#: The server's default max_batch_size: the adaptive policies' cap (they are given only the objective).
SERVER_DEFAULT_MAX_BATCH_SIZE = 32


@dataclass(frozen=True)
class StudyResult:
    csv_path: Path
    ran: int
    skipped: int
    failed: int
    outputs: list[Path]


RunPolicy = Callable[[str, Policy, Path, AdaptiveSettings, Path], dict[str, Any]]


def make_trace(name: str, settings: AdaptiveSettings) -> Trace:
    """The trace ``name`` from :mod:`loadgen.trace`'s generators, all of mean rate ``mean_rate``:

    * ``diurnal``: one period over the whole run, trough at both ends, peak in the middle,
      ``peak_to_trough``× apart — the rate sweeps up and back;
    * ``bursty``: on/off (MMPP-2), the on rate ``peak_to_trough``× the off rate, phases of mean
      ``burst_mean_s`` — sudden steps up and down;
    * ``steady``: Poisson at the mean rate.
    """
    from loadgen.trace import bursty, diurnal, poisson

    rate, ratio, seconds, seed = (
        settings.mean_rate,
        settings.peak_to_trough,
        settings.duration_s,
        settings.seed,
    )
    if name == "diurnal":
        return diurnal(rate, ratio, seconds, seconds, seed=seed)
    if name == "bursty":
        off = 2 * rate / (1 + ratio)  # equal mean phases: (on + off) / 2 = rate
        return bursty(ratio * off, off, settings.burst_mean_s, settings.burst_mean_s, seconds, seed=seed)
    if name == "steady":
        return poisson(rate, seconds, seed=seed)
    raise AdaptiveError(f"unknown trace {name!r}")


def trace_file_name(name: str, settings: AdaptiveSettings) -> str:
    return (
        f"trace-{name}-{settings.mean_rate:g}rps-x{settings.peak_to_trough:g}-"
        f"{settings.duration_s:g}s-seed{settings.seed}.jsonl"
    )


def make_traces(settings: AdaptiveSettings, out_dir: Path) -> dict[str, Path]:
    """Every trace, written once into ``out_dir`` (kept: a resumed study replays the same files)."""
    from loadgen.trace import write_trace

    paths = {}
    for name in settings.traces:
        path = out_dir / trace_file_name(name, settings)
        if not path.exists():
            write_trace(make_trace(name, settings), path)
        paths[name] = path
    return paths


def server_flags(model: str, policy: Policy, settings: AdaptiveSettings) -> dict[str, object]:
    """What ``greenserve serve`` is given for ``policy`` (:func:`studies.kit.server.greenserve_argv`):
    a static one its batch size and wait; an adaptive one ``--batching`` and ``--slo-p99-ms`` only."""
    flags: dict[str, object] = {
        "model": model,
        "weights": weights_for(model, settings),
        "device": settings.device,
        "max_queue": settings.max_queue,
        "torch_threads": settings.torch_threads,
        "energy_source": settings.energy_source,
        "batching": policy.batching,
    }
    if policy.kind in (ADAPTIVE, LATENCY_ADAPTIVE):
        flags["slo_p99_ms"] = settings.slo_p99_ms
    else:
        flags["max_batch_size"] = policy.max_batch_size
        flags["max_wait_ms"] = policy.max_wait_ms
    return {**flags, "drain_timeout_s": 10.0, "access_log": False, "log_level": "warning"}


def images_for(model: str) -> str:
    from loadgen.images import default_sample_for

    return default_sample_for(model)


def run_policy(
    model: str, policy: Policy, trace_path: Path, settings: AdaptiveSettings, run_dir: Path
) -> dict[str, Any]:
    """Serve ``model`` with ``policy``, replay the trace, and return the row's measured fields."""
    from loadgen.loadtest import run_trace
    from studies.kit.server import greenserve_argv, running_server, server_env

    run_dir.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return greenserve_argv(port, **server_flags(model, policy, settings))

    with running_server(argv, name="greenserve", workdir=run_dir, env=server_env()) as server:
        summary = run_trace(server.base_url, trace_path, run_dir, images=images_for(model))
    figures = summary.figures
    if summary.request_log_path is None:
        raise AdaptiveError(f"the load test in {run_dir} wrote no request log")
    windows = violation_windows(
        read_request_log(summary.request_log_path),
        window_s=settings.window_s,
        slo_p99_ms=settings.slo_p99_ms,
        min_requests=settings.min_window_requests,
        step_ratio=settings.step_ratio,
    )
    return {
        "requests": figures.requests,
        "completed": figures.completed,
        "latency_p50_ms": figures.latency_p50_ms,
        "latency_p99_ms": figures.latency_p99_ms,
        "mean_batch_size": figures.mean_batch_size,
        "j_per_request": figures.j_per_request,
        "energy_source": figures.energy_source,
        "j_per_request_label": figures.j_per_request_label,
        "amortised_j_per_request": figures.amortised_j_per_request,
        "amortised_energy_source": figures.amortised_energy_source,
        "amortised_label": figures.amortised_label,
        "rejected": figures.rejected_queue_full + figures.rejected_deadline,
        "errors": figures.errors,
        "windows": windows.windows,
        "violation_windows": windows.violations,
        "step_violation_windows": windows.step_violations,
        "max_lag_ms": summary.max_lag_ms,
        "late_requests": summary.late_requests,
    }


# --- the simulator beside the measurement ----------------------------------------------------------


def simulator_note() -> str | None:
    """Why the adaptive policies cannot be simulated here (None: they can): the server's policies
    must be importable."""
    try:
        from service.policy import make_policy

        make_policy("adaptive", max_batch_size=SERVER_DEFAULT_MAX_BATCH_SIZE, max_wait_ms=0, slo_p99_ms=1.0)
    except (ImportError, ValueError) as exc:
        return f"the adaptive policies cannot be built here ({type(exc).__name__}: {exc})"
    return None


def model_profile(model: str, settings: AdaptiveSettings, out_dir: Path) -> ModelProfile:
    """The model's offline profile for the simulator: ``profile-<model>.csv`` in ``out_dir`` if there
    (a resumed study), else measured now (no server runs meanwhile) and written there."""
    from studies.profile.format import read_profile, write_profile
    from studies.profile.run import profile_model

    path = out_dir / f"profile-{model}.csv"
    if path.exists():
        return read_profile(path)
    largest = max(*settings.batch_sizes, SERVER_DEFAULT_MAX_BATCH_SIZE)
    sizes = [s for s in PROFILE_BATCH_SIZES if s < largest] + [largest]
    profile = profile_model(
        model,
        weights=weights_for(model, settings),
        device=settings.device,
        batch_sizes=sizes,
        warmup=1,
        repeats=settings.profile_repeats,
        min_time_s=settings.profile_min_time_s,
        torch_threads=settings.torch_threads,
        energy_source=settings.energy_source,
    )
    write_profile(profile, path)
    return profile


def simulate_policy(
    policy: Policy, trace: Trace, profile: ModelProfile, settings: AdaptiveSettings, note: str | None
) -> dict[str, Any]:
    """The simulator's p99, J/request and mean batch for ``policy`` on ``trace`` (the profile's costs
    and decode overheads, no calibration), or ``sim_note`` saying why there is none."""
    from loadgen.simulate import SimConfig, simulate

    if policy.kind in (ADAPTIVE, LATENCY_ADAPTIVE):
        if note is not None:
            return {"sim_note": note}
        from service.policy import make_policy

        config = SimConfig(max_batch_size=SERVER_DEFAULT_MAX_BATCH_SIZE, max_queue=settings.max_queue)
        made = make_policy(
            policy.batching,
            max_batch_size=SERVER_DEFAULT_MAX_BATCH_SIZE,
            max_wait_ms=0.0,
            slo_p99_ms=settings.slo_p99_ms,
        )
        # Unseeded, as the measured server is (only --slo-p99-ms set): both learn from their own batches.
        result = simulate(trace, profile, config.with_profile_overheads(profile), policy=made)
    else:
        assert policy.max_batch_size is not None and policy.max_wait_ms is not None
        config = SimConfig(
            max_batch_size=policy.max_batch_size, max_wait_ms=policy.max_wait_ms, max_queue=settings.max_queue
        )
        result = simulate(trace, profile, config.with_profile_overheads(profile))
    figures = result.figures
    return {
        "sim_latency_p99_ms": figures.latency_p99_ms,
        "sim_j_per_request": figures.j_per_request,
        "sim_mean_batch_size": figures.mean_batch_size,
        "sim_note": "",
    }


# --- the study ---------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def row_key(model: str, trace: str, policy: Policy) -> str:
    return f"{model}|{trace}|{policy.key}"


def estimate_s(pending: int, duration_s: float, rows: list[dict[str, str]], profiles: int) -> float:
    """How long ``pending`` runs (and ``profiles`` offline profiles) take: the mean wall time of the
    ok rows already in the table when there are some, else the trace plus :data:`OVERHEAD_S`."""
    measured = [w for row in rows if row["status"] == "ok" and (w := number(row.get("wall_s"))) is not None]
    per_run = statistics.fmean(measured) if measured else duration_s + OVERHEAD_S
    return pending * per_run + profiles * PROFILE_ESTIMATE_S


def plan(settings: AdaptiveSettings, runs: int) -> str:
    """E.g. ``2 model(s) × 3 trace(s) × 12 policies (9 static, triton_like, latency_adaptive,
    adaptive) = 72 runs of a 120 s trace each``."""
    statics = len(settings.batch_sizes) * len(settings.max_waits_ms)
    return (
        f"{len(settings.models)} model(s) × {len(settings.traces)} trace(s) × {statics + 3} policies "
        f"({statics} static, triton_like, latency_adaptive, adaptive) = {runs} runs of a "
        f"{settings.duration_s:g} s trace each"
    )


def run_study(
    settings: AdaptiveSettings, out_dir: Path, *, runner: RunPolicy = run_policy, progress: bool = True
) -> StudyResult:
    """Run every model × trace × policy not yet in ``out_dir/adaptive.csv``, then write the report."""
    check_models(settings)
    if out_dir.exists() and not out_dir.is_dir():
        raise AdaptiveError(f"output path {out_dir} exists and is not a directory")
    settings_json = out_dir / SETTINGS_NAME
    fingerprint = settings.fingerprint()
    has_settings = check_settings_file(settings_json, fingerprint, out_dir=out_dir, study="adaptive study")
    csv_path = out_dir / CSV_NAME
    rows = read_rows(csv_path)
    if rows and not has_settings:
        raise AdaptiveError(f"{csv_path} exists without {SETTINGS_NAME}; use another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings_json, fingerprint)
    traces = make_traces(settings, out_dir)
    from loadgen.trace import read_trace

    loaded = {name: read_trace(path) for name, path in traces.items()}
    shas = {name: file_sha256(path) for name, path in traces.items()}
    units = [
        (model, trace, policy)
        for model in settings.models
        for trace in traces
        for policy in policies(settings)
    ]
    done = {row["key"] for row in rows if row["status"] == "ok"}
    pending = [u for u in units if row_key(*u) not in done]
    to_profile = (
        [m for m in settings.models if not (out_dir / f"profile-{m}.csv").exists()]
        if settings.simulate
        else []
    )
    announce(
        "bench-adaptive",
        plan(settings, len(units)) + (f", {len(to_profile)} offline profile(s)" if to_profile else ""),
        units=len(units),
        done=len(units) - len(pending),
        estimate_s=estimate_s(len(pending), settings.duration_s, rows, len(to_profile)),
    )
    profiles: dict[str, ModelProfile | None] = {}
    notes: dict[str, str | None] = {}
    failed = 0
    with progress_bar(
        "bench-adaptive", len(units), completed=len(units) - len(pending), enabled=progress
    ) as step:
        for model, trace, policy in pending:
            label = f"{model} {trace} {policy.key}"
            if settings.simulate and model not in profiles:
                step(f"{model}: offline profile", False)
                profiles[model], notes[model] = _profile_or_note(model, settings, out_dir)
            step(label, False)
            row: dict[str, Any] = {
                "key": row_key(model, trace, policy),
                "model": model,
                "trace": trace,
                "policy": policy.key,
                "kind": policy.kind,
                "batching": policy.batching,
                "max_batch_size": policy.max_batch_size,
                "max_wait_ms": policy.max_wait_ms,
                "slo_p99_ms": settings.slo_p99_ms,
                "trace_file": str(traces[trace]),
                "trace_sha256": shas[trace],
            }
            run_dir = out_dir / "runs" / model / trace / policy.key
            row["run_dir"] = str(run_dir)
            started = time.monotonic()
            try:
                row.update(runner(model, policy, traces[trace], settings, run_dir))
                row["status"] = "ok"
            except Exception as exc:  # one run's failure must not end the study
                failed += 1
                logger.error("%s failed: %s", row["key"], exc)
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                row["status"] = f"failed: {type(exc).__name__}: {first_line}"
                row["requests"] = len(loaded[trace])
            row["wall_s"] = time.monotonic() - started
            if settings.simulate:
                row.update(_simulated(policy, loaded[trace], profiles.get(model), settings, notes.get(model)))
            row["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            rows = [r for r in rows if r["key"] != row["key"]] + [row]
            write_rows(csv_path, rows)
            step(label, True)
    outputs = write_report(csv_path, out_dir, settings)
    return StudyResult(csv_path, len(pending), len(units) - len(pending), failed, outputs)


def _profile_or_note(
    model: str, settings: AdaptiveSettings, out_dir: Path
) -> tuple[ModelProfile | None, str | None]:
    """The model's profile and why the adaptive policies cannot be simulated (if so); a profile that
    cannot be made leaves the simulator's columns empty with the reason, not the study failed."""
    try:
        return model_profile(model, settings, out_dir), simulator_note()
    except Exception as exc:
        logger.warning("no offline profile of %s, so no simulation: %s", model, exc)
        return (
            None,
            f"no offline profile: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
        )


def _simulated(
    policy: Policy, trace: Trace, profile: ModelProfile | None, settings: AdaptiveSettings, note: str | None
) -> dict[str, Any]:
    if profile is None:
        return {"sim_note": note or "no offline profile"}
    try:
        return simulate_policy(policy, trace, profile, settings, note)
    except Exception as exc:  # the simulator's failure is a note beside the measurement
        logger.warning("simulating %s failed: %s", policy.key, exc)
        return {"sim_note": f"simulation failed: {type(exc).__name__}: {exc}"}
