"""The zoo's result table, ``zoo_measurements.csv``: its file names, columns and statuses, and its reader.

The run appends one row per (model, batch size) cell (:mod:`studies.zoo.run`); the report reads the
rows back (:func:`read_zoo_table`) and computes everything from them alone.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from studies.zoo.errors import ZooError

MEASUREMENTS_CSV = "zoo_measurements.csv"
#: The settings that shape every row (the resume check).
SETTINGS_JSON = "zoo_settings.json"

#: Every row says so: the networks are measured with randomly initialised weights.
WEIGHTS = "random"

STATUS_MEASURED = "measured"
STATUS_OVER_BUDGET = "over_budget"
STATUS_OUT_OF_MEMORY = "out_of_memory"
STATUS_FAILED = "failed"
STATUSES = (STATUS_MEASURED, STATUS_OVER_BUDGET, STATUS_OUT_OF_MEMORY, STATUS_FAILED)
#: Cells a rerun does not measure again (an over-budget cell is decided again: the budget may differ).
DONE_STATUSES = frozenset({STATUS_MEASURED, STATUS_OUT_OF_MEMORY, STATUS_FAILED})

#: Columns of ``zoo_measurements.csv``: one row per model × batch size, skipped cells included.
ZOO_COLUMNS: tuple[str, ...] = (
    "model",
    "year",
    "acc1_pct",
    "gflops",
    "params",
    "acc_resolution",
    "acc_weights",
    "resolution",
    "device",
    "threads",
    "batch_size",
    "status",
    "reason",
    "batches",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_std_ms",
    "energy_j_per_batch",
    "energy_j_per_image",
    "energy_net_j_per_image",
    "idle_power_w",
    "images_per_s",
    "energy_source",
    "weights",
    "seconds",
)
_TEXT_COLUMNS = ("model", "acc_weights", "device", "status", "reason", "energy_source", "weights")
_INT_COLUMNS = ("year", "params", "acc_resolution", "resolution", "threads", "batch_size")
_REQUIRED_FLOATS = ("acc1_pct", "gflops")
#: The rest: numbers that only a measured cell has (``batches`` is an integer, the others floats).
_MEASURED_FLOATS = tuple(
    c for c in ZOO_COLUMNS if c not in (*_TEXT_COLUMNS, *_INT_COLUMNS, *_REQUIRED_FLOATS, "batches")
)


def _parse(raw: str | None, column: str, line: int, kind: type, *, optional: bool) -> Any:
    text = (raw or "").strip()
    if not text:
        if optional:
            return None
        raise ZooError(f"line {line}: column {column} is empty")
    try:
        value = kind(text)
    except ValueError:
        raise ZooError(f"line {line}: column {column} is not a number: {text!r}") from None
    return value


def read_zoo_table(path: Path, *, text: str | None = None) -> list[dict[str, Any]]:
    """The rows of a zoo table, typed; one per (model, batch size), the last one winning.

    ``text`` is the table's content when the caller has read it already. A last line without its
    newline (a study killed mid-write) is dropped. Raises ZooError, naming the file and line,
    for a table without the zoo's columns or with a malformed value.
    """
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ZooError(f"cannot read {path}: {exc.strerror or exc}") from None
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ZOO_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise ZooError(f"{path} is not a zoo table (missing columns: {', '.join(missing)})")
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        for line, raw in enumerate(reader, start=2):
            row: dict[str, Any] = {c: (raw.get(c) or "").strip() for c in ZOO_COLUMNS}
            if not row["model"]:
                raise ZooError(f"line {line}: no model")
            if row["status"] not in STATUSES:
                raise ZooError(f"line {line}: unknown status {row['status']!r}")
            measured = row["status"] == STATUS_MEASURED
            for c in _INT_COLUMNS:
                row[c] = _parse(raw[c], c, line, int, optional=False)
            row["batches"] = _parse(raw["batches"], "batches", line, int, optional=not measured)
            for c in _REQUIRED_FLOATS:
                row[c] = _parse(raw[c], c, line, float, optional=False)
            for c in _MEASURED_FLOATS:
                row[c] = _parse(raw[c], c, line, float, optional=not measured)
            rows[(row["model"], row["batch_size"])] = row
    except ZooError as exc:
        raise ZooError(f"{path}, {exc}") from None
    return list(rows.values())
