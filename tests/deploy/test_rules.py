"""The PromQL of deploy/k8s, checked by promtool: the PrometheusRule, and the autoscalers' queries.

The PrometheusRule is generated from docker/prometheus/rules/*.yml (deploy/gen_prometheusrule.py): it must
be what the script makes of the rule files now, and the rules as rendered by kustomize must pass promtool's
checks and every unit test of docker/prometheus/tests, so they compute the same values as compose's. The KEDA
queries and the prometheus-adapter rules are evaluated by promtool on series as Prometheus stores them when it
scrapes through the ServiceMonitor (namespace, pod and job labels): each must select this deployment's pods
only, and both must measure the same load.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.deploy.conftest import K8S, Rendered, load_yaml
from tests.docker.conftest import RULE_TESTS_DIR, RULES_DIR, require_tool, run_tool

GENERATOR = REPO / "deploy" / "gen_prometheusrule.py"
ADAPTER_VALUES = K8S / "components" / "hpa" / "prometheus-adapter-values.yaml"


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool")


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_prometheusrule", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_is_generated_from_the_rule_files() -> None:
    """One source: the committed PrometheusRule is what the generator makes of docker/prometheus/rules now."""
    gen = generator()
    committed = gen.OUTPUT.read_text()
    assert committed == gen.render(), (
        f"{gen.OUTPUT.relative_to(REPO)} is not what {RULES_DIR.relative_to(REPO)}/*.yml give: "
        "run .venv/bin/python deploy/gen_prometheusrule.py"
    )
    groups = [group for path in sorted(RULES_DIR.glob("*.yml")) for group in load_yaml(path)["groups"]]
    assert yaml.safe_load(committed)["spec"]["groups"] == groups


def test_generator_check_fails_when_a_rule_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--check passes now, and fails, saying what to run, once a rule file changes."""
    gen = generator()
    assert gen.main(["--check"]) == 0
    changed = tmp_path / "rules"
    changed.mkdir()
    for path in sorted(RULES_DIR.glob("*.yml")):
        (changed / path.name).write_text(path.read_text().replace("for: 5m", "for: 6m"))
    monkeypatch.setattr(gen, "RULES_DIR", changed)
    assert gen.main(["--check"]) == 1
    assert "run .venv/bin/python deploy/gen_prometheusrule.py" in capsys.readouterr().err


def rule_file(variant: Rendered, tmp_path: Path) -> Path:
    """The rendered PrometheusRule's groups as a Prometheus rule file (what the Operator gives Prometheus)."""
    groups = variant.one("PrometheusRule")["spec"]["groups"]
    path = tmp_path / f"{variant.overlay}-rules.yml"
    path.write_text(json.dumps({"groups": groups}, indent=1))  # JSON is YAML
    return path


def test_rendered_rules_pass_promtool(variant: Rendered, promtool: str, tmp_path: Path) -> None:
    path = rule_file(variant, tmp_path)
    result = run_tool(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_rules_pass_the_docker_rule_tests(
    rendered_variants: dict[str, Rendered], promtool: str, tmp_path: Path
) -> None:
    """docker/prometheus/tests, run on the rules as Kubernetes gets them: the same alerts, the same values."""
    path = rule_file(rendered_variants["cpu+keda"], tmp_path)
    tests = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert tests
    for test in tests:
        unit: dict[str, Any] = load_yaml(test)
        unit["rule_files"] = [str(path)]
        derived = tmp_path / test.name
        derived.write_text(json.dumps(unit, indent=1))
        result = run_tool(promtool, "test", "rules", str(derived))
        assert result.returncode == 0, f"{test.name}:\n{result.stdout}{result.stderr}"


# --- the autoscalers' queries ------------------------------------------------------------------------------

# Two greenserve pods of this deployment and one of another namespace, as scraped through the ServiceMonitor
# every 15 s. Pod a: 1 s of request time a second (1 request in flight on average), 4 queued; pod b: 3 and 8.
# The other namespace's pod (its own greenserve) is busy and must be in no figure.
_TARGET = 'namespace="{ns}", job="greenserve", service="greenserve", pod="{pod}", instance="{ip}:8000"'
POD_SERIES = [
    ("greenserve", "greenserve-7d4b9-aaaaa", "10.0.0.1", 15, 4),
    ("greenserve", "greenserve-7d4b9-bbbbb", "10.0.0.2", 45, 8),
    ("elsewhere", "greenserve-5c8f7-ccccc", "10.0.1.1", 150, 100),
]
INPUT_SERIES = [
    {"series": f"greenserve_{metric}{{{_TARGET.format(ns=ns, pod=pod, ip=ip)}}}", "values": values}
    for ns, pod, ip, seconds, queued in POD_SERIES
    for metric, values in (
        ("request_duration_seconds_sum", f"0+{seconds}x40"),
        ("request_duration_seconds_count", f"0+{seconds * 10}x40"),
        ("queue_depth", f"{queued}x40"),
    )
]
IN_FLIGHT = {"greenserve-7d4b9-aaaaa": 1.0, "greenserve-7d4b9-bbbbb": 3.0}
QUEUED = {"greenserve-7d4b9-aaaaa": 4.0, "greenserve-7d4b9-bbbbb": 8.0}


def adapter_query(rule: dict[str, Any], namespace: str, pods: list[str]) -> str:
    """The rule's metricsQuery as prometheus-adapter fills it in for an HPA's request for these pods."""
    series = rule["seriesQuery"].split("{")[0]
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return str(
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "pod")
    )


def test_autoscaler_queries_measure_this_deployments_load(
    rendered_variants: dict[str, Rendered], promtool: str, tmp_path: Path
) -> None:
    """KEDA's totals and the adapter's per-pod values on the same series: this namespace only, one load."""
    triggers = {
        trigger["name"]: trigger["metadata"]["query"]
        for trigger in rendered_variants["cpu+keda"].one("ScaledObject")["spec"]["triggers"]
    }
    expected_totals = {
        "greenserve-requests-in-flight": sum(IN_FLIGHT.values()),
        "greenserve-queue-depth": sum(QUEUED.values()),
    }
    assert set(triggers) == set(expected_totals)
    checks = [
        {
            "expr": f"round({query}, 0.0001)",
            "eval_time": "9m",
            "exp_samples": [{"labels": "{}", "value": expected_totals[name]}],
        }
        for name, query in triggers.items()
    ]
    per_pod = {"greenserve_requests_in_flight": IN_FLIGHT, "greenserve_queue_depth_avg1m": QUEUED}
    rules = load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    assert {rule["name"]["as"] for rule in rules} == set(per_pod)
    for rule in rules:
        expected = per_pod[rule["name"]["as"]]
        query = adapter_query(rule, "greenserve", sorted(expected))
        checks.append(
            {
                "expr": f"round({query}, 0.0001)",
                "eval_time": "9m",
                "exp_samples": [
                    {"labels": f'{{pod="{pod}"}}', "value": value} for pod, value in expected.items()
                ],
            }
        )
    unit = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": INPUT_SERIES, "promql_expr_test": checks}],
    }
    path = tmp_path / "autoscaling_test.yml"
    path.write_text(json.dumps(unit, indent=1))
    result = run_tool(promtool, "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
