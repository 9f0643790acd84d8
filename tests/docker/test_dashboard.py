"""The Grafana dashboard's variables: no data source named by uid; every query filtered on job and instance.

The dashboard picks its Prometheus through a ``datasource`` variable, so it works in any Grafana it is
imported into, and every query filters on the ``job`` and ``instance`` variables, so one Grafana can show one
job or one replica among several. Two levels, as in test_prometheus.py: the JSON is read for what Grafana
will substitute (every selector of every query carries the matchers); then promtool evaluates every query,
with the recording rules, on two jobs of two replicas each, the variables set as Grafana sets them: All
fills every panel, a job or instance that is not there empties it, a chosen one keeps only its own.

The one exception is written down and tested: the job-wide recording rules (``job_…:``) keep no ``instance``
label (a device shared by replicas is counted once per job), so their selectors filter on the job only, and
their panels say that they follow the Job selection, not the Instance one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker.conftest import DASHBOARD, GRAFANA_DATASOURCES, RULES_DIR, load_yaml, run_tool

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB = 'job=~"$job"'
INSTANCE = 'instance=~"$instance"'
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
BATCHING_PANEL = "Batching settings in force"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def targets() -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target


def variables() -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard()["templating"]["list"]}


def recorded_labels() -> dict[str, set[str]]:
    """Each recording rule's name and the labels it keeps (its level, and `job`, which every rule keeps)."""
    return {
        rule["record"]: {"job", *rule["record"].split(":")[0].split("_")}
        for path in RULE_FILES
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def job_wide(name: str) -> bool:
    """A recorded series with no ``instance`` label: a figure of the whole job."""
    labels = recorded_labels()
    return name in labels and "instance" not in labels[name]


def _values_of(key: str, node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for k, value in node.items():
            if k == key:
                yield value
            yield from _values_of(key, value)
    elif isinstance(node, list):
        for value in node:
            yield from _values_of(key, value)


# A selector of a greenserve series, raw or recorded: its name (which no function, keyword or label name
# contains) and its matchers, if any.
_SELECTOR = re.compile(r"(?<![\w:])(?P<name>[a-zA-Z_:]*greenserve_[\w:]*)\s*(?P<matchers>\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each greenserve selector of ``expr``: its name and its matchers as (label, ``op"value"``)."""
    return [
        (match["name"], [(m[1], f'{m[2]}"{m[3]}"') for m in _MATCHER.finditer(match["matchers"] or "")])
        for match in _SELECTOR.finditer(expr)
    ]


def test_selectors_are_found() -> None:
    """The parser the next tests rely on, on the shapes the dashboard uses."""
    expr = (
        'sum by (le) (rate(greenserve_x_bucket{job=~"$job", instance=~"$instance"}[$__rate_interval]))'
        ' / on (job) job_source:greenserve_y:rate1m{param="a,b", job=~"$job"} or greenserve_z'
    )
    assert selectors(expr) == [
        ("greenserve_x_bucket", [("job", '=~"$job"'), ("instance", '=~"$instance"')]),
        ("job_source:greenserve_y:rate1m", [("param", '="a,b"'), ("job", '=~"$job"')]),
        ("greenserve_z", []),
    ]


# --- data source --------------------------------------------------------------------------------------------


def test_no_panel_or_target_names_a_fixed_datasource() -> None:
    """Every data-source reference (panels, targets, variables) is the ``datasource`` variable."""
    board = dashboard()
    refs = list(_values_of("datasource", board))
    assert refs, "no data-source reference at all"
    assert [ref for ref in refs if ref != DATASOURCE] == []
    for where, target in targets():
        assert target.get("datasource") == DATASOURCE, where
    for panel in board["panels"]:
        assert panel.get("datasource") == DATASOURCE, panel["title"]
    # Nor anywhere else (a link, an annotation): no uid in the file is the provisioned data source's.
    provisioned = load_yaml(GRAFANA_DATASOURCES)["datasources"][0]["uid"]
    assert provisioned not in set(_values_of("uid", board)), provisioned


def test_datasource_variable() -> None:
    """A data-source variable over the Prometheus data sources, starting on the default one."""
    variable = variables()["datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"
    assert not variable.get("multi") and not variable.get("includeAll")
    # No `current`: Grafana starts on the default Prometheus data source, and the provisioned one is it.
    assert not variable.get("current")
    assert load_yaml(GRAFANA_DATASOURCES)["datasources"][0]["isDefault"] is True


# --- job and instance ---------------------------------------------------------------------------------------

VARIABLE_QUERIES = {
    "job": re.compile(r"label_values\(greenserve_\w+, job\)"),
    # The instances of the chosen jobs only.
    "instance": re.compile(r'label_values\(greenserve_\w+\{job=~"\$job"\}, instance\)'),
}


@pytest.mark.parametrize("name", sorted(VARIABLE_QUERIES))
def test_job_and_instance_variables(name: str) -> None:
    """Query variables over a greenserve metric's labels, multi-valued, All meaning any value."""
    variable = variables()[name]
    assert variable["type"] == "query"
    assert variable["datasource"] == DATASOURCE
    assert VARIABLE_QUERIES[name].fullmatch(variable["query"]), variable["query"]
    assert variable.get("definition", variable["query"]) == variable["query"]
    assert variable["includeAll"] and variable["multi"]
    # Grafana's own All is the list of the values it last fetched, which misses a replica started since;
    # `.*` matches every one.
    assert variable["allValue"] == ".*"
    assert variable["current"]["value"] == ["$__all"]
    assert variable["refresh"] == 2  # on each time-range change: replicas come and go


def test_variables_are_declared_in_dependency_order() -> None:
    names = [variable["name"] for variable in dashboard()["templating"]["list"]]
    assert names.index("datasource") < names.index("job") < names.index("instance"), names


def test_every_query_filters_on_job_and_instance() -> None:
    """Every selector of every panel query, raw series and recorded ones alike, carries both matchers.

    Except the job-wide recorded series, which have no instance label: job only (``instance=~"$instance"``
    on them would empty the panel as soon as one instance is chosen).
    """
    for where, target in targets():
        found = selectors(target["expr"])
        assert found, f"{where}: no greenserve series in {target['expr']!r}"
        for name, matchers in found:
            labels = [label for label, _ in matchers]
            assert labels.count("job") == 1 and labels.count("instance") <= 1, f"{where}: {name} {matchers}"
            assert ("job", '=~"$job"') in matchers, f"{where}: {name} is not filtered on $job"
            if job_wide(name):
                assert "instance" not in labels, f"{where}: {name} has no instance label to filter on"
            else:
                assert ("instance", '=~"$instance"') in matchers, (
                    f"{where}: {name} is not filtered on $instance"
                )


def test_job_wide_panels_say_so() -> None:
    """A panel with a job-wide query says that it does not follow the Instance selection."""
    for panel in dashboard()["panels"]:
        if any(job_wide(name) for t in panel["targets"] for name, _ in selectors(t["expr"])):
            assert "not the Instance" in panel["description"], panel["title"]


def test_batching_panel_reads_max_wait_in_seconds() -> None:
    """The settings panel shows max_wait in seconds, the base unit, from the max_wait_seconds param."""
    (panel,) = [p for p in dashboard()["panels"] if p["title"] == BATCHING_PANEL]
    exprs = {target["refId"]: target["expr"] for target in panel["targets"]}
    wait = [ref for ref, expr in exprs.items() if 'param="max_wait_seconds"' in expr]
    assert len(wait) == 1, exprs
    (ref,) = wait
    # The other targets do not show max_wait_ms beside it, in another unit.
    for other, expr in exprs.items():
        if other != ref:
            assert "max_wait" not in expr, expr
    units = [
        prop["value"]
        for override in panel["fieldConfig"]["overrides"]
        if override["matcher"] == {"id": "byFrameRefID", "options": ref}
        for prop in override["properties"]
        if prop["id"] == "unit"
    ]
    assert units == ["s"], panel["fieldConfig"]


# --- evaluated by promtool ----------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
INTERVALS = {"__rate_interval": "1m", "__interval": "1m", "__range": "5m"}


def substitute(expr: str, job: str, instance: str) -> str:
    """``expr`` as Grafana sends it with these values of ``$job`` and ``$instance`` (regexes)."""
    values = {**INTERVALS, "job": job, "instance": instance}

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in values, f"dashboard variable ${name} has no test value: {expr!r}"
        return values[name]

    return _VARIABLE.sub(value, expr)


JOBS = ("greenserve", "other")
INSTANCES = ("host:8000", "host:8001")


def replica_series(job: str, instance: str, max_wait_seconds: bool = True) -> list[dict[str, str]]:
    """One replica's series: every metric the dashboard and its recording rules read, every 15 s."""
    series = {
        'greenserve_requests_total{status="200"}': "0+30x40",
        'greenserve_requests_total{status="500"}': "0+1x40",
        'greenserve_rejected_total{reason="queue_full"}': "0+1x40",
        "greenserve_queue_depth": "3x40",
        'greenserve_batching_config{param="max_batch_size"}': "8x40",
        'greenserve_batching_config{param="max_queue"}': "16x40",
        'greenserve_batching_config{param="max_wait_ms"}': "10x40",
        'greenserve_model_info{model="digits-cnn", device="cpu", weights="digits"}': "1x40",
        'greenserve_batch_energy_joules_total{source="rapl"}': "0+3x40",
        'greenserve_device_energy_joules_total{source="rapl", device="boot:package-0"}': "0+450x40",
        'greenserve_idle_energy_joules_total{source="rapl", device="boot:package-0"}': "0+447x40",
        'greenserve_power_watts{source="rapl", device="boot:package-0"}': "30x40",
        'greenserve_energy_read_errors_total{source="rapl"}': "0+1x40",
        "greenserve_batch_size_sum": "0+60x40",
        "greenserve_batch_size_count": "0+10x40",
        # The batching policy's state (an adaptive one: a static one exports no p99 or learned J/image).
        'greenserve_batching_target{param="batch_size"}': "6x40",
        'greenserve_batching_target{param="wait_seconds"}': "0.004x40",
        'greenserve_batching_p99_seconds{kind="projected"}': "0.04x40",
        'greenserve_batching_p99_seconds{kind="observed"}': "0.035x40",
        'greenserve_batching_energy_per_image_joules{batch_size="4"}': "0.02x40",
    }
    if max_wait_seconds:
        series['greenserve_batching_config{param="max_wait_seconds"}'] = "0.01x40"
    for stage in ("model", "decode", "serving"):
        series[f'greenserve_stage_energy_joules_total{{stage="{stage}", source="rapl"}}'] = "0+1x40"
    for histogram in ("request_duration_seconds", "queue_wait_seconds"):
        for le, values in (("0.01", "0+10x40"), ("0.1", "0+25x40"), ("+Inf", "0+30x40")):
            series[f'greenserve_{histogram}_bucket{{le="{le}"}}'] = values
    for le, values in (("1", "0+2x40"), ("8", "0+10x40"), ("+Inf", "0+10x40")):
        series[f'greenserve_batch_size_bucket{{le="{le}"}}'] = values
    where = f'job="{job}", instance="{instance}"'
    return [
        {
            "series": name.replace("{", "{" + where + ", ", 1) if "{" in name else f"{name}{{{where}}}",
            "values": v,
        }
        for name, v in series.items()
    ]


def all_replicas() -> list[dict[str, str]]:
    return [s for job in JOBS for instance in INSTANCES for s in replica_series(job, instance)]


def run_promql_checks(
    promtool: str, checks: list[dict[str, Any]], series: list[dict[str, str]], tmp_path: Path
) -> None:
    """promtool evaluates ``checks`` on ``series`` at 15 s steps, with the recording rules."""
    unit_test = {
        "rule_files": [str(path) for path in RULE_FILES],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": series, "promql_expr_test": checks}],
    }
    path = tmp_path / "dashboard_test.yml"
    path.write_text(json.dumps(unit_test, indent=1))  # JSON is YAML
    result = run_tool(promtool, "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


NOT_EMPTY = [{"labels": "{}", "value": 1}]


def test_variables_select_what_they_say(promtool: str, tmp_path: Path) -> None:
    """All fills every query; one replica chosen fills every one; a job or instance not there empties them.

    A selector left unfiltered would still answer for the missing job or instance, and fail here. Job-wide
    queries answer whatever the instance, as their panels say.
    """
    checks = []
    for _where, target in targets():
        expr = target["expr"]
        wide = all(job_wide(name) for name, _ in selectors(expr))
        for job, instance, expected in (
            (".*", ".*", NOT_EMPTY),
            ("greenserve", "host:8001", NOT_EMPTY),
            ("(greenserve|other)", "(host:8000|host:8001)", NOT_EMPTY),  # Grafana's multi-value form
            ("absent", ".*", []),
            (".*", "absent", NOT_EMPTY if wide else []),
        ):
            query = substitute(expr, job, instance)
            checks.append({"expr": f"count({query}) > bool 0", "eval_time": "5m", "exp_samples": expected})
    run_promql_checks(promtool, checks, all_replicas(), tmp_path)


def test_variables_narrow_to_the_chosen_replica(promtool: str, tmp_path: Path) -> None:
    """One instance of one job chosen: no result names another job or another instance.

    ``Q unless on (label) (vector(1) or <a series with the chosen value>)`` keeps the results that name
    another value; ``vector(1)`` stands for results aggregated past the label (whose value is ""). The test
    above shows that each query answers for the chosen replica, so an empty result here is not an empty query.
    """
    checks = []
    for _where, target in targets():
        query = substitute(target["expr"], "greenserve", "host:8001")
        for label, chosen in (("job", "greenserve"), ("instance", "host:8001")):
            others = (
                f'({query}) unless on ({label}) (vector(1) or greenserve_queue_depth{{{label}="{chosen}"}})'
            )
            checks.append({"expr": f"count({others})", "eval_time": "5m", "exp_samples": []})
    run_promql_checks(promtool, checks, all_replicas(), tmp_path)


def test_max_wait_in_seconds_whichever_the_server_exports(promtool: str, tmp_path: Path) -> None:
    """max_wait_seconds where exported; else max_wait_ms ÷ 1000 (an older server); one line per replica."""
    (panel,) = [p for p in dashboard()["panels"] if p["title"] == BATCHING_PANEL]
    (expr,) = [t["expr"] for t in panel["targets"] if "max_wait_seconds" in t["expr"]]
    older = replica_series("greenserve", "host:8000", max_wait_seconds=False)
    series = older + replica_series("greenserve", "host:8001")
    check = {
        "expr": substitute(expr, "greenserve", ".*"),
        "eval_time": "5m",
        "exp_samples": [
            {"labels": '{job="greenserve", instance="host:8000", param="max_wait_ms"}', "value": 0.01},
            {
                "labels": 'greenserve_batching_config{job="greenserve", instance="host:8001", '
                'param="max_wait_seconds"}',
                "value": 0.01,
            },
        ],
    }
    run_promql_checks(promtool, [check], series, tmp_path)
