"""The observability files under docker/: Prometheus' config, rules and unit tests, and Grafana's dashboard.

Three levels. promtool checks the config and the rules and runs their unit tests (docker/prometheus/tests/),
which pin each alert's firing and silence and each recording rule's value on made-up series. Then a real
Prometheus, configured from docker/prometheus/prometheus.yml (derived, not copied: see
``derive_config``), scrapes a real greenserve under load, and every PromQL expression of the rule files and
of the dashboard is evaluated through its HTTP API: each must parse and return finite data, which proves
that the names and labels they use are the ones the server exports (the metric contract in
docs/architecture.md) — the failure a unit test on made-up series cannot see. Grafana is not available,
so the dashboard's structure is checked here against what Grafana's provisioning needs.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import re
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from service import digits
from tests.conftest import ServerProcess, png_bytes, server_process
from tests.docker.conftest import (
    DASHBOARD,
    GRAFANA_DASHBOARD_PROVIDERS,
    GRAFANA_DATASOURCES,
    GREENSERVE_JOB,
    PROMETHEUS_CONFIG,
    RULE_TESTS_DIR,
    RULES_DIR,
    PrometheusProcess,
    derive_config,
    has_finite_samples,
    load_yaml,
    prometheus_process,
    run_tool,
)

# --- the expressions under test ---------------------------------------------------------------------------

RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
RULE_TEST_FILES = sorted(RULE_TESTS_DIR.glob("*.yml"))


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in load_yaml(path)["groups"] for rule in group["rules"]]


def recording_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "record" in rule]


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return list(dashboard()["panels"])


_COMPARISON = re.compile(
    r"^(?P<condition>.+?)\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?"
    r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*$",
    re.DOTALL,
)
_SET_OPERATOR = re.compile(r"\b(?:and|or|unless)\b")


def alert_condition(expr: str) -> str:
    """What an alert watches, without its threshold: ``x > 1`` → ``x``; a bare condition as it is.

    An alert's expression is empty while nothing is wrong, so evaluating it proves nothing about its
    series. The rules keep the shape ``<condition> <comparison> <number>`` (alerts.yml says so), and
    comparisons bind more loosely than arithmetic, so cutting the trailing comparison leaves exactly the
    compared value. and/or/unless bind more loosely still; an expression with one would be cut in the
    wrong place, so it is refused rather than guessed at.
    """
    expr = expr.strip()
    assert not _SET_OPERATOR.search(expr), f"an alert expression with and/or/unless: {expr!r}"
    match = _COMPARISON.match(expr)
    return match["condition"].strip() if match else expr


# Grafana's built-in interval variables, and what they stand for in the test's queries (made just after its
# load): a window that holds the whole load. Then the dashboard's own: the job the tests' Prometheus scrapes
# (a value that must match, so a filter merged into the wrong place loses the data), and the instance as
# Grafana sends it when All is selected (its allValue). A dashboard variable not listed here fails the test,
# so that one added later gets a value here too.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "5m",
    "job": GREENSERVE_JOB,
    "instance": ".*",
}
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def substitute_grafana_variables(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in GRAFANA_VARIABLES, f"dashboard variable ${name} has no test value: {expr!r}"
        return GRAFANA_VARIABLES[name]

    return _VARIABLE.sub(value, expr)


_LABEL_VALUES = re.compile(r"label_values\((?P<selector>[^,]+),\s*(?P<label>\w+)\)")


@dataclass(frozen=True)
class Expression:
    where: str
    expr: str


def expressions_to_evaluate() -> list[Expression]:
    """Every expression of the rule files and of the dashboard, as Prometheus is to evaluate it."""
    found = []
    for rule in recording_rules():
        found.append(Expression(f"record {rule['record']}: expr", rule["expr"]))
        found.append(Expression(f"record {rule['record']}: recorded series", rule["record"]))
    for rule in alerting_rules():
        found.append(Expression(f"alert {rule['alert']}: condition", alert_condition(rule["expr"])))
    for panel in panels():
        for target in panel["targets"]:
            found.append(
                Expression(
                    f"panel {panel['id']} {panel['title']!r} {target['refId']}",
                    substitute_grafana_variables(target["expr"]),
                )
            )
    # The job and instance variables' label_values(selector, label), as the PromQL that lists the same values:
    # the metric they list from is exported, with those labels.
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = _LABEL_VALUES.fullmatch(variable["query"])
            assert match, f"variable {variable['name']}: {variable['query']!r}"
            query = f"group by ({match['label']}) ({match['selector']})"
            found.append(Expression(f"variable {variable['name']}", substitute_grafana_variables(query)))
    return found


EXPRESSIONS = expressions_to_evaluate()


# --- promtool ---------------------------------------------------------------------------------------------


def test_config_passes_promtool(promtool: str) -> None:
    """The file compose mounts, with its rule files (resolved next to it, as in the container)."""
    for args in (["--syntax-only"], []):
        result = run_tool(promtool, "check", "config", *args, str(PROMETHEUS_CONFIG))
        assert result.returncode == 0, result.stdout + result.stderr


def test_config_is_what_compose_expects() -> None:
    """The job, target and intervals the compose file and the rules rely on (see the file's comments)."""
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == "5s"
    assert config["global"]["evaluation_interval"] == "5s"
    assert config["rule_files"] == ["rules/*.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == GREENSERVE_JOB
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert [c["targets"] for c in job["static_configs"]] == [["greenserve:8000"]]


def test_derived_config_passes_promtool(promtool: str, tmp_path: Path) -> None:
    config = derive_config(PROMETHEUS_CONFIG, "127.0.0.1:8000", "1s")
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    result = run_tool(promtool, "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    original = load_yaml(PROMETHEUS_CONFIG)
    assert config["global"]["evaluation_interval"] == original["global"]["evaluation_interval"]
    assert [Path(p).parent for p in config["rule_files"]] == [RULES_DIR]


def test_rules_pass_promtool(promtool: str) -> None:
    result = run_tool(promtool, "check", "rules", "--lint=all", "--lint-fatal", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    assert RULE_TEST_FILES, f"no promtool tests in {RULE_TESTS_DIR}"
    result = run_tool(promtool, "test", "rules", *map(str, RULE_TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TEST_FILES:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerting_rules()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


def test_every_recording_rule_has_a_value_test() -> None:
    tested = " ".join(
        check["expr"]
        for path in RULE_TEST_FILES
        for case in load_yaml(path)["tests"]
        for check in case.get("promql_expr_test", [])
    )
    names = set(re.findall(r"[a-z_]+:[a-z0-9_:]+", tested))
    assert {rule["record"] for rule in recording_rules()} - names == set()


def test_rules_follow_the_conventions() -> None:
    """level:metric:operations names, and alerts that say how bad, for how long, and what to do.

    The level starts with `instance` (one replica's figure) or `job` (the job's, across its replicas).
    """
    name = re.compile(r"(instance|job)(_[a-z]+)*:greenserve_[a-z0-9_]+:[a-z0-9_]+")
    for rule in recording_rules():
        assert name.fullmatch(rule["record"]), rule
    for rule in alerting_rules():
        assert rule["alert"].startswith("Greenserve"), rule
        assert rule.get("for"), rule
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule


@pytest.mark.parametrize(
    ("expr", "condition"),
    [
        ('up{job="greenserve"} == 0', 'up{job="greenserve"}'),
        ("a / on (job) b > 0.05", "a / on (job) b"),
        ("x >= bool 1e-3", "x"),
        ('count by (job) (x{a!="none"})', 'count by (job) (x{a!="none"})'),
    ],
)
def test_alert_condition_strips_the_threshold_only(expr: str, condition: str) -> None:
    assert alert_condition(expr) == condition


# --- the dashboard and Grafana's provisioning -------------------------------------------------------------


def test_grafana_provisioning_matches_compose() -> None:
    """The data source and dashboard paths as seen inside compose's Grafana container."""
    (source,) = load_yaml(GRAFANA_DATASOURCES)["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["uid"] == "prometheus"
    (provider,) = load_yaml(GRAFANA_DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_structure() -> None:
    """What Grafana needs to show every panel from the chosen data source, laid out without overlap."""
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        where = f"panel {panel['id']} {panel.get('title')!r}"
        assert panel.get("title") and panel.get("type"), where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "hwxy"), where
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, where
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{where} overlaps {cells[(x, y)]}"
                cells[(x, y)] = where
        targets = panel["targets"]
        assert targets, where
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in targets:
            assert target.get("expr", "").strip(), where
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], where
            if panel["type"] == "heatmap":
                # Prometheus' cumulative buckets, drawn as they are: Grafana de-accumulates them by `le`.
                assert target.get("format") == "heatmap" and "by (le)" in target["expr"], where


def test_dashboard_covers_the_contract() -> None:
    """Each panel the issue asks for reads the metric it is about."""
    exprs = " ".join(target["expr"] for panel in panels() for target in panel["targets"])
    for needed in (
        "greenserve_requests_total",
        "greenserve_request_duration_seconds",
        "greenserve_queue_wait_seconds",
        "greenserve_batch_size_bucket",
        "greenserve_energy_joules_per_request",
        "greenserve_device_energy_joules_per_request",
        "greenserve_stage_energy_joules",
        "greenserve_idle_energy_joules",
        "greenserve_energy_read_errors_total",
        "greenserve_device_energy_joules",
        "greenserve_power_watts",
        "greenserve_rejected_total",
        "greenserve_batching_config",
        "greenserve_model_info",
    ):
        assert needed in exprs, needed


def test_dashboard_shows_attributed_and_amortised_energy_per_request() -> None:
    """Both J/request figures, each saying what it includes, so that neither is read as the other."""
    by_title = {panel["title"]: panel for panel in panels()}
    attributed = [panel for title, panel in by_title.items() if "attributed" in title.lower()]
    amortised = [panel for title, panel in by_title.items() if "amortised" in title.lower()]
    assert attributed and amortised, sorted(by_title)
    for panel in attributed:
        assert "idle" in panel["description"].lower(), panel["title"]
    for panel in amortised:
        assert "idle" in panel["description"].lower(), panel["title"]
        assert "max by" in panel["description"].lower() or "once" in panel["description"].lower()
    exprs = {target["expr"] for panel in amortised for target in panel["targets"]}
    assert any("greenserve_device_energy_joules_per_request" in expr for expr in exprs), exprs


# Two replicas on one host, both reading the same RAPL package (30 W) and DRAM (3 W); replica a started
# earlier, so its counters are higher at the same rate. They answer 2 and 1 requests/s and attribute 2 W and
# 1 W to them. Scraped every 15 s, as in docker/prometheus/tests/.
_SHARED_HOST = 'job="greenserve", instance="host:800{replica}"'
_PACKAGE = ', source="rapl", device="3f2a9c1e:package-0"'
_DRAM = ', source="rapl", device="3f2a9c1e:dram-0"'
SHARED_DEVICE_SERIES = [
    {"series": f"greenserve_{metric}{{{_SHARED_HOST.format(replica=replica)}{labels}}}", "values": values}
    for replica, offset, requests, attributed in ((0, 1, 30, 30), (1, 0, 15, 15))
    for metric, labels, values in (
        ("requests_total", ', status="200"', f"0+{requests}x40"),
        ("device_energy_joules_total", _PACKAGE, f"{offset * 9000}+450x40"),
        ("device_energy_joules_total", _DRAM, f"{offset * 900}+45x40"),
        ("power_watts", _PACKAGE, "30x40"),
        ("power_watts", _DRAM, "3x40"),
        ("stage_energy_joules_total", ', stage="model", source="rapl"', f"0+{attributed}x40"),
        ("stage_energy_joules_total", ', stage="decode", source="rapl"', "0x40"),
        ("stage_energy_joules_total", ', stage="serving", source="rapl"', "0x40"),
        ("idle_energy_joules_total", _PACKAGE, f"0+{450 - attributed}x40"),
        ("idle_energy_joules_total", _DRAM, "0+45x40"),
        ("batch_energy_joules_total", ', source="rapl"', f"0+{attributed}x40"),
    )
]
# What each dashboard query of device energy or power adds up to in that scenario (summed over its series, at
# 5 m): every device once. Counted once per replica, each would be larger (66 W, 22 J, 60 W, 0.00825 kWh).
# A query that is not a cross-replica total says why instead of a number.
SHARED_DEVICE_TOTALS: dict[tuple[str, str], float | str] = {
    ("Power per device (W)", "A"): 33.0,
    ("Power per device (W)", "B"): 33.0,
    ("Power per device (W)", "C"): 33.0,
    ("Energy per request, amortised (J)", "A"): 11.0,  # 33 W over 3 requests/s
    ("Energy per request, amortised (J)", "B"): 11.0,
    ("Unattributed (idle) power (W)", "A"): 30.0,  # 33 W less 3 W attributed
    ("Unattributed (idle) power (W)", "B"): "one replica's own idle, each on its own line: not a total",
    ("Cumulative device energy (kWh)", "A"): 0.0055,  # 18 000 J + 1 800 J, replica a's count
    ("Model and energy source", "B"): "counts series to name the sources, not energy",
}
_DEVICE_SERIES = re.compile(r"greenserve_(?:device_energy_joules|power_watts|idle_energy_joules)")


def test_dashboard_counts_each_device_once(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query of device energy or power, on two replicas sharing a device: counted once.

    The device label names the physical device, so replicas on one host report the same one; a query that
    sums over replicas without ``max by (device)`` counts it twice. Evaluated by promtool with the rule files.
    """
    device_targets = {
        (panel["title"], target["refId"]): substitute_grafana_variables(target["expr"])
        for panel in panels()
        for target in panel["targets"]
        if _DEVICE_SERIES.search(target["expr"])
    }
    assert set(device_targets) == set(SHARED_DEVICE_TOTALS), (
        "a dashboard query of device energy or power needs its expected total in SHARED_DEVICE_TOTALS: "
        f"{sorted(set(device_targets) ^ set(SHARED_DEVICE_TOTALS))}"
    )
    checks = [
        {
            "expr": f"round(sum({expr}) / {SHARED_DEVICE_TOTALS[key]!r}, 0.001)",
            "eval_time": "5m",
            "exp_samples": [{"labels": "{}", "value": 1}],
        }
        for key, expr in device_targets.items()
        if not isinstance(SHARED_DEVICE_TOTALS[key], str)
    ]
    unit_test = {
        "rule_files": [str(path) for path in RULE_FILES],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": SHARED_DEVICE_SERIES, "promql_expr_test": checks}],
    }
    path = tmp_path / "shared_device_test.yml"
    path.write_text(json.dumps(unit_test, indent=1))  # JSON is YAML
    result = run_tool(promtool, "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- a real Prometheus scraping a real greenserve ---------------------------------------------------------


@dataclass
class Stack:
    server: ServerProcess
    prometheus: PrometheusProcess
    # When the rules had been evaluated on the load's data. Every check queries at this moment, not "now":
    # a [1m] window at "now" loses the load a minute after it, and the checks would depend on how long the
    # ones before them took.
    at: float


# The test server's batching: a small queue (16) and short waits.
SERVER_BATCHING = {"max_batch_size": 8, "max_wait_ms": 10, "max_queue": 16}


async def send_load(url: str) -> collections.Counter[int]:
    """A few hundred requests over a few seconds, with the failures the dashboard counts.

    Rounds of 24 concurrent digits and 2 undecodable bodies (400), spread over several 1 s scrapes so that
    every rate has a rise to measure. Then a burst against a batch held open (max_batch_size above
    max_queue, a 500 ms wait), so the queue fills and the rest of the burst is refused (429) whatever the
    machine's speed; and, with the settings back, requests whose 1 ms deadline passes before compute (504).
    Then rounds under the adaptive policy, which the server keeps.
    """
    split = digits.load_split()
    images = [png_bytes(Image.fromarray(digits.to_png_pixels(x))) for x in split.x_test[:24]]
    statuses: collections.Counter[int] = collections.Counter()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def classify(body: bytes, headers: dict[str, str] | None = None) -> None:
            response = await client.post(
                "/classify", content=body, headers={"content-type": "image/png", **(headers or {})}
            )
            statuses[response.status_code] += 1

        async def configure(**settings: float | str) -> None:
            (await client.put("/v1/batching", json=settings)).raise_for_status()

        async def together(*requests: Coroutine[Any, Any, None]) -> None:
            # Every request ends before the first failure is raised: none is left holding a socket.
            for outcome in await asyncio.gather(*requests, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome

        for _ in range(10):
            bad = (classify(b"not a png"), classify(b""))
            await together(*(classify(image) for image in images), *bad)
            await asyncio.sleep(0.3)
        await configure(max_batch_size=64, max_wait_ms=500)
        await together(*(classify(images[i % len(images)]) for i in range(48)))
        await configure(
            max_batch_size=SERVER_BATCHING["max_batch_size"], max_wait_ms=SERVER_BATCHING["max_wait_ms"]
        )
        for _ in range(3):
            await classify(images[0], {"X-Request-Timeout-Ms": "1"})
        # Last, the adaptive policy (and it stays): its target, projected and observed p99 and learned
        # J/image are series only an adaptive policy publishes (the dashboard's batching-policy row).
        await configure(batching="adaptive", slo_p99_ms=200)
        for _ in range(6):
            await together(*(classify(image) for image in images[:12]))
            await asyncio.sleep(0.3)
    return statuses


@pytest.fixture(scope="module")
def stack(prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """greenserve under load, scraped every second by Prometheus configured from prometheus.yml.

    Ready once every recording rule has been evaluated on the load's data: by then the raw series have
    been scraped several times too.
    """
    tmp = tmp_path_factory.mktemp("stack")
    flags = [
        arg for name, value in SERVER_BATCHING.items() for arg in (f"--{name.replace('_', '-')}", str(value))
    ]
    with server_process(tmp, *flags) as server:
        target = server.url.removeprefix("http://")
        config = derive_config(PROMETHEUS_CONFIG, target, scrape_interval="1s")
        with prometheus_process(prometheus_binary, config, tmp) as prometheus:
            if not prometheus.wait_for(lambda: bool(prometheus.query("up == 1")), timeout_s=30):
                pytest.fail(f"prometheus never scraped {target}:\n{prometheus.log()}")
            try:
                statuses = asyncio.run(send_load(server.url))
            except httpx.TransportError as exc:
                state = "running" if server.process.poll() is None else f"exited {server.process.returncode}"
                pytest.fail(
                    f"greenserve dropped a request ({exc!r}); server {state}, log:\n{server.log()[-4000:]}"
                )
            assert {200, 400, 429, 504} <= set(statuses), statuses
            recorded = [rule["record"] for rule in recording_rules()]
            # Not asserted here: a rule that never yields data is reported by its own test, by name.
            prometheus.wait_for(
                lambda: all(has_finite_samples(prometheus.query(name)) for name in recorded), timeout_s=30
            )
            yield Stack(server, prometheus, at=time.time())


@pytest.mark.server
@pytest.mark.parametrize("expression", EXPRESSIONS, ids=[e.where for e in EXPRESSIONS])
def test_expression_returns_data(stack: Stack, expression: Expression) -> None:
    samples = stack.prometheus.query(expression.expr, at=stack.at)
    assert samples, f"no data for {expression.expr!r}"
    values = [float(sample["value"][1]) for sample in samples]
    assert all(math.isfinite(v) for v in values), f"{expression.expr!r}: {samples}"


@pytest.mark.server
def test_recorded_series_keep_the_labels_their_names_say(stack: Stack) -> None:
    """``instance_source:…`` keeps job, instance and source, and nothing else; and so on."""
    for rule in recording_rules():
        level = rule["record"].split(":")[0]
        expected = {"job", *level.split("_")}
        samples = stack.prometheus.query(rule["record"], at=stack.at)
        assert samples, rule["record"]
        for sample in samples:
            assert set(sample["metric"]) - {"__name__"} == expected, (rule["record"], sample["metric"])


@pytest.mark.server
def test_prometheus_loaded_and_evaluates_every_rule(stack: Stack) -> None:
    loaded = {
        (rule.get("name"), rule["health"], rule.get("lastError", ""))
        for group in stack.prometheus.api("rules")["groups"]
        for rule in group["rules"]
    }
    names = {rule.get("record") or rule.get("alert") for rule in rules()}
    assert {name for name, _, _ in loaded} == names
    assert {(name, health, error) for name, health, error in loaded if health != "ok" or error} == set()


@pytest.mark.server
def test_energy_estimated_alert_is_active(stack: Stack) -> None:
    """The test server measures with the `estimate` and its target has no energy_sensor="none" label."""
    target = stack.server.url.removeprefix("http://")

    def active() -> bool:
        return any(
            alert["labels"]["alertname"] == "GreenserveEnergyEstimated"
            and alert["labels"]["instance"] == target
            and alert["state"] in {"pending", "firing"}
            for alert in stack.prometheus.api("alerts")["alerts"]
        )

    assert stack.prometheus.wait_for(active, timeout_s=15), stack.prometheus.api("alerts")
