"""The README's first example runs as pasted on a fresh clone: its sample image is in the
repository, and its curl commands, run with the real ``curl`` against a real server, answer."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, server_process

README = REPO / "README.md"
SAMPLE = REPO / "docs" / "examples" / "digit.png"
README_URL = "http://127.0.0.1:8000"


def quick_start_commands() -> list[str]:
    """The curl lines of the README's first shell block that posts an image to the server."""
    blocks = re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)
    block = next(b for b in blocks if "curl -s -F file=@" in b and README_URL in b)
    return [line for line in block.splitlines() if line.startswith("curl ")]


def test_the_sample_image_is_small_and_reproducible() -> None:
    assert 0 < SAMPLE.stat().st_size < 1024
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("re-creating the sample needs scikit-learn (the train extra)")
    spec = importlib.util.spec_from_file_location("make_digit", SAMPLE.parent / "make_digit.py")
    assert spec is not None and spec.loader is not None
    make_digit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_digit)
    assert make_digit.digit_png() == SAMPLE.read_bytes()


@pytest.mark.server
def test_the_readme_curl_examples_answer_as_pasted(tmp_path: Path) -> None:
    commands = quick_start_commands()
    assert len(commands) == 3 and all("docs/examples/digit.png" in c for c in commands[:2]), commands
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    with server_process(tmp_path) as server:
        outputs = []
        for command in commands:
            # As pasted, from the clone's root; only the port is this server's.
            done = subprocess.run(
                command.replace(README_URL, server.url),
                shell=True,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, (command, done.stderr)
            outputs.append(done.stdout)
    multipart, raw = (json.loads(out) for out in outputs[:2])
    for answer in (multipart, raw):
        assert answer["model"] == "digits_cnn"
        assert answer["predictions"][0]["label"] == "7", answer  # the sample is a held-out 7
        assert answer["energy_j"] > 0 and answer["request_id"]
    assert len(multipart["predictions"]) == 5 and len(raw["predictions"]) == 3  # top_k=3
    assert 'greenserve_requests_total{protocol="classify",status="200"} 2.0' in outputs[2]
