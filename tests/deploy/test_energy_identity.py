"""Replicas on one node or GPU: each physical device's energy counted once, each process's estimate once.

The `device` label names the physical device (docs/energy.md): an NVML GPU's UUID, "<boot id>:package-0" for
RAPL, which replicas on one node or GPU share, so the recording rules take it once (`max by (device)`). The
estimate's device is "estimate:<boot id>:<pid>", per process on purpose, but in a pod the server is pid 1 of
its own pid namespace: two replicas on one node would report one device, and `max by (device)` would drop one
of them. The ServiceMonitor's metric relabeling adds the pod's name to those labels.

A real Prometheus scrapes two replicas "on one node" (two loopback servers exposing what two greenserve pods
on one GPU node expose: the same GPU, the same RAPL package, each its own pid-1 estimate), with the
ServiceMonitor's metric relabelings as the Operator writes them into its scrape config, and the
PrometheusRule's per-device power rule is evaluated on what it stored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import Rendered
from tests.docker.conftest import prometheus_process, require_tool

BOOT = "3f2a9c1e"
GPU = "GPU-5b1c3e2a-0d4f-4b7e-9a61-2c8d7f0e1a93"
# source, device label as greenserve writes it in a pod, watts. Both replicas expose all three.
DEVICES = [("rapl", f"{BOOT}:package-0", 30.0), ("nvml", GPU, 200.0), ("estimate", f"estimate:{BOOT}:1", 5.0)]
PODS = ("greenserve-7d4b9-aaaaa", "greenserve-7d4b9-bbbbb")
# What each source's devices draw, each physical device once and each replica's estimate once.
EXPECTED_WATTS = {"rapl": 30.0, "nvml": 200.0, "estimate": 10.0}
# Every relabeling field of a ServiceMonitor endpoint and its name in Prometheus' configuration.
RELABEL_FIELDS = {
    "sourceLabels": "source_labels",
    "separator": "separator",
    "regex": "regex",
    "targetLabel": "target_label",
    "replacement": "replacement",
    "modulus": "modulus",
}


def exposition(started: float, offset_j: float) -> str:
    """A replica's /metrics on its devices now: counters at each device's power since ``started``."""
    elapsed = time.time() - started
    lines = ["# TYPE greenserve_device_energy_joules_total counter"]
    for source, device, watts in DEVICES:
        value = offset_j + watts * elapsed
        lines.append(
            f'greenserve_device_energy_joules_total{{source="{source}",device="{device}"}} {value:.6f}'
        )
    return "\n".join(lines) + "\n"


@contextmanager
def replica(offset_j: float) -> Iterator[str]:
    """A loopback server exposing one replica's device counters; its host:port."""
    started = time.time()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exposition(started, offset_j).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def metric_relabel_configs(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """The endpoint's metricRelabelings as the Prometheus Operator writes them into the scrape config."""
    (endpoint,) = monitor["spec"]["endpoints"]
    configs = []
    for relabeling in endpoint["metricRelabelings"]:
        unknown = set(relabeling) - set(RELABEL_FIELDS) - {"action"}
        assert not unknown, f"a relabeling field this test does not translate: {unknown}"
        config = {RELABEL_FIELDS[key]: value for key, value in relabeling.items() if key != "action"}
        config["action"] = relabeling.get("action", "replace").lower()
        configs.append(config)
    return configs


def recording_rule(variant: Rendered, record: str) -> str:
    for group in variant.one("PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == record:
                expr: str = rule["expr"]
                return expr
    pytest.fail(f"no recording rule {record}")


def test_replicas_on_one_node_count_each_device_once(
    rendered_variants: dict[str, Rendered], tmp_path: Path
) -> None:
    variant = rendered_variants["gpu+keda"]
    monitor = variant.one("ServiceMonitor")
    service = variant.one("Service")["metadata"]
    binary = require_tool("prometheus")
    with replica(offset_j=9000.0) as first, replica(offset_j=4000.0) as second:
        config = {
            "global": {"scrape_interval": "500ms", "evaluation_interval": "500ms"},
            "scrape_configs": [
                {
                    # The job is the Service's name, as with the ServiceMonitor; the pod and namespace are
                    # target labels, as the Operator's relabeling makes them.
                    "job_name": service["name"],
                    "metrics_path": "/metrics",
                    "static_configs": [
                        {"targets": [target], "labels": {"namespace": service["namespace"], "pod": pod}}
                        for target, pod in zip((first, second), PODS, strict=True)
                    ],
                    "metric_relabel_configs": metric_relabel_configs(monitor),
                }
            ],
        }
        with prometheus_process(binary, config, tmp_path) as prometheus:
            query = "count(greenserve_device_energy_joules_total)"
            if not prometheus.wait_for(
                lambda: [float(s["value"][1]) for s in prometheus.query(query)] == [6.0],
                timeout_s=30,
            ):
                pytest.fail(f"prometheus never stored both replicas' series:\n{prometheus.log()}")
            devices = prometheus.query(
                "count by (source) (count by (source, device) (greenserve_device_energy_joules_total))"
            )
            assert {s["metric"]["source"]: float(s["value"][1]) for s in devices} == {
                "rapl": 1,
                "nvml": 1,
                "estimate": 2,
            }
            estimates = prometheus.query(
                'group by (device) (greenserve_device_energy_joules_total{source="estimate"})'
            )
            assert sorted(s["metric"]["device"] for s in estimates) == sorted(
                f"estimate:{BOOT}:1:{pod}" for pod in PODS
            )
            # The per-device power rule (its 1 m window cut to 3 s: six scrapes), summed by source.
            rule = recording_rule(variant, "job_source_device:greenserve_device_energy_joules:max_rate1m")
            assert "[1m]" in rule
            power = f"sum by (source) ({rule.replace('[1m]', '[3s]')})"

            def watts() -> dict[str, float]:
                return {s["metric"]["source"]: float(s["value"][1]) for s in prometheus.query(power)}

            # Polled until the window holds enough scrapes for the rates to settle (a few seconds).
            if not prometheus.wait_for(
                lambda: watts() == pytest.approx(EXPECTED_WATTS, rel=0.05), timeout_s=30
            ):
                pytest.fail(f"{power} gives {watts()} W, not {EXPECTED_WATTS}:\n{prometheus.log()}")
