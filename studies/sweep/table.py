"""``sweep.csv``: one row per configuration, its columns, read and rewritten atomically.

The sweep rewrites the whole table after each configuration (a failed row is replaced when it is
retried, and a table from before the amortised columns is rewritten with them), so it is one atomic
rewrite (:func:`studies.kit.files.write_csv_atomic`) rather than an append-only table.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loadgen.errors import GridError
from loadgen.figures import OPTIONAL_FIGURES, RunFigures
from studies.kit.files import write_csv_atomic

CSV_NAME = "sweep.csv"
CONFIG_COLUMNS = (
    "key",
    "model",
    "mode",
    "max_batch_size",
    "max_wait_ms",
    "max_queue",
    "timeout_ms",
    "weights",
    "device",
    "torch_threads",
)
RUN_COLUMNS = ("trace", "trace_sha256", "max_lag_ms", "late_requests", "wall_s", "status", "finished_at")
COLUMNS = (*CONFIG_COLUMNS, *RunFigures.field_names(), *RUN_COLUMNS)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The sweep's rows ([] when the file does not exist); a foreign CSV is a :class:`GridError`."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or ()) - set(OPTIONAL_FIGURES)
        if missing:
            raise GridError(
                f"{path} is not a sweep CSV of this version (missing {', '.join(sorted(missing))})"
            )
        # A table from before the amortised figure: its rows have none (empty cells when rewritten).
        return [{**dict.fromkeys(OPTIONAL_FIGURES, ""), **row} for row in reader]


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Rewrite the CSV atomically (never a half-written file); floats to 6 significant digits."""
    return write_csv_atomic(path, COLUMNS, [{k: _cell(v) for k, v in row.items()} for row in rows])


def number(text: str | None) -> float | None:
    """A cell as a number; None for an empty (or absent) one."""
    if text is None or text == "":
        return None
    return float(text)
