"""A run's ``summary.json`` (schema :data:`~loadgen.loadtest.settings.SCHEMA`, described in
``docs/loadtest.md``): built from the records and the server's deltas inside Locust's process
(:func:`build_summary`), read back by the caller (:class:`LoadtestSummary`)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loadgen.errors import LoadgenError
from loadgen.figures import OPTIONAL_FIGURES, RunFigures, percentiles_ms
from loadgen.loadtest.records import LOST, NOT_SENT, UNFINISHED, RequestRecord, lag_stats
from loadgen.loadtest.server_delta import ServerDelta
from loadgen.loadtest.settings import SCHEMA
from studies.kit.files import write_text_atomic


def status_counts(records: Iterable[RequestRecord]) -> dict[str, int]:
    counts = Counter(r.status for r in records)
    return dict(sorted(counts.items()))


def run_figures(records: Sequence[RequestRecord], server: ServerDelta | None) -> RunFigures:
    """The sweep's figures: latency of the 200 answers, from the schedule in open loop."""
    ok = [r for r in records if r.status == "200"]
    latencies = [lat for r in ok if (lat := r.latency_s) is not None]
    p50, p90, p99 = percentiles_ms(latencies)
    origins = [
        o for r in records if (o := r.scheduled_s if r.scheduled_s is not None else r.start_s) is not None
    ]
    ends = [r.end_s for r in records if r.end_s is not None]
    span_s = max(ends) - min(origins) if ends and origins else 0.0
    counts = status_counts(records)
    queue_full, deadline = counts.get("429", 0), counts.get("504", 0)
    return RunFigures(
        requests=len(records),
        completed=len(ok),
        throughput_rps=len(ok) / span_s if span_s > 0 else 0.0,
        latency_p50_ms=p50,
        latency_p90_ms=p90,
        latency_p99_ms=p99,
        mean_batch_size=server.mean_batch_size if server else None,
        j_per_request=server.j_per_request if server else None,
        energy_source=server.energy_source if server else None,
        rejected_queue_full=queue_full,
        rejected_deadline=deadline,
        errors=len(records) - len(ok) - queue_full - deadline,
        j_per_request_label=server.j_per_request_label if server else None,
        amortised_j_per_request=server.amortised_j_per_request if server else None,
        amortised_energy_source=server.amortised_energy_source if server else None,
        amortised_label=server.amortised_label if server else None,
    )


def build_summary(
    records: Sequence[RequestRecord],
    *,
    mode: Literal["trace", "closed"],
    server: ServerDelta | None,
    lag_threshold_ms: float,
    finished: bool,
    duration_s: float,
    settings: Mapping[str, Any],
    files: Mapping[str, str | None],
    server_error: str | None = None,
    cut_at_stop: int = 0,
    t0_unix: float | None = None,
    distributed: Mapping[str, Any] | None = None,
    extra_warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``summary.json`` object (schema :data:`SCHEMA`; documented in ``docs/loadtest.md``).

    A distributed run adds its ``distributed`` block (the workers and their shares) and the
    warnings of the merge; a single process's summary has no ``distributed`` key."""
    figures = run_figures(records, server)
    latencies = [lat for r in records if r.status == "200" and (lat := r.latency_s) is not None]
    lag = lag_stats(records, lag_threshold_ms) if mode == "trace" else None
    warnings = [w for w in (lag.warning if lag else None, server_error) if w]
    warnings.extend(extra_warnings)
    if server is not None and server.energy_read_errors:
        failing = ", ".join(f"{source} × {n}" for source, n in server.energy_read_errors.items())
        warnings.append(
            f"energy meter read errors or stalls during the run ({failing}): requests answered meanwhile "
            "have no energy, so the J/request figures are too low"
        )
    unknown = [r for r in records if r.status == "200" and r.energy_j is None and r.energy_source]
    if unknown:
        warnings.append(
            f"{len(unknown)} requests answered 200 without an energy figure (energy_j null: "
            f"{unknown[0].energy_source})"
        )
    if not finished:
        warnings.append("the run stopped before every request was answered (time limit or interruption)")
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "mode": mode,
        "finished": finished,
        "duration_s": duration_s,
        "t0_unix": t0_unix,
        "settings": dict(settings),
        "requests": {
            "total": len(records),
            "sent": sum(1 for r in records if r.start_s is not None),
            "answered": sum(1 for r in records if r.status not in (NOT_SENT, UNFINISHED, LOST)),
            "by_status": status_counts(records),
            "cut_at_stop": cut_at_stop,
        },
        "latency_ms": {
            "from": "scheduled" if mode == "trace" else "start",
            "p50": figures.latency_p50_ms,
            "p90": figures.latency_p90_ms,
            "p99": figures.latency_p99_ms,
            "mean": sum(latencies) / len(latencies) * 1000.0 if latencies else None,
            "max": max(latencies) * 1000.0 if latencies else None,
        },
        "throughput_rps": figures.throughput_rps,
        "lag": None if lag is None else {**dataclasses.asdict(lag), "warning": lag.warning},
        "server": None if server is None else dataclasses.asdict(server),
        "figures": dataclasses.asdict(figures),
        "warnings": warnings,
        "files": dict(files),
    }
    if distributed is not None:
        summary["distributed"] = dict(distributed)
    return summary


def write_summary(summary: Mapping[str, Any], path: Path) -> Path:
    """``summary`` as indented JSON, atomically (a reader never sees half a file)."""
    return write_text_atomic(path, json.dumps(summary, indent=2) + "\n")


@dataclass(frozen=True)
class LoadtestSummary:
    """A finished run as the caller sees it: the figures, the lag, the statuses and the files."""

    mode: str
    finished: bool
    figures: RunFigures
    requests_by_status: dict[str, int]
    late_requests: int
    max_lag_ms: float | None
    lag_warning: str | None
    j_per_request: float | None
    energy_source: str | None
    warnings: tuple[str, ...]
    summary_path: Path
    request_log_path: Path | None
    csv_prefix: Path | None
    log_path: Path | None
    raw: dict[str, Any]

    @classmethod
    def from_json(
        cls, path: Path, *, csv_prefix: Path | None = None, log_path: Path | None = None
    ) -> LoadtestSummary:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LoadgenError(f"{path}: cannot read the load test's summary: {exc}") from None
        if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
            raise LoadgenError(f"{path}: not a {SCHEMA} summary")
        lag = raw["lag"] or {}
        figures = RunFigures(
            **{
                name: raw["figures"].get(name) if name in OPTIONAL_FIGURES else raw["figures"][name]
                for name in RunFigures.field_names()
            }
        )
        request_log = raw["files"].get("request_log")
        return cls(
            mode=raw["mode"],
            finished=raw["finished"],
            figures=figures,
            requests_by_status=dict(raw["requests"]["by_status"]),
            late_requests=int(lag.get("late", 0)),
            max_lag_ms=lag.get("max_ms"),
            lag_warning=lag.get("warning"),
            j_per_request=figures.j_per_request,
            energy_source=figures.energy_source,
            warnings=tuple(raw["warnings"]),
            summary_path=path,
            request_log_path=Path(request_log) if request_log else None,
            csv_prefix=csv_prefix,
            log_path=log_path,
            raw=raw,
        )
