"""Trace files: JSON Lines or CSV, one arrival per line (the formats are in :mod:`loadgen.trace`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from loadgen.errors import TraceError
from loadgen.trace.arrivals import Trace, check_time
from studies.kit.files import write_text_atomic

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
CSV_SUFFIXES = frozenset({".csv"})


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
        check_time(value, times[-1] if times else None, where)
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
        check_time(value, times[-1] if times else None, where)
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
    return write_text_atomic(path, buffer.getvalue())
