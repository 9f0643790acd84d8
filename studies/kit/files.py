"""Atomic writes and resumable result tables.

A reader sees a result file's old content or its new one, never half of it; a study killed midway
resumes from its table (:class:`ResumableTable`) instead of starting again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studies.kit.errors import LabError

logger = logging.getLogger(__name__)


def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` through a temporary file in the same directory, then rename it into place.

    Readers see the old file or the new one, never a half-written one (a killed process leaves at
    most a stray ``.<name>.*.tmp``, which is removed when the write itself fails).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open rather than tempfile.mkstemp: mkstemp makes the file 0600, and results are meant to be
    # shared; 0o666 here is filtered by the umask like any file the user creates.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    data = text.encode("utf-8")

    def write(f: io.BufferedWriter) -> None:
        f.write(data)

    return write_atomic(path, write)


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (NaN refused: absent values must be ``null``) atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_csv_atomic(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts keyed by ``columns``; None becomes an empty cell) as CSV atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    return write_text_atomic(path, buf.getvalue())


def check_settings_file(
    settings_json: Path, fingerprint: Mapping[str, Any], *, out_dir: Path, study: str
) -> bool:
    """Whether ``settings_json`` (a resumable study's settings) exists; a :class:`LabError` naming
    every differing field when it holds other settings than ``fingerprint``, so that a study is
    never resumed into a table made another way."""
    if not settings_json.exists():
        return False
    try:
        previous = json.loads(settings_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LabError(f"cannot read {settings_json}: {exc}") from None
    if previous != fingerprint:
        keys = sorted(set(previous) | set(fingerprint))
        diff = [
            f"{k}: {previous.get(k)!r} → {fingerprint.get(k)!r}"
            for k in keys
            if previous.get(k) != fingerprint.get(k)
        ]
        raise LabError(
            f"{out_dir} holds a {study} with other settings ({'; '.join(diff)}); "
            "use another --out, or rerun with the same settings to resume it"
        )
    return True


@dataclass(frozen=True)
class ResumableTable:
    """A resumable study's CSV table as a previous run left it, read before anything is written.

    The studies (ablation, zoo) append one row per finished unit, so a killed run leaves the
    table's complete lines plus perhaps half a line: ``text`` holds the complete ones, and
    :meth:`prepare` cuts the rest off before the study appends again.
    """

    path: Path
    settings_json: Path
    fingerprint: Mapping[str, Any]
    text: str  # the complete lines ("" when the table does not exist)
    complete_bytes: int  # their length in bytes
    exists: bool
    has_settings: bool

    @classmethod
    def open(
        cls, out_dir: Path, table_name: str, settings_name: str, fingerprint: Mapping[str, Any], *, study: str
    ) -> ResumableTable:
        """Read ``out_dir``'s table; refuse one made with other settings, or without a settings file."""
        if out_dir.exists() and not out_dir.is_dir():
            raise LabError(f"output path {out_dir} exists and is not a directory")
        path, settings_json = out_dir / table_name, out_dir / settings_name
        has_settings = check_settings_file(settings_json, fingerprint, out_dir=out_dir, study=study)
        if not path.exists():
            return cls(path, settings_json, fingerprint, "", 0, False, has_settings)
        if not has_settings:
            raise LabError(
                f"{path} exists without {settings_name}, so its settings are unknown; "
                "use another --out rather than mixing studies"
            )
        raw = path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        return cls(path, settings_json, fingerprint, complete.decode("utf-8"), len(complete), True, True)

    def prepare(self, *, sources: set[str], meter_source: str, rows: str) -> None:
        """Before appending: refuse to mix energy sources in one table (``rows`` names what its rows
        are, for the message), create the directory, write the settings file, and cut off a
        half-written last line."""
        if sources - {meter_source}:
            raise LabError(
                f"{self.path} holds {rows} measured by {', '.join(sorted(sources))}, but this machine now "
                f"gives {meter_source!r}; refusing to mix energy sources in one table"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.has_settings:
            write_json_atomic(self.settings_json, dict(self.fingerprint))
        if self.exists and self.complete_bytes < self.path.stat().st_size:
            logger.warning(
                "dropping a half-written last line of %s (the study was killed mid-write)", self.path
            )
            os.truncate(self.path, self.complete_bytes)
