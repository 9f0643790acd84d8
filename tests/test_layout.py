"""The layout's rules: the deployable server imports nothing of the lab, and the front door works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from greenserve import __version__, cli
from tests.conftest import REPO

LAB_PACKAGES = ("loadgen", "trainer", "studies")
# (Not tqdm: torch.hub imports it when it is there.)
LAB_DEPENDENCIES = ("optuna", "scipy", "matplotlib", "sklearn", "locust", "gevent", "rich")

# What `greenserve serve` imports before uvicorn runs: the front door, the server's command, its
# settings, the server and the app with its routes, built with the default settings.
SERVE_IMPORTS = """
import json, sys
from greenserve.cli import BY_NAME
from service.cli import build_parser, settings_from_args
import service.server
from service.app import create_app
args = build_parser().parse_args(["serve", "--port", "0"])
create_app(settings_from_args(args))
print(json.dumps(sorted(sys.modules)))
"""


def test_serve_imports_nothing_of_the_lab() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SERVE_IMPORTS], cwd=REPO, capture_output=True, text=True, check=True
    )
    modules = json.loads(done.stdout.splitlines()[-1])
    roots = {name.split(".", 1)[0] for name in modules}
    assert not roots & set(LAB_PACKAGES), sorted(m for m in modules if m.split(".")[0] in LAB_PACKAGES)
    assert not roots & set(LAB_DEPENDENCIES), sorted(roots & set(LAB_DEPENDENCIES))
    assert "service.api.routes" in modules  # (the probe did import the server)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"greenserve {__version__}"


def test_every_command_is_listed_and_reaches_its_package(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listing = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert command.name in listing
        with pytest.raises(SystemExit) as exit_:
            cli.main([command.name, "--help"])
        assert exit_.value.code == 0, command.name
        assert f"greenserve {command.name}" in capsys.readouterr().out, command.name


def test_no_command_or_an_unknown_one_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["nope"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        assert "usage: greenserve" in capsys.readouterr().err


def test_a_missing_extra_is_named() -> None:
    # A base install without Locust: the command says which extra brings it.
    script = (
        "import sys; sys.modules['locust'] = None\n"
        "from greenserve.cli import main; raise SystemExit(main(['loadtest', '--help']))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "greenserve loadtest: needs locust, which this installation lacks: pip install 'greenserve[load]'"
    )
