"""Running the sweep: serve each configuration, replay the trace against it, record its row.

A configuration already in ``sweep.csv`` with ``status == ok`` is skipped (a killed sweep goes on
where it stopped); a failed one is recorded with its error and retried next time; rows of another
trace are refused. Before it starts the sweep says what it will do and about how long it will take
(:func:`studies.kit.progress.announce`), then shows a progress bar with the time left.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadgen.errors import GridError
from studies.kit.progress import announce, progress_bar
from studies.sweep.report import write_report
from studies.sweep.settings import (
    GREEDY,
    SweepConfig,
    SweepSettings,
    TraceSettings,
    configurations,
    images_for,
    weights_for,
)
from studies.sweep.table import CSV_NAME, number, read_rows, write_rows

logger = logging.getLogger(__name__)

#: Rough cost of one configuration beyond its trace: the server's start and warm-up, Locust's
#: start, the drain and stop. Used for the plan's estimate until the table has measured rows.
OVERHEAD_S = 15.0


@dataclass(frozen=True)
class SweepResult:
    csv_path: Path
    ran: int
    skipped: int
    failed: int
    outputs: list[Path]


RunConfig = Callable[[SweepConfig, SweepSettings, Path, Path], dict[str, Any]]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trace_path(trace: TraceSettings, out_dir: Path) -> Path:
    """The trace to replay: the given one, else the study's generated into ``out_dir`` (once: a
    resumed sweep replays the same file)."""
    if trace.trace is not None:
        return trace.trace
    from loadgen.trace import uniform_jitter, write_trace

    path = out_dir / trace.generated_name()
    if not path.exists():
        write_trace(uniform_jitter(trace.rate, trace.jitter, trace.duration_s, seed=trace.seed), path)
    return path


def server_flags(config: SweepConfig, settings: SweepSettings) -> dict[str, object]:
    """What ``greenserve serve`` is given for ``config`` (:func:`studies.kit.server.greenserve_argv`)."""
    return {
        "model": config.model,
        "weights": weights_for(config.model, settings),
        "device": settings.device,
        "max_batch_size": config.max_batch_size,
        "max_wait_ms": config.max_wait_ms,
        "max_queue": settings.max_queue,
        "torch_threads": settings.torch_threads,
        "energy_source": settings.energy_source,
        "drain_timeout_s": 10.0,
        "access_log": False,
        "log_level": "warning",
    }


def run_config(
    config: SweepConfig, settings: SweepSettings, trace_path: Path, out_dir: Path
) -> dict[str, Any]:
    """Serve ``config``, replay the trace against it, and return the row's run fields."""
    from loadgen.loadtest import run_trace
    from studies.kit.server import greenserve_argv, running_server, server_env

    run_dir = out_dir / "runs" / config.slug
    run_dir.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return greenserve_argv(port, **server_flags(config, settings))

    started = time.monotonic()
    with running_server(argv, name="greenserve", workdir=run_dir, env=server_env()) as server:
        summary = run_trace(
            server.base_url,
            trace_path,
            run_dir,
            images=images_for(config.model, settings),
            timeout_ms=settings.timeout_ms,
        )
    row: dict[str, Any] = dataclasses.asdict(summary.figures)
    row["max_lag_ms"] = summary.max_lag_ms
    row["late_requests"] = summary.late_requests
    row["wall_s"] = time.monotonic() - started
    return row


def config_row(config: SweepConfig, settings: SweepSettings) -> dict[str, Any]:
    return {
        "key": config.key,
        "model": config.model,
        "mode": GREEDY if config.greedy else "wait",
        "max_batch_size": config.max_batch_size,
        "max_wait_ms": config.max_wait_ms,
        "max_queue": settings.max_queue,
        "timeout_ms": settings.timeout_ms,
        "weights": weights_for(config.model, settings) or "embedded",
        "device": settings.device,
        "torch_threads": settings.torch_threads,
    }


def estimate_s(pending: int, trace_duration_s: float, rows: list[dict[str, str]]) -> float:
    """How long ``pending`` configurations take: the mean wall time of the ok rows already in the
    table when there are some (the same trace, this machine), else the trace plus :data:`OVERHEAD_S`."""
    measured = [w for row in rows if row["status"] == "ok" and (w := number(row.get("wall_s"))) is not None]
    per_config = statistics.fmean(measured) if measured else trace_duration_s + OVERHEAD_S
    return pending * per_config


def plan(configs: list[SweepConfig], trace_duration_s: float, requests: int) -> str:
    """The plan in words, e.g. ``2 model(s) × 9 configuration(s) = 18 configurations × a 30 s trace
    (480 requests)``."""
    models = sorted({c.model for c in configs})
    return (
        f"{len(models)} model(s) × {len(configs) // max(1, len(models))} configuration(s) = "
        f"{len(configs)} configurations × a {trace_duration_s:g} s trace ({requests} requests)"
    )


def run_sweep(
    settings: SweepSettings,
    trace_path: Path,
    out_dir: Path,
    *,
    runner: RunConfig = run_config,
    progress: bool = True,
) -> SweepResult:
    """Run every configuration not yet in ``out_dir/sweep.csv``, then draw the report."""
    configs = configurations(settings)
    from loadgen.trace import read_trace

    trace = read_trace(trace_path)  # a bad trace fails before any server starts
    sha = file_sha256(trace_path)
    csv_path = out_dir / CSV_NAME
    rows = read_rows(csv_path)
    if {row["trace_sha256"] for row in rows} - {sha}:
        raise GridError(
            f"{csv_path} holds results of another trace; resume only with the same trace, "
            "or use another --out"
        )
    done = {row["key"] for row in rows if row["status"] == "ok"}
    pending = [config for config in configs if config.key not in done]
    skipped = len(configs) - len(pending)
    announce(
        "sweep",
        plan(configs, trace.duration_s, len(trace)),
        units=len(configs),
        done=skipped,
        estimate_s=estimate_s(len(pending), trace.duration_s, rows),
    )
    failed = 0
    with progress_bar("sweep", len(configs), completed=skipped, enabled=progress) as step:
        for config in pending:
            step(f"{config.model} {config.label}", False)
            row = config_row(config, settings)
            row["trace"] = str(trace_path)
            row["trace_sha256"] = sha
            try:
                row.update(runner(config, settings, trace_path, out_dir))
                row["status"] = "ok"
            except Exception as exc:  # one configuration's failure must not end the sweep
                failed += 1
                logger.error("%s failed: %s", config.key, exc)
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                row["status"] = f"failed: {type(exc).__name__}: {first_line}"
                row["requests"] = len(trace)
            row["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            rows = [r for r in rows if r["key"] != config.key] + [row]
            write_rows(csv_path, rows)
            step(f"{config.model} {config.label}", True)
    outputs = write_report(csv_path, out_dir, p99_target_ms=settings.p99_target_ms)
    return SweepResult(csv_path, len(pending), skipped, failed, outputs)
