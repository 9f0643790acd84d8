"""A run's summary as a few lines for a terminal (Locust prints it above its own tables)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def format_report(summary: Mapping[str, Any]) -> str:
    """A few lines for a terminal: statuses, latency, throughput, energy, lag, warnings."""
    requests, latency, figures = summary["requests"], summary["latency_ms"], summary["figures"]
    statuses = ", ".join(f"{status} × {count}" for status, count in requests["by_status"].items())
    origin = "the schedule" if latency["from"] == "scheduled" else "each request's start"
    lines = [
        f"greenserve load test ({summary['mode']}): "
        f"{requests['total']} requests in {summary['duration_s']:.1f} s",
        f"  status       {statuses or 'none'}",
        f"  latency      p50 {_ms(latency['p50'])}, p90 {_ms(latency['p90'])}, p99 {_ms(latency['p99'])} "
        f"(200 answers, from {origin})",
        f"  throughput   {figures['throughput_rps']:.2f} req/s answered 200",
    ]
    server = summary["server"]
    if server is not None:
        jpr = server["j_per_request"]
        batch = server["mean_batch_size"]
        label = server.get("j_per_request_label") or "attributed"
        lines.append(
            "  server       "
            + (
                f"{jpr:.4g} J/request ({server['energy_source']}, {label})"
                if jpr is not None
                else "no J/request (no 200s)"
            )
            + (f", mean batch {batch:.2f} over {server['batches']} batches" if batch is not None else "")
        )
        amortised = server.get("amortised_j_per_request")
        if amortised is not None:
            lines.append(
                f"  device       {amortised:.4g} J/request ({server.get('amortised_energy_source')}, "
                f"{server.get('amortised_label') or 'amortised'})"
            )
    lag = summary["lag"]
    if lag is not None and lag["max_ms"] is not None:
        lines.append(
            f"  lag          {lag['late']} of {lag['started']} started > {lag['threshold_ms']:g} ms late "
            f"(max {lag['max_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms)"
        )
    lines.extend(f"  WARNING      {w}" for w in summary["warnings"])
    return "\n".join(lines)
