"""studies.kit.commands: a lab command's usage and user errors are one line and exit status 2."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from studies.kit.commands import OneLineParser, run_handler
from studies.kit.errors import LabError


def test_a_user_error_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    def fails(args: argparse.Namespace) -> int:
        raise LabError("bad settings: x must be > 0")

    assert run_handler("greenserve demo", fails, argparse.Namespace()) == 2
    assert capsys.readouterr().err == "greenserve demo: bad settings: x must be > 0\n"
    assert run_handler("greenserve demo", lambda args: 3, argparse.Namespace()) == 3


def test_a_usage_error_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    parser = OneLineParser(prog="greenserve demo")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--n", "one"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "greenserve demo: error: argument --n: invalid int value: 'one'\n"


def test_a_reader_that_leaves_the_pipe_is_not_an_error() -> None:
    code = (
        "import argparse, sys\n"
        "from studies.kit.commands import run_handler\n"
        "def lots(args):\n"
        "    for i in range(200000):\n"
        "        print(i)\n"
        "    return 0\n"
        "sys.exit(run_handler('demo', lots, argparse.Namespace()))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader leaves, as `| head` does
    assert proc.wait(timeout=60) == 0
    with proc.stderr:
        assert proc.stderr.read() == b""
