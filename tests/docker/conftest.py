"""Fixtures for the observability files under docker/: Prometheus' own tools, and a real Prometheus.

The tests check the files with the programs that will read them (promtool, prometheus) rather than with a
re-implementation of their rules. Those programs are not Python packages: `make test` installs Debian's
``prometheus`` package when they are missing, and a test that cannot find them fails and says so — a
skipped test here would pass CI with the dashboards never checked.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import REPO, free_port

DOCKER = REPO / "docker"
PROMETHEUS_DIR = DOCKER / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
GRAFANA_DIR = DOCKER / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "greenserve.json"
GRAFANA_DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "greenserve.yml"

# The scrape job of prometheus.yml that the tests point at their own server.
GREENSERVE_JOB = "greenserve"


def require_tool(name: str) -> str:
    """The path of one of Prometheus' programs, or a failure that says how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH. The tests in tests/docker check the Prometheus configuration, rules "
            "and dashboard with Prometheus itself: run them through `make test`, which installs Debian's "
            "`prometheus` package (promtool and prometheus) when it is missing, or install it yourself "
            "(`apt-get install prometheus`, or Prometheus 2.42 or later from prometheus.io, with both "
            "programs on PATH).",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return require_tool("prometheus")


def run_tool(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def derive_config(source: Path, target: str, scrape_interval: str) -> dict[str, Any]:
    """``source`` (prometheus.yml as compose uses it), scraping ``target`` every ``scrape_interval``.

    Everything else is kept as it is — the evaluation interval, the job, its metrics path and labels, the
    rule files — so a test of the derived file is a test of the real one. Rule-file patterns are made
    absolute because Prometheus resolves them against the config file's directory, and the derived file
    lives elsewhere. Derived rather than written out a second time, so that the two cannot drift.
    """
    config: dict[str, Any] = load_yaml(source)
    config.setdefault("global", {})["scrape_interval"] = scrape_interval
    config["rule_files"] = [str(source.parent / pattern) for pattern in config.get("rule_files", [])]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == GREENSERVE_JOB]
    assert len(jobs) == 1, f"{source}: expected one scrape job named {GREENSERVE_JOB!r}"
    job = jobs[0]
    if "scrape_interval" in job:
        job["scrape_interval"] = scrape_interval
    static_configs = job["static_configs"]
    assert len(static_configs) == 1 and len(static_configs[0]["targets"]) == 1, (
        f"{source}: the {GREENSERVE_JOB!r} job should scrape exactly one target"
    )
    static_configs[0]["targets"] = [target]
    return config


class PromQLError(Exception):
    """Prometheus refused a query (a parse or evaluation error); the message is Prometheus' own."""


@dataclass
class PrometheusProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful /api/v1 answer; :class:`PromQLError` for an error answer."""
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query, now or at the Unix time ``at``: its samples (``metric`` labels and ``value``)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Poll ``condition`` until it holds or ``timeout_s`` has passed; whether it held."""
        deadline = time.monotonic() + timeout_s
        while True:
            if condition():
                return True
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)


def has_finite_samples(samples: list[dict[str, Any]]) -> bool:
    return bool(samples) and all(math.isfinite(float(s["value"][1])) for s in samples)


@contextmanager
def prometheus_process(binary: str, config: dict[str, Any], tmp_path: Path) -> Iterator[PrometheusProcess]:
    """``prometheus`` with ``config`` on 127.0.0.1 and a free port, ready; always stopped afterwards."""
    port = free_port()
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = tmp_path / f"prometheus-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    prometheus = PrometheusProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{prometheus.url}/-/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        if not prometheus.wait_for(ready, timeout_s=30):
            pytest.fail(f"prometheus not ready in 30 s:\n{prometheus.log()}")
        yield prometheus
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
