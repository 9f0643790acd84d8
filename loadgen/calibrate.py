"""Calibrating the simulator on one measured run, so that it can predict the others.

An offline profile is the model alone. A served request also pays for what the profile cannot
see: HTTP and the client (a few ms per request here), a model that computes slower while the
event loop, the decode threads and the load generator share the machine, more variable batch
times, and — for CPU meters — whatever else the process does while a batch runs. Four numbers
describe that, and one real run (a load test's ``summary.json`` and ``requests.csv``, e.g. one
configuration of a sweep) measures them:

* ``compute_scale`` = served mean batch time (``greenserve_batch_duration_seconds``) ÷ the
  profile's latency at the run's mean batch size;
* ``post_batch_ms`` = mean over answered requests of (latency − queue_ms − compute_ms) − the
  profile's decode time (which the simulator already spends before the queue);
* ``service_cv`` = the coefficient of variation of the served compute times of requests in
  batches of the run's most common size (one size, so that the spread is not the size mix);
* ``energy_scale`` = measured J/request ÷ the simulator's J/request for the same run with the
  three above and ``energy_scale = 1``.

The calibration run is best a small-batch one (the greedy configuration): many batches, so the
means are tight. ``make bench-sim`` calibrates on one configuration per model and reports the
errors on the others, the calibration run excluded.
"""

from __future__ import annotations

import csv
import dataclasses
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from loadgen.errors import LoadgenError
from loadgen.loadtest import SUMMARY_NAME, LoadtestSummary
from loadgen.profile import ModelProfile
from loadgen.simulate import DEFAULT_TIMEOUT_MS, SimConfig, simulate
from loadgen.trace import Trace, read_trace


@dataclass(frozen=True)
class Calibration:
    """Serving costs outside the profile, measured on one run (see the module's docstring)."""

    compute_scale: float
    post_batch_ms: float
    service_cv: float
    energy_scale: float
    source_run: str = ""  # the run directory it was measured on
    source_key: str = ""  # and its sweep key, when it is a sweep's run

    def apply(self, config: SimConfig) -> SimConfig:
        """``config`` with these costs (its decode overheads, :meth:`SimConfig.with_profile_overheads`,
        are the caller's: calibrations are measured on top of them)."""
        return dataclasses.replace(
            config,
            compute_scale=self.compute_scale,
            post_batch_ms=self.post_batch_ms,
            service_cv=self.service_cv,
            energy_scale=self.energy_scale,
        )


def _requests(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "requests.csv"
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [row for row in csv.DictReader(f) if row["status"] == "200"]
    except (OSError, KeyError) as exc:
        raise LoadgenError(f"{path}: cannot read the run's requests ({exc})") from None
    if not rows or not rows[0].get("compute_ms"):
        raise LoadgenError(f"{path}: no answered request with the server's queue_ms and compute_ms")
    return rows


def run_config(summary: LoadtestSummary) -> tuple[Trace, SimConfig]:
    """The trace a load test replayed and the batching it was served with, from its summary."""
    settings = summary.raw.get("settings") or {}
    batching = settings.get("batching")
    if not settings.get("trace") or not batching:
        raise LoadgenError(f"{summary.summary_path}: not a trace replay with the server's batching settings")
    timeout = settings.get("timeout_ms")
    config = SimConfig(
        max_batch_size=int(batching["max_batch_size"]),
        max_wait_ms=float(batching["max_wait_ms"]),
        max_queue=int(batching["max_queue"]),
        timeout_ms=float(timeout) if timeout else DEFAULT_TIMEOUT_MS,
    )
    return read_trace(Path(settings["trace"])), config


def calibrate(profile: ModelProfile, run_dir: Path, *, source_key: str = "") -> Calibration:
    """Measure the :class:`Calibration` of ``run_dir``: a load test's output directory (a trace
    replay; the trace file must still be where the summary says)."""
    summary = LoadtestSummary.from_json(run_dir / SUMMARY_NAME)
    trace, config = run_config(summary)
    server = summary.raw.get("server") or {}
    mean_batch = server.get("mean_batch_size")
    mean_batch_ms = server.get("mean_batch_ms")
    if not mean_batch or not mean_batch_ms or summary.figures.j_per_request is None:
        raise LoadgenError(f"{run_dir}: the run has no batch figures from the server's /metrics")
    if summary.energy_source != profile.energy_source:
        raise LoadgenError(
            f"{run_dir}: measured with {summary.energy_source}, the profile with {profile.energy_source}"
        )
    rows = _requests(run_dir)
    compute_scale = mean_batch_ms / (profile.latency_s(max(1, round(mean_batch))) * 1000.0)
    base = config.with_profile_overheads(profile)
    other_ms = statistics.fmean(
        float(r["latency_ms"]) - float(r["queue_ms"]) - float(r["compute_ms"]) for r in rows
    )
    common_size = Counter(r["batch_size"] for r in rows).most_common(1)[0][0]
    compute = [float(r["compute_ms"]) for r in rows if r["batch_size"] == common_size]
    service_cv = statistics.pstdev(compute) / statistics.fmean(compute) if len(compute) > 1 else 0.0
    partial = Calibration(
        compute_scale, max(0.0, other_ms - base.pre_queue_ms), service_cv, 1.0, str(run_dir), source_key
    )
    predicted = simulate(trace, profile, partial.apply(base)).figures.j_per_request
    if not predicted:
        raise LoadgenError(f"{run_dir}: the simulator predicts no energy for this run")
    return dataclasses.replace(partial, energy_scale=summary.figures.j_per_request / predicted)
