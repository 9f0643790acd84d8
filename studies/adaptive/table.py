"""``adaptive.csv``: one row per model × trace × policy, read and rewritten atomically after each run
(a failed row is replaced when it is retried), as the sweep's table is."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from studies.adaptive.settings import AdaptiveError
from studies.kit.files import write_csv_atomic

CSV_NAME = "adaptive.csv"
SETTINGS_NAME = "settings.json"
COLUMNS = (
    "key",
    "model",
    "trace",
    "policy",
    "kind",
    "batching",
    "max_batch_size",
    "max_wait_ms",
    "slo_p99_ms",
    "requests",
    "completed",
    "latency_p50_ms",
    "latency_p99_ms",
    "mean_batch_size",
    "j_per_request",
    "energy_source",
    "j_per_request_label",
    "amortised_j_per_request",
    "amortised_energy_source",
    "amortised_label",
    "rejected",
    "errors",
    "windows",
    "violation_windows",
    "step_violation_windows",
    "max_lag_ms",
    "late_requests",
    "sim_latency_p99_ms",
    "sim_j_per_request",
    "sim_mean_batch_size",
    "sim_note",
    "trace_file",
    "trace_sha256",
    "run_dir",
    "wall_s",
    "status",
    "finished_at",
)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The table's rows ([] when it does not exist); another CSV is an :class:`AdaptiveError`."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise AdaptiveError(f"{path} is not this study's table (missing {', '.join(sorted(missing))})")
        return list(reader)


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Rewrite the table atomically; floats to 6 significant digits."""
    return write_csv_atomic(path, COLUMNS, [{k: _cell(v) for k, v in row.items()} for row in rows])
