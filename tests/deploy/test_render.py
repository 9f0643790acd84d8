"""deploy/k8s renders, and every object it makes is valid for Kubernetes and for its CRD, strictly.

Each overlay (cpu, gpu) with each autoscaling component (keda, the default; hpa, what docs/kubernetes.md tells
a cluster without KEDA to switch to) is rendered by kustomize. The built-in kinds are validated against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: an unknown field is an error, as with `kubectl apply
--validate=strict`), at the oldest Kubernetes the manifests support and the newest the package knows. The
custom resources are validated against their CRDs' schemas (deploy/k8s/crd-schemas), closed the same way."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.conftest import CRD_SCHEMA_FILES, CRD_SCHEMAS, Rendered, crd_validator

# 1.30: the oldest release with the preStop `sleep` action on by default (beta in 1.30, GA since); the newest
# is the latest kubernetes-validate has schemas for.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())

COMMON_KINDS = [
    "ConfigMap",
    "Deployment",
    "PodDisruptionBudget",
    "PrometheusRule",
    "Service",
    "ServiceMonitor",
]
EXPECTED_KINDS = {
    "keda": sorted([*COMMON_KINDS, "ScaledObject"]),
    "hpa": sorted([*COMMON_KINDS, "HorizontalPodAutoscaler"]),
}


def is_custom(obj: dict[str, Any]) -> bool:
    return (obj["apiVersion"], obj["kind"]) in CRD_SCHEMA_FILES


def test_each_variant_makes_the_expected_objects(variant: Rendered) -> None:
    assert sorted(obj["kind"] for obj in variant.objects) == EXPECTED_KINDS[variant.autoscaler]
    for obj in variant.objects:
        assert obj["metadata"]["namespace"] == "greenserve", obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "greenserve", obj["kind"]


def test_latest_kubernetes_is_current() -> None:
    """The newest schemas are of a Kubernetes released in the last year or so, not an old one."""
    major, minor = (int(part) for part in KUBERNETES_VERSIONS[-1].split(".")[:2])
    assert (major, minor) >= (1, 35), KUBERNETES_VERSIONS


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_objects_are_valid_kubernetes(variant: Rendered, version: str) -> None:
    builtin = [obj for obj in variant.objects if not is_custom(obj)]
    assert builtin
    for obj in builtin:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{variant.name}: {obj['kind']} {path}: {exc.message} (Kubernetes {version})")


def test_custom_resources_are_valid_for_their_crds(variant: Rendered) -> None:
    custom = [obj for obj in variant.objects if is_custom(obj)]
    assert len(custom) == (3 if variant.autoscaler == "keda" else 2)
    for obj in custom:
        try:
            crd_validator(obj["apiVersion"], obj["kind"])(obj)
        except jsonschema.ValidationError as exc:
            path = ".".join(str(part) for part in exc.absolute_path)
            pytest.fail(f"{variant.name}: {obj['kind']} {path}: {exc.message}")


def test_every_crd_schema_is_used() -> None:
    assert sorted(path.name for path in CRD_SCHEMAS.glob("*.yaml")) == sorted(CRD_SCHEMA_FILES.values())


# The validators must be able to fail: a misspelt field, a wrong type, a missing required field.
def _misspelt_probe(obj: dict[str, Any]) -> None:
    container = obj["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")


def _string_port(obj: dict[str, Any]) -> None:
    obj["spec"]["ports"][0]["port"] = "8000"


def _no_pdb_selector_type(obj: dict[str, Any]) -> None:
    obj["spec"]["maxUnavailable"] = [1]


@pytest.mark.parametrize(
    ("kind", "break_it"),
    [
        ("Deployment", _misspelt_probe),
        ("Service", _string_port),
        ("PodDisruptionBudget", _no_pdb_selector_type),
    ],
)
def test_kubernetes_validation_catches_mistakes(
    rendered_variants: dict[str, Rendered], kind: str, break_it: Any
) -> None:
    obj = copy.deepcopy(rendered_variants["cpu+keda"].one(kind))
    kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)
    break_it(obj)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)


def _misspelt_interval(obj: dict[str, Any]) -> None:
    obj["spec"]["endpoints"][0]["intervall"] = obj["spec"]["endpoints"][0].pop("interval")


def _bad_duration(obj: dict[str, Any]) -> None:
    obj["spec"]["groups"][0]["rules"][0]["for"] = "1 minute"


def _no_expr(obj: dict[str, Any]) -> None:
    del obj["spec"]["groups"][0]["rules"][0]["expr"]


def _numeric_threshold(obj: dict[str, Any]) -> None:
    obj["spec"]["triggers"][0]["metadata"]["threshold"] = 24


def _misspelt_min_replicas(obj: dict[str, Any]) -> None:
    obj["spec"]["minReplicas"] = obj["spec"].pop("minReplicaCount")


@pytest.mark.parametrize(
    ("kind", "break_it"),
    [
        ("ServiceMonitor", _misspelt_interval),
        ("PrometheusRule", _bad_duration),
        ("PrometheusRule", _no_expr),
        ("ScaledObject", _numeric_threshold),
        ("ScaledObject", _misspelt_min_replicas),
    ],
)
def test_crd_validation_catches_mistakes(
    rendered_variants: dict[str, Rendered], kind: str, break_it: Any
) -> None:
    obj = copy.deepcopy(rendered_variants["cpu+keda"].one(kind))
    validate = crd_validator(obj["apiVersion"], obj["kind"])
    validate(obj)
    break_it(obj)
    with pytest.raises(jsonschema.ValidationError):
        validate(obj)
