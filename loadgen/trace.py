"""Arrival traces: when each request starts, in seconds from the start of the run.

A trace is a file, one arrival per line, in time order:

* **JSON Lines** (``.jsonl``, ``.ndjson``): ``{"t": 0.0625}`` or ``{"t": 0.0625, "image_id": "cat.jpg"}``;
* **CSV** (``.csv``): a header ``t`` or ``t,image_id``, then one row per arrival.

``t`` is a finite number ≥ 0, never smaller than the previous line's (equal times are simultaneous
arrivals). ``image_id`` (optional) names the image to send: a file name of the image directory, or
a sample id (``digits-3``, ``photo-17``); without it, images are taken round-robin. Blank lines
are ignored. Anything else is a :class:`TraceError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadgen.errors import TraceError

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
CSV_SUFFIXES = frozenset({".csv"})


@dataclass(frozen=True)
class Trace:
    """Arrival times (seconds from start, non-decreasing) and optional image ids, one per arrival."""

    times: tuple[float, ...]
    image_ids: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.image_ids is not None and len(self.image_ids) != len(self.times):
            raise TraceError(f"{len(self.image_ids)} image ids for {len(self.times)} arrivals")
        _check_times(self.times, where="trace")

    def __len__(self) -> int:
        return len(self.times)

    @property
    def duration_s(self) -> float:
        """Time of the last arrival (0 for an empty trace)."""
        return self.times[-1] if self.times else 0.0

    @classmethod
    def from_times(cls, times: Iterable[float], image_ids: Sequence[str | None] | None = None) -> Trace:
        return cls(tuple(float(t) for t in times), None if image_ids is None else tuple(image_ids))


def _check_time(value: float, previous: float | None, where: str) -> None:
    if not math.isfinite(value):
        raise TraceError(f"{where}: time {value!r} is not a finite number")
    if value < 0:
        raise TraceError(f"{where}: time {value:g} is negative (times are seconds from the start)")
    if previous is not None and value < previous:
        raise TraceError(
            f"{where}: time {value:g} is before the previous arrival ({previous:g}); sort the trace"
        )


def _check_times(times: Sequence[float], where: str) -> None:
    previous: float | None = None
    for index, value in enumerate(times):
        _check_time(value, previous, f"{where}, arrival {index + 1}")
        previous = value


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in CSV_SUFFIXES:
        return "csv"
    raise TraceError(
        f"{path}: unknown trace format {suffix or '(no suffix)'!r}; use .jsonl/.ndjson (JSON Lines) or .csv"
    )


def _parse_time(raw: object, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise TraceError(f"{where}: 't' must be a number, got {raw!r}")
    try:
        return float(raw)
    except ValueError:
        raise TraceError(f"{where}: 't' must be a number, got {raw!r}") from None


def _parse_image_id(raw: object, where: str) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise TraceError(f"{where}: 'image_id' must be a string, got {raw!r}")
    return raw


def _read_jsonl(path: Path, text: str) -> tuple[list[float], list[str | None]]:
    times: list[float] = []
    ids: list[str | None] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{where}: not JSON ({exc.msg}): {line[:80]!r}") from None
        if not isinstance(row, dict) or "t" not in row:
            raise TraceError(f'{where}: expected an object like {{"t": 0.5}}, got {line[:80]!r}')
        unknown = set(row) - {"t", "image_id"}
        if unknown:
            raise TraceError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; expected t, image_id")
        value = _parse_time(row["t"], where)
        _check_time(value, times[-1] if times else None, where)
        times.append(value)
        ids.append(_parse_image_id(row.get("image_id"), where))
    return times, ids


def _read_csv(path: Path, text: str) -> tuple[list[float], list[str | None]]:
    times: list[float] = []
    ids: list[str | None] = []
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    for row in reader:
        number = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        cells = [cell.strip() for cell in row]
        if header is None:
            if cells not in (["t"], ["t", "image_id"]):
                raise TraceError(
                    f"{path}, line {number}: expected the header 't' or 't,image_id', got {row!r}"
                )
            header = cells
            continue
        where = f"{path}, line {number}"
        if len(cells) != len(header):
            raise TraceError(f"{where}: {len(cells)} columns, the header has {len(header)}")
        value = _parse_time(cells[0], where)
        _check_time(value, times[-1] if times else None, where)
        times.append(value)
        ids.append(_parse_image_id(cells[1], where) if len(cells) > 1 else None)
    return times, ids


def read_trace(path: Path) -> Trace:
    """Read and check a trace file; an empty or malformed one is a :class:`TraceError`."""
    kind = _format(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraceError(f"{path}: no such trace file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read the trace: {exc}") from None
    times, ids = _read_jsonl(path, text) if kind == "jsonl" else _read_csv(path, text)
    if not times:
        raise TraceError(f"{path}: the trace has no arrivals")
    return Trace(tuple(times), tuple(ids) if any(i is not None for i in ids) else None)


def write_trace(trace: Trace, path: Path) -> Path:
    """Write ``trace`` in the format its suffix names (atomically: a temporary file, then a rename)."""
    kind = _format(path)
    ids = trace.image_ids
    buffer = io.StringIO()
    if kind == "jsonl":
        for index, t in enumerate(trace.times):
            row: dict[str, object] = {"t": round(t, 6)}
            if ids is not None and ids[index] is not None:
                row["image_id"] = ids[index]
            buffer.write(json.dumps(row) + "\n")
    else:
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["t", "image_id"] if ids is not None else ["t"])
        for index, t in enumerate(trace.times):
            writer.writerow([f"{t:.6f}", ids[index] or ""] if ids is not None else [f"{t:.6f}"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    tmp.replace(path)
    return path
