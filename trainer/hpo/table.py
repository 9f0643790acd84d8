"""The HPO study's trials table, ``hpo_trials.csv``: its file names and columns, reading it back,
and how its cells are read (every reader here accepts numbers or CSV strings)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from studies.kit.files import write_csv_atomic
from trainer.errors import TrainerError

TRIALS_CSV = "hpo_trials.csv"
SETTINGS_JSON = "hpo_settings.json"

#: Columns of ``hpo_trials.csv`` before and after the tuned parameters (which depend on ``space``).
TRIAL_KEY_COLUMNS: tuple[str, ...] = ("strategy", "repeat", "round", "trial", "study")
TRIAL_RESULT_COLUMNS: tuple[str, ...] = (
    "accuracy",
    "best_so_far",
    "target_accuracy",
    "energy_j",
    "energy_net_j",
    "energy_source",
    "seconds",
    "epochs_run",
    "pruned",
    "state",
    "sampler_energy_j",
    "sampler_seconds",
    "energy_idle_included",
)
#: Columns :func:`summarize_trials` needs; the rest are optional.
REQUIRED_COLUMNS: tuple[str, ...] = ("strategy", "repeat", "round", "accuracy", "energy_j", "energy_source")


def to_float(value: Any) -> float:
    """A cell as a float; NaN for an empty one."""
    if value is None or value == "":
        return math.nan
    return float(value)


def format_flag(value: bool | None) -> str:
    """``true``/``false``, or empty when unknown."""
    return "" if value is None else str(value).lower()


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def is_pruned(row: Mapping[str, Any]) -> bool:
    """Whether a trial was pruned (its ``pruned`` cell, else its Optuna ``state``)."""
    if "pruned" in row and row["pruned"] not in (None, ""):
        return _bool(row["pruned"])
    return str(row.get("state", "COMPLETE")).upper() == "PRUNED"


def read_trials_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a trials table, as strings (every reader here accepts those)."""
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"no trials table at {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TrainerError(f"{path} is not an HPO trials table: it lacks {', '.join(missing)}")
        return list(reader)


def write_table(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as CSV atomically, NaN as an empty cell (as a missing value reads back)."""
    blank = [
        {c: None if isinstance(v, float) and math.isnan(v) else v for c, v in row.items()} for row in rows
    ]
    return write_csv_atomic(path, columns, blank)
