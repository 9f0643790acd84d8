"""A finished study's JSON result file, read back to print its report again without re-measuring
(``--report FILE``: the serving benchmark, the simulator check)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from studies.kit.errors import LabError


def add_report_flag(parser: argparse.ArgumentParser, *, what: str) -> None:
    """``--report FILE``: print the report of ``what`` (a finished run's result file) and measure nothing."""
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help=f"print the report of {what} again; measure nothing",
    )


def read_json_result(path: Path, *, keys: Iterable[str], what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a :class:`LabError` when it cannot be read, or lacks one of
    ``keys`` (then it is not ``what``)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LabError(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict) or any(key not in document for key in keys):
        raise LabError(f"{path} is not {what}")
    return document
