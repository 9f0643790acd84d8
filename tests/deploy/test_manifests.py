"""The manifests agree with the server they deploy, and with themselves.

The probes, ports and settings are compared with what greenserve really does: the settings class reads
the ConfigMap as the pod's environment, and the app (in-process, with those settings) answers the probes'
paths and exports every metric the autoscalers and the ServiceMonitor name. The numbers that must fit
together (the grace period and the drain, the selectors and the labels, the autoscalers' queries and the
Service) are checked on each rendered variant.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from tests.conftest import REPO, gray_png, running_app
from tests.deploy.conftest import K8S, Rendered, load_yaml

# What one batch may still compute when the drain's deadline comes (the README's "one batch"), in the grace
# period's sum. The default model's batches take milliseconds; a large model's on a CPU can take seconds.
BATCH_ALLOWANCE_S = 5
ADMIN_SECRET = "greenserve-admin"
ADMIN_TOKEN_FOR_TESTS = "a-token-for-the-tests-only"
IMAGE_USER = re.compile(r"^USER (\d+):(\d+)$", re.MULTILINE)
ADAPTER_VALUES = K8S / "components" / "hpa" / "prometheus-adapter-values.yaml"


# --- the pod as the server sees it -------------------------------------------------------------------------


def named_port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def test_settings_are_greenserve_settings(variant: Rendered) -> None:
    """Every ConfigMap key is GREENSERVE_<a field of service/config.py>, and none is set twice."""
    fields = set(Settings.model_fields)
    for key in variant.settings_env:
        assert key.startswith("GREENSERVE_"), key
        assert key.removeprefix("GREENSERVE_").lower() in fields, (
            f"{key}: no such setting in service/config.py"
        )
    explicit = {env["name"] for env in variant.container["env"]}
    assert explicit.isdisjoint(variant.settings_env), "set in both the ConfigMap and the Deployment's env"


def test_the_server_accepts_the_pods_settings(variant: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings class reads the ConfigMap and the Deployment's env as the pod's environment."""
    for key in [key for key in os.environ if key.startswith("GREENSERVE_")]:
        monkeypatch.delenv(key)
    for key, value in pod_environment(variant).items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"
    assert settings.port == named_port(variant.container, "http")
    assert settings.admin_token is not None
    cpu_limit = int(variant.container["resources"]["limits"]["cpu"])
    assert settings.torch_threads == cpu_limit
    assert settings.decode_workers == cpu_limit
    assert settings.device == ("cuda" if variant.overlay == "gpu" else "cpu")


def pod_environment(variant: Rendered) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env (which wins), resolved."""
    environment = dict(variant.settings_env)
    limits = variant.container["resources"]["limits"]
    for env in variant.container["env"]:
        if "value" in env:
            environment[env["name"]] = env["value"]
            continue
        source = env["valueFrom"]
        if "secretKeyRef" in source:
            assert source["secretKeyRef"] == {"name": ADMIN_SECRET, "key": "token"}, env
            environment[env["name"]] = ADMIN_TOKEN_FOR_TESTS
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            assert ref["containerName"] == variant.container["name"], env
            assert ref["divisor"] == "1" and ref["resource"] == "limits.cpu", env
            environment[env["name"]] = str(int(limits["cpu"]))
        else:
            pytest.fail(f"{env['name']}: a source this test does not resolve: {source}")
    return environment


def test_admin_token_comes_from_a_secret_and_nowhere_else(variant: Rendered) -> None:
    (env,) = [env for env in variant.container["env"] if env["name"] == "GREENSERVE_ADMIN_TOKEN"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": ADMIN_SECRET, "key": "token"}
    assert "optional" not in env["valueFrom"]["secretKeyRef"], "the pod must not start without its token"
    assert not variant.of_kind("Secret"), "no Secret, and so no token, in the manifests"


def test_threads_follow_the_cpu_limit(variant: Rendered) -> None:
    for name in ("GREENSERVE_TORCH_THREADS", "GREENSERVE_DECODE_WORKERS", "OMP_NUM_THREADS"):
        (env,) = [env for env in variant.container["env"] if env["name"] == name]
        assert env["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu", name


def test_resources_are_guaranteed(variant: Rendered) -> None:
    resources = variant.container["resources"]
    assert resources["requests"] == resources["limits"], "requests = limits: Guaranteed QoS"
    assert set(resources["limits"]) >= {"cpu", "memory"}
    assert float(resources["limits"]["cpu"]).is_integer(), "whole cores: the threads are the limit"


def test_runs_as_the_images_user_read_only(variant: Rendered) -> None:
    pod = variant.pod_spec["securityContext"]
    container = variant.container["securityContext"]
    dockerfile = "Dockerfile.cuda" if variant.overlay == "gpu" else "Dockerfile"
    users = IMAGE_USER.findall((REPO / "docker" / dockerfile).read_text())
    assert users, f"docker/{dockerfile} has no numeric USER"
    uid, gid = users[-1]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid)), (
        f"the runtime user of docker/{dockerfile}"
    )
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    mounts = {mount["mountPath"] for mount in variant.container["volumeMounts"]}
    assert "/tmp" in mounts, "a writable /tmp on a read-only root"


def test_image_per_overlay(variant: Rendered) -> None:
    """The tags docs/deploy.md builds: greenserve:cpu from docker/Dockerfile, greenserve:cuda from .cuda."""
    assert variant.container["image"] == {"cpu": "greenserve:cpu", "gpu": "greenserve:cuda"}[variant.overlay]
    assert variant.container["command"] == ["greenserve", "serve"]


def test_gpu_overlay_asks_for_one_gpu_on_gpu_nodes(variant: Rendered) -> None:
    limits = variant.container["resources"]["limits"]
    pod = variant.pod_spec
    if variant.overlay == "cpu":
        assert "nvidia.com/gpu" not in limits
        assert "nodeSelector" not in pod and "tolerations" not in pod
        return
    assert limits["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert variant.settings_env["GREENSERVE_DEVICE"] == "cuda"


def test_probes_use_the_servers_paths_and_port(variant: Rendered) -> None:
    container = variant.container
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "http"), probe
    assert named_port(container, "http") == int(variant.settings_env["GREENSERVE_PORT"])
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, (
        "5 minutes at least to load and warm"
    )


def test_no_accepted_request_is_lost_on_a_rolling_update(variant: Rendered) -> None:
    """Never fewer ready pods than wanted; traffic stops before SIGTERM; the drain ends before SIGKILL."""
    deployment = variant.deployment["spec"]
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in deployment, "the autoscaler owns the count"
    pre_stop = variant.container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5, "longer than the endpoints' propagation"
    drain = float(variant.settings_env["GREENSERVE_DRAIN_TIMEOUT_S"])
    grace_idle = float(variant.settings_env["GREENSERVE_DRAIN_IDLE_GRACE_S"])
    needed = pre_stop + max(drain, grace_idle) + BATCH_ALLOWANCE_S + 1
    assert variant.pod_spec["terminationGracePeriodSeconds"] >= needed


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_selectors_find_the_pods(variant: Rendered) -> None:
    pod_labels = variant.deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(variant.deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = variant.one("Service")
    assert selects(service["spec"]["selector"], pod_labels)
    pdb = variant.one("PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["maxUnavailable"] == 1
    monitor = variant.one("ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http" and port["name"] == "http"
    assert port["port"] == named_port(variant.container, "http")


def test_prometheus_scrapes_metrics_as_compose_does(variant: Rendered) -> None:
    """The job is named after the Service, which is the job the rules and dashboard use; 5 s like compose."""
    service = variant.one("Service")
    (endpoint,) = variant.one("ServiceMonitor")["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "5s")
    prometheus_yml = load_yaml(REPO / "docker" / "prometheus" / "prometheus.yml")
    (job,) = prometheus_yml["scrape_configs"]
    assert service["metadata"]["name"] == job["job_name"]
    assert endpoint["interval"] == prometheus_yml["global"]["scrape_interval"]


# --- the autoscalers ---------------------------------------------------------------------------------------

QUERY_SELECTOR = re.compile(r'\{namespace="(?P<namespace>[^"]+)", job="(?P<job>[^"]+)"\}')


def autoscaler_target(variant: Rendered) -> dict[str, Any]:
    kind = "ScaledObject" if variant.autoscaler == "keda" else "HorizontalPodAutoscaler"
    target: dict[str, Any] = variant.one(kind)["spec"]["scaleTargetRef"]
    return target


def test_autoscaler_scales_the_deployment(variant: Rendered) -> None:
    target = autoscaler_target(variant)
    deployment = variant.deployment
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )


def test_autoscaler_keeps_two_replicas_at_least(variant: Rendered) -> None:
    if variant.autoscaler == "keda":
        spec = variant.one("ScaledObject")["spec"]
        low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
    else:
        spec = variant.one("HorizontalPodAutoscaler")["spec"]
        low, high = spec["minReplicas"], spec["maxReplicas"]
    assert 2 <= low < high


def test_keda_queries_select_this_deployments_pods(rendered_variants: dict[str, Rendered]) -> None:
    """The namespace and job in each query are the rendered namespace and Service (job = Service name)."""
    for name in ("cpu+keda", "gpu+keda"):
        variant = rendered_variants[name]
        service = variant.one("Service")["metadata"]
        triggers = variant.one("ScaledObject")["spec"]["triggers"]
        assert [t["type"] for t in triggers] == ["prometheus", "prometheus"]
        for trigger in triggers:
            selectors = QUERY_SELECTOR.findall(trigger["metadata"]["query"])
            assert selectors == [(service["namespace"], service["name"])], trigger["name"]
            assert trigger["metricType"] == "AverageValue"
            assert float(trigger["metadata"]["threshold"]) > 0


# The Prometheus scaler's metadata keys (KEDA's docs, Prometheus scaler): KEDA ignores an unknown key, so
# a misspelt one would silently fall back to a default.
KEDA_PROMETHEUS_KEYS = {
    "serverAddress",
    "query",
    "threshold",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "queryParameters",
    "unsafeSsl",
    "timeout",
}


def test_keda_trigger_metadata_keys_are_the_scalers(rendered_variants: dict[str, Rendered]) -> None:
    for trigger in rendered_variants["cpu+keda"].one("ScaledObject")["spec"]["triggers"]:
        metadata = trigger["metadata"]
        assert set(metadata) <= KEDA_PROMETHEUS_KEYS, set(metadata) - KEDA_PROMETHEUS_KEYS
        assert {"serverAddress", "query", "threshold"} <= set(metadata)
        assert re.fullmatch(r"https?://[a-z0-9.-]+(:\d+)?", metadata["serverAddress"])


def adapter_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    return rules


def test_hpa_metrics_are_the_adapters_and_kedas(rendered_variants: dict[str, Rendered]) -> None:
    """The HPA asks for the metrics the adapter's rules name, with KEDA's targets per replica."""
    hpa = rendered_variants["cpu+hpa"].one("HorizontalPodAutoscaler")["spec"]
    served = {rule["name"]["as"] for rule in adapter_rules()}
    asked = {metric["pods"]["metric"]["name"]: metric["pods"]["target"] for metric in hpa["metrics"]}
    assert set(asked) == served
    keda = rendered_variants["cpu+keda"].one("ScaledObject")["spec"]
    keda_thresholds = sorted(float(t["metadata"]["threshold"]) for t in keda["triggers"])
    assert sorted(float(target["averageValue"]) for target in asked.values()) == keda_thresholds
    assert all(target["type"] == "AverageValue" for target in asked.values())
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (keda["minReplicaCount"], keda["maxReplicaCount"])
    assert hpa["behavior"] == keda["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]


def test_adapter_rules_name_pod_metrics() -> None:
    for rule in adapter_rules():
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        series = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"])
        assert series, rule["seriesQuery"]
        assert re.fullmatch(rule["name"]["matches"], series[1]), rule["name"]
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"], placeholder


# --- the server itself -------------------------------------------------------------------------------------

METRIC_NAME = re.compile(r"\bgreenserve_[a-z_]+")


def manifest_metric_names(rendered_variants: dict[str, Rendered]) -> set[str]:
    """Every greenserve metric the autoscalers read (KEDA's queries, the adapter's rules)."""
    texts = [
        t["metadata"]["query"] for t in rendered_variants["cpu+keda"].one("ScaledObject")["spec"]["triggers"]
    ]
    texts += [rule["seriesQuery"] for rule in adapter_rules()]
    names = {name for text in texts for name in METRIC_NAME.findall(text)}
    assert names
    return names


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, Any]]:
    """The app with the base's settings (and the estimate's energy): its probes' answers and its /metrics."""

    async def run() -> dict[str, Any]:
        configured: dict[str, Any] = {
            key.removeprefix("GREENSERVE_").lower(): value
            for key, value in load_env_file(K8S / "base" / "greenserve.env").items()
        }
        # The estimate, whose device label is per process (the one the ServiceMonitor rewrites).
        configured.update(admin_token=ADMIN_TOKEN_FOR_TESTS, energy_source="estimate", access_log=False)
        settings = Settings(**configured)
        async with running_app(settings) as (_, client):
            answers = {path: await client.get(path) for path in ("/healthz", "/readyz")}
            classified = await client.post(
                "/classify", content=gray_png(7), headers={"content-type": "image/png"}
            )
            assert classified.status_code == 200, classified.text
            metrics = await client.get("/metrics")
        return {"answers": answers, "metrics": metrics}

    yield asyncio.run(run())


def load_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_the_server_answers_the_probes(served: dict[str, Any]) -> None:
    answers: dict[str, httpx.Response] = served["answers"]
    assert answers["/healthz"].status_code == 200 and answers["/healthz"].json() == {"status": "ok"}
    assert answers["/readyz"].status_code == 200 and answers["/readyz"].json() == {"status": "ready"}


def test_the_server_exports_what_the_manifests_read(
    served: dict[str, Any], rendered_variants: dict[str, Rendered]
) -> None:
    """Each metric of the autoscalers' queries, and the labels the ServiceMonitor's relabelings read."""
    metrics: httpx.Response = served["metrics"]
    assert metrics.status_code == 200
    samples = [sample for family in text_string_to_metric_families(metrics.text) for sample in family.samples]
    exported = {sample.name for sample in samples}
    assert manifest_metric_names(rendered_variants) <= exported, (
        manifest_metric_names(rendered_variants) - exported
    )
    monitor = rendered_variants["cpu+keda"].one("ServiceMonitor")
    (relabel,) = monitor["spec"]["endpoints"][0]["metricRelabelings"]
    metric_labels = [label for label in relabel["sourceLabels"] if label != "pod"]  # pod: a target label
    devices = [s.labels for s in samples if s.name == "greenserve_device_energy_joules_total"]
    assert devices and all(set(metric_labels) <= set(labels) for labels in devices), devices
    # The relabeling's regex matches the estimate's real device label (as Prometheus matches: anchored).
    for labels in devices:
        joined = relabel["separator"].join([labels["source"], labels["device"], "greenserve-7d4b9-x2x9q"])
        assert re.fullmatch(relabel["regex"], joined), joined
