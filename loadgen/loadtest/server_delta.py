"""The server's side of a load test: what greenserve's ``/metrics`` counters say happened between a
scrape before the run and one after it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from loadgen.figures import amortised_label, attributed_label
from loadgen.metrics import MetricKey, metric


@dataclass(frozen=True)
class ServerDelta:
    """What greenserve's counters say happened between the two scrapes.

    ``j_per_request`` is Δ batch energy ÷ Δ ``requests_total{status="200"}``, the metrics
    contract's definition: the energy *attributed* to the requests answered 200, idle excluded
    (``j_per_request_label``). ``amortised_j_per_request`` is Δ device energy (every device once,
    by its ``device`` label; idle included where the meter includes it) ÷ the same requests: the
    operator's bill (``amortised_label``). ``mean_batch_size`` is Δsum ÷ Δcount of the
    ``batch_size`` histogram, ``mean_batch_ms`` and ``mean_queue_wait_ms`` likewise of the
    batch-duration and queue-wait ones (what a simulator's profile is compared with).
    ``energy_read_errors`` counts failed meter reads and stalls during the run, by source: requests
    answered meanwhile have no energy, so a J/request is then too low.
    Other clients of the same server during the run are counted too.
    """

    requests_by_status: dict[str, int]
    rejected_by_reason: dict[str, int]
    batch_energy_j: dict[str, float]
    batches: int
    mean_batch_size: float | None
    j_per_request: float | None
    energy_source: str | None
    mean_batch_ms: float | None = None
    mean_queue_wait_ms: float | None = None
    j_per_request_label: str | None = None
    device_energy_j: dict[str, float] = field(default_factory=dict)
    amortised_j_per_request: float | None = None
    amortised_energy_source: str | None = None
    amortised_label: str | None = None
    energy_read_errors: dict[str, int] = field(default_factory=dict)


def _device_energy(
    before: Mapping[MetricKey, float], after: Mapping[MetricKey, float]
) -> tuple[dict[str, float], list[str]]:
    """Δ ``greenserve_device_energy_joules_total`` per device label, each device counted once (the
    largest delta where a label appears under several sources), and the sources seen."""
    name = "greenserve_device_energy_joules_total"
    old: dict[tuple[str, str], float] = {}
    for (sample, labels), value in before.items():
        if sample == name:
            have = dict(labels)
            old[(have.get("source", ""), have.get("device", ""))] = value
    by_device: dict[str, float] = {}
    sources: set[str] = set()
    for (sample, labels), value in after.items():
        if sample != name:
            continue
        have = dict(labels)
        source, device = have.get("source", ""), have.get("device", "")
        delta = value - old.get((source, device), 0.0)
        sources.add(source)
        by_device[device] = max(by_device.get(device, 0.0), delta)
    return dict(sorted(by_device.items())), sorted(sources)


def _by_label(samples: Mapping[MetricKey, float], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            key = dict(labels).get(label)
            if key is not None:
                out[key] = out.get(key, 0.0) + value
    return out


def _delta_by_label(
    before: Mapping[MetricKey, float], after: Mapping[MetricKey, float], name: str, label: str
) -> dict[str, float]:
    old, new = _by_label(before, name, label), _by_label(after, name, label)
    return {key: new[key] - old.get(key, 0.0) for key in sorted(new)}


def server_delta(before: Mapping[MetricKey, float], after: Mapping[MetricKey, float]) -> ServerDelta:
    statuses = _delta_by_label(before, after, "greenserve_requests_total", "status")
    reasons = _delta_by_label(before, after, "greenserve_rejected_total", "reason")
    energy = _delta_by_label(before, after, "greenserve_batch_energy_joules_total", "source")
    batches = metric(dict(after), "greenserve_batch_size_count") - metric(
        dict(before), "greenserve_batch_size_count"
    )
    batched = metric(dict(after), "greenserve_batch_size_sum") - metric(
        dict(before), "greenserve_batch_size_sum"
    )
    ok = statuses.get("200", 0.0)
    devices, device_sources = _device_energy(before, after)
    errors = _delta_by_label(before, after, "greenserve_energy_read_errors_total", "source")
    # One meter per server; the label is the source whatever it measured this time.
    source = "+".join(energy) if energy else None
    amortised_source = "+".join(device_sources) if device_sources else None

    def mean_ms(histogram: str) -> float | None:
        count = metric(dict(after), f"{histogram}_count") - metric(dict(before), f"{histogram}_count")
        total = metric(dict(after), f"{histogram}_sum") - metric(dict(before), f"{histogram}_sum")
        return total / count * 1000.0 if count > 0 else None

    return ServerDelta(
        requests_by_status={k: round(v) for k, v in statuses.items() if round(v)},
        rejected_by_reason={k: round(v) for k, v in reasons.items() if round(v)},
        batch_energy_j=energy,
        batches=round(batches),
        mean_batch_size=batched / batches if batches > 0 else None,
        j_per_request=sum(energy.values()) / ok if ok > 0 and energy else None,
        energy_source=source,
        mean_batch_ms=mean_ms("greenserve_batch_duration_seconds"),
        mean_queue_wait_ms=mean_ms("greenserve_queue_wait_seconds"),
        j_per_request_label=attributed_label(source) if source else None,
        device_energy_j=devices,
        amortised_j_per_request=sum(devices.values()) / ok if ok > 0 and devices else None,
        amortised_energy_source=amortised_source,
        amortised_label=amortised_label(amortised_source) if amortised_source else None,
        energy_read_errors={k: round(v) for k, v in errors.items() if round(v)},
    )
