"""The serving benchmark's figures, from its points alone (pure, no I/O): the offline halves combined,
served ÷ offline ratios with their target verdicts, the batching gain and the no-op overhead.

The JSON file holds the points, so :func:`summarize` can be re-run on it without re-measuring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from studies.serving.points import OfflinePoint, ServedPoint
from studies.serving.settings import (
    NOOP_MIN_RATIO,
    PIPELINE_TARGETS,
    SERVED_TARGETS,
    BenchSettings,
    Target,
)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _verdict(ok: bool | None) -> str | None:
    return None if ok is None else ("PASS" if ok else "FAIL")


@dataclass(frozen=True)
class OfflineFigures:
    """An offline point's halves combined: totals over both, and how far the second moved."""

    images_per_s: float
    energy_j_per_image: float
    energy_source: str
    #: (second half's img/s − first half's) ÷ the combined img/s: how much the machine drifted
    #: while the served point ran. A ratio is no more precise than this.
    drift: float | None
    #: The same for J/image.
    energy_drift: float | None
    other_cpu_cores: float | None


def _drift(first: float, second: float, combined: float, count: int) -> float | None:
    return (second - first) / combined if count > 1 and combined else None


def within_noise(ratio: float | None, threshold: float, noise: float | None) -> bool:
    """Whether ``threshold`` lies within ``ratio`` ± the relative ``noise``: a verdict either way
    would then say more about the machine than about the server."""
    if ratio is None or noise is None:
        return False
    return abs(ratio - threshold) <= abs(noise) * ratio


def offline_figures(halves: Sequence[OfflinePoint]) -> OfflineFigures | None:
    if not halves:
        return None
    images = sum(p.images for p in halves)
    wall_s = sum(p.wall_s for p in halves)
    ordered = sorted(halves, key=lambda p: p.half)
    throughput = images / wall_s
    energy_j = sum(p.energy_j for p in halves)
    others = [p.other_cpu_cores for p in halves if p.other_cpu_cores is not None]
    return OfflineFigures(
        images_per_s=throughput,
        energy_j_per_image=energy_j / images,
        energy_source=",".join(sorted({p.energy_source for p in halves})),
        drift=_drift(ordered[0].images_per_s, ordered[-1].images_per_s, throughput, len(ordered)),
        energy_drift=_drift(
            ordered[0].energy_j_per_image, ordered[-1].energy_j_per_image, energy_j / images, len(ordered)
        ),
        other_cpu_cores=max(others) if others else None,
    )


@dataclass(frozen=True)
class SummaryRow:
    """One model at one batch size: offline and served side by side, with their ratios."""

    batch_size: int
    offline_images_per_s: float | None
    offline_j_per_image: float | None
    offline_drift: float | None
    offline_energy_drift: float | None
    served_requests_per_s: float | None
    served_j_per_request: float | None
    served_j_per_request_metrics: float | None
    served_mean_batch_size: float | None
    served_latency_p50_ms: float | None
    served_latency_p99_ms: float | None
    served_errors: int | None
    offline_other_cpu_cores: float | None
    served_other_cpu_cores: float | None
    offline_energy_source: str | None
    served_energy_source: str | None
    #: served req/s ÷ offline img/s at the same (max) batch size.
    throughput_ratio: float | None
    #: served J/request ÷ offline J/image at the same (max) batch size.
    energy_ratio: float | None
    throughput_target: str | None
    energy_target: str | None
    #: The target lies within the measurement's noise (the offline drift): PASS or FAIL is luck.
    throughput_within_noise: bool
    energy_within_noise: bool


def summary_row(
    size: int, off: OfflineFigures | None, srv: ServedPoint | None, target: Target | None
) -> SummaryRow:
    throughput_ratio = _ratio(srv.requests_per_s if srv else None, off.images_per_s if off else None)
    energy_ratio = _ratio(srv.energy_j_per_request if srv else None, off.energy_j_per_image if off else None)
    return SummaryRow(
        batch_size=size,
        offline_images_per_s=off.images_per_s if off else None,
        offline_j_per_image=off.energy_j_per_image if off else None,
        offline_drift=off.drift if off else None,
        offline_energy_drift=off.energy_drift if off else None,
        served_requests_per_s=srv.requests_per_s if srv else None,
        served_j_per_request=srv.energy_j_per_request if srv else None,
        served_j_per_request_metrics=srv.energy_j_per_request_metrics if srv else None,
        served_mean_batch_size=srv.mean_batch_size if srv else None,
        served_latency_p50_ms=srv.latency_p50_ms if srv else None,
        served_latency_p99_ms=srv.latency_p99_ms if srv else None,
        served_errors=sum(srv.errors.values()) if srv else None,
        offline_other_cpu_cores=off.other_cpu_cores if off else None,
        served_other_cpu_cores=srv.other_cpu_cores if srv else None,
        offline_energy_source=off.energy_source if off else None,
        served_energy_source=srv.energy_source if srv else None,
        throughput_ratio=throughput_ratio,
        energy_ratio=energy_ratio,
        throughput_target=_verdict(
            None
            if target is None or throughput_ratio is None
            else throughput_ratio >= target.min_throughput_ratio
        ),
        energy_target=_verdict(
            None if target is None or energy_ratio is None else energy_ratio <= target.max_energy_ratio
        ),
        throughput_within_noise=target is not None
        and within_noise(throughput_ratio, target.min_throughput_ratio, off.drift if off else None),
        energy_within_noise=target is not None
        and within_noise(energy_ratio, target.max_energy_ratio, off.energy_drift if off else None),
    )


def bare_figures(halves: Sequence[ServedPoint]) -> tuple[float, float | None] | None:
    """The bare app's halves combined: (requests/s over both, drift between them)."""
    if not halves:
        return None
    ordered = sorted(halves, key=lambda p: p.half)
    throughput = sum(p.requests_ok for p in halves) / sum(p.window_s for p in halves)
    return throughput, _drift(ordered[0].requests_per_s, ordered[-1].requests_per_s, throughput, len(ordered))


def protocol_figures(served: Sequence[ServedPoint]) -> dict[str, Any] | None:
    """The Open Inference Protocol (binary, one image per request) against /classify multipart on
    the same model and batch settings: both throughputs, their ratio, and the J/request of each."""
    v2 = next((p for p in served if p.protocol == "v2"), None)
    halves = sorted((p for p in served if p.protocol == "multipart"), key=lambda p: p.half)
    if v2 is None or not halves:
        return None
    multipart_rps = sum(p.requests_ok for p in halves) / sum(p.window_s for p in halves)
    energies = [p.energy_j_per_request for p in halves if p.energy_j_per_request is not None]
    return {
        "model": v2.model,
        "max_batch_size": v2.max_batch_size,
        "concurrency": v2.concurrency,
        "multipart_requests_per_s": multipart_rps,
        "multipart_drift": _drift(
            halves[0].requests_per_s, halves[-1].requests_per_s, multipart_rps, len(halves)
        ),
        "v2_binary_requests_per_s": v2.requests_per_s,
        "ratio": v2.requests_per_s / multipart_rps,
        "multipart_j_per_request": sum(energies) / len(energies) if energies else None,
        "v2_binary_j_per_request": v2.energy_j_per_request,
        "energy_source": v2.energy_source,
        "multipart_mean_batch_size": halves[0].mean_batch_size,
        "v2_binary_mean_batch_size": v2.mean_batch_size,
        "errors": sum(v2.errors.values()) + sum(sum(p.errors.values()) for p in halves),
    }


def pipeline_figures(halves: Sequence[OfflinePoint], served: Sequence[ServedPoint]) -> dict[str, Any] | None:
    """The served point against the offline pipeline at the same (largest) batch size: throughput,
    and the server's CPU-s per request against the pipeline's per image (with the estimate source,
    CPU-s are the joules at a fixed W per core), with the issue-17 targets where the model has them."""
    if not halves:
        return None
    size = halves[0].batch_size
    srv = next((p for p in served if p.max_batch_size == size), None)
    figures = offline_figures(halves)
    assert figures is not None
    images = sum(p.images for p in halves)
    cpu_ms = sum(p.cpu_cores * p.wall_s for p in halves) / images * 1000
    throughput_ratio = _ratio(srv.requests_per_s if srv else None, figures.images_per_s)
    cpu_ratio = _ratio(srv.server_cpu_ms_per_request if srv else None, cpu_ms)
    target = PIPELINE_TARGETS.get(halves[0].model)
    return {
        "batch_size": size,
        "images_per_s": figures.images_per_s,
        "drift": figures.drift,
        "cpu_ms_per_image": cpu_ms,
        "j_per_image": figures.energy_j_per_image,
        "energy_source": figures.energy_source,
        "served_requests_per_s": srv.requests_per_s if srv else None,
        "served_cpu_ms_per_request": srv.server_cpu_ms_per_request if srv else None,
        "served_j_per_request": srv.energy_j_per_request if srv else None,
        "throughput_ratio": throughput_ratio,
        "cpu_ratio": cpu_ratio,
        "target": asdict(target) if target else None,
        "throughput_target": _verdict(
            None
            if target is None or throughput_ratio is None
            else throughput_ratio >= target.min_throughput_ratio
        ),
        "cpu_target": _verdict(
            None if target is None or cpu_ratio is None else cpu_ratio <= target.max_cpu_ratio
        ),
        "throughput_within_noise": target is not None
        and within_noise(throughput_ratio, target.min_throughput_ratio, figures.drift),
    }


def summarize(
    settings: BenchSettings, offline: Sequence[OfflinePoint], served: Sequence[ServedPoint]
) -> dict[str, Any]:
    """Points in, ratios and target verdicts out (no I/O)."""
    models: dict[str, Any] = {}
    for model in settings.models:
        target = SERVED_TARGETS.get(model)
        rows = [
            summary_row(
                size,
                offline_figures(
                    [p for p in offline if p.model == model and p.batch_size == size and p.stage == "model"]
                ),
                next(
                    (
                        p
                        for p in served
                        if p.server == "greenserve"
                        and p.protocol == "raw"
                        and p.model == model
                        and p.max_batch_size == size
                    ),
                    None,
                ),
                target,
            )
            for size in settings.batch_sizes
        ]
        # The gain of batching: the largest batch size against batch size 1 (or the smallest given).
        smallest = min(rows, key=lambda row: row.batch_size)
        largest = max(rows, key=lambda row: row.batch_size)
        models[model] = {
            "target": asdict(target) if target else None,
            "rows": [asdict(row) for row in rows],
            "batching_gain": {
                "from_batch_size": smallest.batch_size,
                "to_batch_size": largest.batch_size,
                "offline": _ratio(largest.offline_images_per_s, smallest.offline_images_per_s),
                "served": _ratio(largest.served_requests_per_s, smallest.served_requests_per_s),
            },
            "pipeline": pipeline_figures(
                [p for p in offline if p.model == model and p.stage == "pipeline"],
                [p for p in served if p.server == "greenserve" and p.protocol == "raw" and p.model == model],
            ),
        }
    noop = next(
        (p for p in served if p.server == "greenserve" and p.model == "noop" and p.protocol == "raw"), None
    )
    bare = bare_figures([p for p in served if p.server == "bare"])
    overhead = None
    if noop is not None and bare is not None:
        bare_rps, bare_drift = bare
        ratio = noop.requests_per_s / bare_rps
        overhead = {
            "max_batch_size": noop.max_batch_size,
            "concurrency": noop.concurrency,
            "greenserve_noop_requests_per_s": noop.requests_per_s,
            "bare_fastapi_requests_per_s": bare_rps,
            "bare_fastapi_drift": bare_drift,
            "ratio": ratio,
            "min_ratio": NOOP_MIN_RATIO,
            "target": _verdict(ratio >= NOOP_MIN_RATIO),
            "within_noise": within_noise(ratio, NOOP_MIN_RATIO, bare_drift),
        }
    return {
        "models": models,
        "overhead": overhead,
        "protocols": protocol_figures(served),
        "errors_total": sum(sum(p.errors.values()) for p in served),
    }
