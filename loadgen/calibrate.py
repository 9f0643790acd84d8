"""Calibrating the simulator on measured runs, so that it can predict the others.

An offline profile is the model alone. A served batch also pays for what the profile cannot see:
handing the batch to the model thread and back, a model that computes slower while the event loop,
the decode threads and the load generator share the machine, a meter that reads the whole process
(``estimate``, ``rapl``) — and each response pays for HTTP and the client. Those costs are measured
on one or more real runs (load tests' output directories: ``summary.json`` and ``requests.csv``,
where every answered request carries its batch's size, the server's ``compute_ms`` and its share
of the batch's energy), e.g. two configurations of a sweep:

* **batch time** — least squares through the served batches (rebuilt from the requests: those of
  one batch share its size, compute time and energy), ``compute_ms = compute_scale ×
  profile_ms(b) + batch_overhead_ms + arrival_delay_ms × (requests that reached the server while
  it computed)``: decoding and HTTP compete with the model thread for the CPU and the GIL, so a
  batch is slower during a burst than at a steady rate, whatever its size;
* **batch energy** — least squares (no intercept, both ≥ 0), ``energy = energy_scale × the
  profile's power at the batch's size × its served time + request_energy_j × (requests in the
  batch)``, where a batch's energy is the sum of its requests' ``energy_j``: a batch draws the
  profile's power, scaled, for as long as it runs, and each of its requests also carries its own
  decode and its share of the serving work (the server's whole-cost attribution, docs/energy.md),
  which batching does not shrink (the simulator's ``overhead_j_per_request``). Fitted rather than
  taken from the profile's decode cost: the HTTP work is in it too;
* **batch-time spread** — ``service_cv``, the coefficient of variation of the residuals of the
  time fit relative to the fitted time;
* **response overhead** — (latency − ``queue_ms`` − ``compute_ms`` − the profile's decode time)
  of every answered request, fitted by least squares as ``base + post_per_rank_ms × rank``, the
  rank being the response's place among its batch's (the event loop sends them one after
  another: 0.2–0.3 ms each here); the simulator adds ``rank × post_per_rank_ms`` to a base drawn
  from the measured bases (``post_batch_samples_ms``), so the tail of HTTP and the client is in the
  simulated p99, and a batch of 1 is not charged the queue of responses behind a batch of 30.

The fit needs batches that differ in size and in arrivals: calibrate on a greedy run of one trace
(small batches) and a long-wait run of a bursty trace (large batches, bursts); with a single size
the fit degrades to a ratio through the origin. A coefficient that comes out negative is dropped
and the rest refit. ``make bench-sim`` calibrates per model on two runs and validates on the rest.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadgen.errors import LoadgenError
from loadgen.loadtest.settings import SUMMARY_NAME
from loadgen.loadtest.summary import LoadtestSummary
from loadgen.simulate import SimConfig
from studies.profile.format import ModelProfile

#: Response-overhead samples kept (a uniform thinning of the measured ones): enough for a p99.
MAX_SAMPLES = 2000


@dataclass(frozen=True)
class Calibration:
    """Serving costs outside the profile, measured on real runs (see the module's docstring)."""

    compute_scale: float
    batch_overhead_ms: float
    arrival_delay_ms: float  # per request reaching the server while a batch computes
    service_cv: float
    energy_scale: float
    post_batch_samples_ms: tuple[float, ...]  # response overheads, less their rank's share
    batches: int  # how many served batches the fits saw
    batch_sizes: tuple[int, ...]  # and of which sizes
    source_runs: tuple[str, ...] = ()
    source_keys: tuple[str, ...] = ()  # their sweep keys, when they are a sweep's runs
    post_per_rank_ms: float = 0.0  # each later response of a batch leaves this much after the one before
    # Each request's own decode and serving energy (the name is kept for calibrations already saved).
    arrival_energy_j: float = 0.0

    def apply(self, config: SimConfig) -> SimConfig:
        """``config`` (with its profile's decode time as ``pre_queue_ms``) and these costs."""
        return dataclasses.replace(
            config,
            compute_scale=self.compute_scale,
            batch_overhead_ms=self.batch_overhead_ms,
            arrival_delay_ms=self.arrival_delay_ms,
            service_cv=self.service_cv,
            energy_scale=self.energy_scale,
            energy_follows_time=True,
            overhead_j_per_request=self.arrival_energy_j,  # each request's decode and serving
            post_batch_samples_ms=self.post_batch_samples_ms,
            post_per_rank_ms=self.post_per_rank_ms,
        )

    def describe(self) -> str:
        post = np.asarray(self.post_batch_samples_ms)
        return (
            f"batch time = {self.compute_scale:.3f} × profile + {self.batch_overhead_ms:.2f} ms + "
            f"{self.arrival_delay_ms:.2f} ms per request arriving meanwhile (CV {self.service_cv:.3f}); "
            f"batch energy = {self.energy_scale:.3f} × profile power × batch time + "
            f"{self.arrival_energy_j * 1000:.2f} mJ per request of the batch (its decode and serving); "
            f"response overhead median {np.median(post):.1f} ms, "
            f"p99 {np.percentile(post, 99):.1f} ms + {self.post_per_rank_ms:.2f} ms per earlier response "
            f"of the batch; from {self.batches} batches of sizes "
            f"{min(self.batch_sizes)}–{max(self.batch_sizes)}"
        )


@dataclass(frozen=True)
class _Request:
    batch_size: int
    compute_ms: float
    energy_j: float
    other_ms: float
    start_s: float  # when the client sent it (the run's clock)
    end_s: float
    rank: int = 0  # its answer's place among its batch's (from 0), by end time; set by _batches


@dataclass(frozen=True)
class _Batch:
    size: int
    compute_ms: float
    energy_j: float
    arrivals_during: int  # requests that reached the server while it computed (their decoding)


def _batches(
    requests: Sequence[_Request], sent_s: Sequence[float], decode_ms: float
) -> tuple[list[_Batch], list[_Request]]:
    """The run's batches, rebuilt from its answered requests: those of one batch share its size and
    compute time, and leave together (consecutive by end time); a batch's energy is the sum of its
    requests' (each carries its model share plus its own decode and serving parts). A batch's interval
    ends when its responses leave, less the median response overhead; any request sent (whatever
    its answer) counts as arriving while it computed if its decoding finished inside. Also the
    requests, each with its rank among its batch's answers."""
    groups: dict[tuple[int, float], list[_Request]] = {}
    for r in requests:
        groups.setdefault((r.batch_size, round(r.compute_ms, 6)), []).append(r)
    post_s = max(0.0, float(np.median([r.other_ms for r in requests])) / 1000.0 - decode_ms / 1000.0)
    arrivals = np.sort(np.asarray(sent_s, dtype=np.float64) + decode_ms / 1000.0)
    batches = []
    ranked = []
    for (size, compute_ms), members in groups.items():
        members = sorted(members, key=lambda r: r.end_s)
        for first in range(0, len(members), size):  # identical batches: split by size, in time order
            chunk = members[first : first + size]
            ranked += [dataclasses.replace(r, rank=k) for k, r in enumerate(chunk)]
            end = float(np.median([m.end_s for m in chunk])) - post_s
            start = end - compute_ms / 1000.0
            during = int(np.searchsorted(arrivals, end) - np.searchsorted(arrivals, start, side="right"))
            batches.append(
                _Batch(size, compute_ms, sum(m.energy_j for m in chunk) * size / len(chunk), during)
            )
    return batches, ranked


def _read_run(run_dir: Path, profile: ModelProfile) -> tuple[list[_Request], list[float]]:
    """The run's answered requests, and when every request was sent."""
    summary = LoadtestSummary.from_json(run_dir / SUMMARY_NAME)
    # A server on a GPU labels its J/request with the GPU's and the CPU's meters (nvml+rapl).
    if summary.energy_source is not None and summary.energy_source not in (
        profile.energy_source,
        profile.served_energy_source,
    ):
        raise LoadgenError(
            f"{run_dir}: measured with {summary.energy_source}, "
            f"the profile with {profile.served_energy_source}"
        )
    path = run_dir / "requests.csv"
    try:
        with path.open(newline="", encoding="utf-8") as f:
            every = list(csv.DictReader(f))
        sent = [float(row["start_s"]) for row in every if row.get("start_s")]
        # Answered, with a known energy (a failing meter leaves energy_j empty).
        rows = [row for row in every if row["status"] == "200" and row.get("energy_j")]
        requests = [
            _Request(
                int(row["batch_size"]),
                float(row["compute_ms"]),
                float(row["energy_j"]),
                float(row["latency_ms"]) - float(row["queue_ms"]) - float(row["compute_ms"]),
                float(row["start_s"]),
                float(row["end_s"]),
            )
            for row in rows
        ]
    except (OSError, KeyError, ValueError) as exc:
        raise LoadgenError(f"{path}: cannot read the run's answered requests ({exc})") from None
    if not requests:
        raise LoadgenError(f"{path}: no answered request to calibrate on")
    return requests, sent


def _fit(columns: Sequence[np.ndarray], y: np.ndarray, *, intercept: bool) -> list[float]:
    """Least squares ``y = Σ coef_i × column_i (+ intercept)``, returned as ``[coef…, intercept]``,
    with every cost ≥ 0: a negative one (a cost cannot be negative) is dropped and the rest refit.
    The first column (the profile's cost) is always kept."""
    features = [*columns, np.ones_like(y)] if intercept else list(columns)
    kept = list(range(len(features)))
    while True:
        coefs, *_ = np.linalg.lstsq(np.column_stack([features[i] for i in kept]), y, rcond=None)
        negative = [i for i, c in zip(kept, coefs, strict=True) if c < 0 and i != 0]
        if not negative:
            found = dict(zip(kept, (float(c) for c in coefs), strict=True))
            values = [found.get(i, 0.0) for i in range(len(features))]
            return values if intercept else [*values, 0.0]
        kept.remove(negative[0])


def calibrate(
    profile: ModelProfile, run_dirs: Sequence[Path], *, source_keys: Sequence[str] = ()
) -> Calibration:
    """Measure the :class:`Calibration` of ``run_dirs`` (load tests' output directories)."""
    if not run_dirs:
        raise LoadgenError("no run to calibrate on")
    decode_ms = profile.preprocess_ms_per_image or 0.0
    rebuilt = [_batches(*_read_run(run_dir, profile), decode_ms) for run_dir in run_dirs]
    batches = [batch for run_batches, _ in rebuilt for batch in run_batches]
    answered = [request for _, requests in rebuilt for request in requests]
    sizes = np.array([b.size for b in batches])
    profile_ms = np.array([profile.latency_s(int(b)) * 1000.0 for b in sizes])
    power_w = np.array([profile.energy_j(int(b)) / profile.latency_s(int(b)) for b in sizes])
    compute_ms = np.array([b.compute_ms for b in batches])
    arrivals = np.array([b.arrivals_during for b in batches], dtype=np.float64)
    # A line needs sizes that differ; with one size (or nearly) the fit is a ratio through 0.
    spread = bool(np.ptp(profile_ms) > 0.25 * float(np.max(profile_ms)))
    columns = [profile_ms, arrivals] if np.ptp(arrivals) > 0 else [profile_ms]
    coefs = _fit(columns, compute_ms, intercept=spread)
    compute_scale, overhead_ms = coefs[0], coefs[-1]
    arrival_delay_ms = coefs[1] if len(columns) > 1 else 0.0
    if compute_scale <= 0:
        compute_scale, arrival_delay_ms, overhead_ms = (
            float(np.sum(compute_ms) / np.sum(profile_ms)),
            0.0,
            0.0,
        )
    # Energy: the profile's power, scaled, over the served batch time, plus each request's own decode
    # and serving work. Without batch sizes to fit a line on, a ratio of the totals.
    energy_j = np.array([b.energy_j for b in batches])
    drawn_j = power_w * compute_ms / 1000.0
    if np.ptp(sizes) > 0:
        energy_scale, arrival_energy_j = _fit([drawn_j, sizes.astype(np.float64)], energy_j, intercept=False)[
            :2
        ]
    else:
        energy_scale, arrival_energy_j = float(energy_j.sum() / drawn_j.sum()), 0.0
    fitted = compute_scale * profile_ms + arrival_delay_ms * arrivals + overhead_ms
    service_cv = float(np.sqrt(np.mean((compute_ms / fitted - 1.0) ** 2)))
    post_ms = np.array([r.other_ms for r in answered]) - decode_ms
    ranks = np.array([r.rank for r in answered], dtype=np.float64)
    per_rank_ms = _fit([ranks], post_ms, intercept=True)[0] if np.ptp(ranks) > 0 else 0.0
    per_rank_ms = max(per_rank_ms, 0.0)
    post = np.clip(post_ms - per_rank_ms * ranks, 0.0, None)
    if len(post) > MAX_SAMPLES:
        post = np.sort(post)[np.linspace(0, len(post) - 1, MAX_SAMPLES).astype(int)]
    return Calibration(
        compute_scale=compute_scale,
        batch_overhead_ms=overhead_ms,
        arrival_delay_ms=arrival_delay_ms,
        service_cv=min(service_cv, 10.0),
        energy_scale=energy_scale,
        post_batch_samples_ms=tuple(float(v) for v in post),
        batches=len(batches),
        batch_sizes=tuple(sorted({int(b) for b in sizes})),
        source_runs=tuple(str(d) for d in run_dirs),
        source_keys=tuple(source_keys),
        post_per_rank_ms=per_rank_ms,
        arrival_energy_j=arrival_energy_j,
    )
