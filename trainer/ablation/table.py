"""The ablation's result table, ``ablation_runs.csv``: its columns, and reading it back typed.

The run writes it (one row per finished run, appended) and the report reads it; nothing else is
needed to redraw a study.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

from studies.kit.flags import parse_bool
from trainer.errors import TrainerError

RUNS_CSV = "ablation_runs.csv"
SETTINGS_JSON = "ablation_settings.json"

#: Columns of ``ablation_runs.csv``, in order. One row is one training run of one design.
ABLATION_COLUMNS: tuple[str, ...] = (
    "dataset",
    "model",
    "design_id",
    "conv_layers",
    "linear_layers",
    "activation",
    "repeat",
    "run_order",
    "seed",
    "epochs",
    "params",
    "accuracy",
    "energy_j",
    "energy_net_j",
    "energy_source",
    "seconds",
)

_INTS = ("conv_layers", "linear_layers", "repeat", "run_order", "seed", "epochs", "params")
_FLOATS = ("accuracy", "energy_j", "energy_net_j", "seconds")


def format_bool(value: bool) -> str:
    """How the ablation table writes a boolean level."""
    return "true" if value else "false"


def read_ablation_runs(runs_csv: Path) -> list[dict[str, Any]]:
    """Parse ``ablation_runs.csv`` into typed rows; a bad file is a TrainerError naming the line.

    A final line without its newline (a study killed mid-write) is ignored.
    """
    try:
        text = runs_csv.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrainerError(f"no ablation table at {runs_csv}") from None
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ABLATION_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise TrainerError(f"{runs_csv} is not an ablation table: missing columns {', '.join(missing)}")
    rows: list[dict[str, Any]] = []
    for line, raw in enumerate(reader, start=2):
        try:
            row: dict[str, Any] = {c: raw[c] for c in ("dataset", "model", "design_id", "energy_source")}
            row.update({c: int(raw[c]) for c in _INTS})
            row.update({c: float(raw[c]) for c in _FLOATS})
            row["activation"] = parse_bool(raw["activation"])
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise TrainerError(f"{runs_csv}, line {line}: {exc}") from None
        rows.append(row)
    return rows
