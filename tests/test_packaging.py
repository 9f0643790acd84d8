"""Packaging: the base install is what serving needs, and requires-python says what is true.

The base install (``pip install .``, no extras) is what the server and its Docker images get; the lab's
dependencies come with the extras (``load``, ``train``, ``studies``, ``all``, ``dev``). Checked three ways:
the base's resolved distribution set (pip's own resolver, with the constraints file) holds none of the lab's
packages; a real server serves the default model with those packages made unimportable; and pyproject's
``requires-python`` admits the running interpreter and agrees with ruff's and mypy's target.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO, gray_png, server_process

# Distributions of the lab that serving must not need (their import names in IMPORT_NAMES).
LAB_DISTRIBUTIONS = ("optuna", "scipy", "matplotlib", "scikit-learn", "locust", "gevent")
# What the server is started without: the lab's distributions by import name, and rich (the studies' output).
# (Not tqdm: torch.hub imports it when it is there.)
HIDDEN_MODULES = ("optuna", "scipy", "matplotlib", "sklearn", "locust", "gevent", "rich")
# What serving does need: a resolution without these is no resolution of the server.
SERVING_DISTRIBUTIONS = ("torch", "torchvision", "fastapi", "uvicorn", "pillow", "prometheus-client")
MINIMUM_PYTHON = (3, 11)

# pip's words when it could not reach an index: the only failure that skips the resolution test.
PIP_OFFLINE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|Max retries exceeded|ConnectTimeoutError|"
    r"Could not fetch URL"
)

# Put first on PYTHONPATH, it makes HIDDEN_MODULES absent for that interpreter, as if not installed: every
# import finder answers None for them, so `import scipy` raises ModuleNotFoundError and
# importlib.util.find_spec("scipy") returns None (code that probes for an optional package sees it missing,
# rather than an error a real absence would not raise).
HIDING_SITECUSTOMIZE = """
import sys

HIDDEN = frozenset({hidden!r})


class _Hiding:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        find_spec = getattr(self._finder, "find_spec", None)
        return None if find_spec is None else find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self._finder, attribute)


sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
for _name in list(sys.modules):
    if _name.partition(".")[0] in HIDDEN:
        del sys.modules[_name]
"""

PROBE_HIDDEN = """
import importlib, importlib.util, json, sys
result = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        result[name] = "imported"
    except ModuleNotFoundError:
        result[name] = "missing" if importlib.util.find_spec(name) is None else "found by find_spec"
print(json.dumps(result))
"""


def pyproject() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
    return data


# ---------------------------------------------------------------- requires-python


def test_requires_python_admits_this_interpreter_and_matches_the_tools() -> None:
    data = pyproject()
    requires = SpecifierSet(data["project"]["requires-python"])
    running = ".".join(map(str, sys.version_info[:3]))
    assert requires.contains(running), f"requires-python {requires} excludes this interpreter, {running}"
    # The minimum is exactly 3.11: 3.11 is admitted, 3.10 is not (datetime.UTC; numpy 2.4 and scipy 1.17).
    minimum = ".".join(map(str, MINIMUM_PYTHON))
    assert requires.contains(f"{minimum}.0"), f"requires-python {requires} excludes {minimum}"
    below = f"{MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1] - 1}.99"
    assert not requires.contains(below), f"requires-python {requires} admits {below}"
    # ruff and mypy check the code for that minimum, so that a newer feature does not slip in.
    assert data["tool"]["ruff"]["target-version"] == "py{}{}".format(*MINIMUM_PYTHON)
    assert Version(data["tool"]["mypy"]["python_version"]) == Version(minimum)


# ---------------------------------------------------------------- the base install and the extras


def test_base_dependencies_name_no_lab_package_and_the_extras_bring_them() -> None:
    project = pyproject()["project"]
    base = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert not base & set(LAB_DISTRIBUTIONS), sorted(base & set(LAB_DISTRIBUTIONS))
    assert set(SERVING_DISTRIBUTIONS) <= base, sorted(set(SERVING_DISTRIBUTIONS) - base)

    extras: dict[str, list[str]] = project["optional-dependencies"]

    def closure(extra: str) -> set[str]:
        """The distributions an extra names, its own extras of greenserve followed."""
        names: set[str] = set()
        for text in extras[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
                for inner in requirement.extras:
                    names |= closure(inner)
            else:
                names.add(canonicalize_name(requirement.name))
        return names

    assert {"load", "train", "studies", "all", "dev"} <= set(extras)
    assert "locust" in closure("load")
    assert {"optuna", "scikit-learn", "scipy", "matplotlib"} <= closure("train")
    assert closure("load") | closure("train") <= closure("studies") <= closure("all") <= closure("dev")
    # (gevent comes with Locust.)
    assert set(LAB_DISTRIBUTIONS) - {"gevent"} <= closure("all")


@pytest.mark.timeout(600)
def test_base_install_resolves_to_no_lab_distribution(tmp_path: Path) -> None:
    # What `pip install -c constraints.txt .` would install into an empty environment, from pip's own
    # resolver (--dry-run --ignore-installed: nothing is installed, this environment does not count).
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"),
            *("--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "30"),
            *("--report", str(report_path), "-c", str(REPO / "constraints.txt"), str(REPO)),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0 and PIP_OFFLINE.search(output):
        pytest.skip(
            "pip cannot resolve the base install without its package index, which is unreachable here: "
            + output.strip().splitlines()[-1]
        )
    assert done.returncode == 0, output
    report = json.loads(report_path.read_text())
    resolved = {canonicalize_name(item["metadata"]["name"]) for item in report["install"]}
    assert set(SERVING_DISTRIBUTIONS) <= resolved, f"not the server's resolution: {sorted(resolved)}"
    lab = sorted(resolved & set(LAB_DISTRIBUTIONS))
    assert not lab, f"the base install pulls in the lab's {lab} (all {len(resolved)}: {sorted(resolved)})"


# ---------------------------------------------------------------- serving without the lab


@pytest.fixture
def without_the_lab(tmp_path: Path) -> dict[str, str]:
    """Environment variables under which HIDDEN_MODULES cannot be imported (checked before use)."""
    directory = tmp_path / "hide-lab"
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(HIDING_SITECUSTOMIZE.format(hidden=sorted(HIDDEN_MODULES)))
    env = {"PYTHONPATH": os.pathsep.join([str(directory), str(REPO)])}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE_HIDDEN, *HIDDEN_MODULES],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(probe.stdout) == dict.fromkeys(HIDDEN_MODULES, "missing"), probe.stdout
    return env


@pytest.mark.server
def test_server_serves_the_default_model_without_the_lab(
    tmp_path: Path, without_the_lab: dict[str, str]
) -> None:
    with server_process(tmp_path, env=without_the_lab) as server:
        response = httpx.post(
            f"{server.url}/classify",
            content=gray_png(0, size=28),
            headers={"content-type": "image/png"},
            timeout=30,
        )
        assert response.status_code == 200, f"{response.status_code} {response.text}\n{server.log()}"
        body = response.json()
        assert body["model"] == "digits_cnn"
        assert body["predictions"], body
        log = server.log()
    assert "ModuleNotFoundError" not in log, log


# ---------------------------------------------------------------- the Makefile's one-command set-up


def makefile_rule(target: str) -> tuple[list[str], list[str]]:
    """A Makefile rule's prerequisites and recipe lines (tabs and the `## help` comment removed)."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    prerequisites = lines[start].removeprefix(f"{target}:").split("##")[0].split()
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return prerequisites, recipe


def test_make_run_and_test_set_up_the_whole_environment() -> None:
    # A fresh clone: `make run` or `make test` alone creates the venv and installs the dev extra, which holds
    # every extra of the lab (test_base_dependencies_name_no_lab_package_and_the_extras_bring_them).
    for target in ("run", "test"):
        assert "$(STAMP)" in makefile_rule(target)[0], f"make {target} does not set up the environment"
    prerequisites, recipe = makefile_rule("$(STAMP)")
    assert {"pyproject.toml", "constraints.txt"} <= set(prerequisites), "a changed dependency reinstalls"
    install = [line for line in recipe if "-e '.[dev]'" in line]
    assert install and "-c constraints.txt" in install[0], recipe
    upgrade = [i for i, line in enumerate(recipe) if "install --quiet --upgrade pip" in line]
    assert upgrade and upgrade[0] < recipe.index(install[0]), "pip is upgraded before the install"
    assert recipe[-1] == "touch $(STAMP)"
