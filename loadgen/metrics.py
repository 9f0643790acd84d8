"""Reading greenserve's ``/metrics`` (Prometheus text format) into comparable numbers."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

MetricKey = tuple[str, frozenset[tuple[str, str]]]


def parse_metrics(text: str) -> dict[MetricKey, float]:
    """Prometheus text → {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: dict[MetricKey, float], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)
