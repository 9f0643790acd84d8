"""The model profile's format: :class:`ModelProfile` (latency and energy per batch size, interpolated
at any size) and its files, CSV (one row per batch size) or JSON; a file that cannot be used is a
:class:`~loadgen.errors.ProfileError`.

A profile is the physical limit the served figures are compared with, and the queue simulator's
(:mod:`loadgen.simulate`) model of the server's compute: how long a batch of ``b`` items takes and
how many joules it costs. ``greenserve profile`` (:mod:`studies.profile.run`) measures one; the
simulator and its calibration read it from here, which imports nothing of the measurement (no
torch, no server). See ``docs/simulator.md``.

Each figure is recorded with its source and whether it includes idle draw: the batches on the
device's meter, the decode + preprocess cost on the CPU side (priced above idle).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energy.profile import ProfilePoint, idle_phrase, source_idle_included
from loadgen.errors import ProfileError
from studies.kit.files import write_text_atomic

__all__ = [
    "CPU_SOURCES",
    "CSV_COLUMNS",
    "ModelProfile",
    "ProfilePoint",
    "interpolate",
    "read_profile",
    "write_profile",
]

#: Sources whose meter sees the CPU work of decoding: the CPU meters a decode figure is priced by.
CPU_SOURCES = frozenset({"rapl", "estimate", "synthetic"})


# --- the profile of a served model -------------------------------------------------------------


@dataclass(frozen=True)
class ModelProfile:
    """A model's offline figures per batch size, as the simulator uses them.

    ``points`` are sorted by batch size, one per size, all with ``energy_source`` (the device's
    meter) and the same ``energy_idle_included`` (:attr:`energy_idle_included`).
    ``preprocess_ms_per_image`` and ``preprocess_j_per_image`` are the decode + preprocess cost
    of one request's image (``None`` when not measured): work the server does per request in its
    decode threads, outside the model, which the simulator may add (``SimConfig``). Its joules come
    from ``preprocess_energy_source`` (a CPU meter: the CPU time priced above idle, so
    ``preprocess_idle_included`` is False), which on a GPU is not the batches' source. A profile
    written before these were recorded reads back with the batches' source and idle inclusion, which
    is how it was measured then.

    :meth:`latency_s` and :meth:`energy_j` interpolate between profiled sizes; see
    :func:`interpolate` for what they do outside the profiled range.
    """

    model: str
    device: str
    energy_source: str
    points: tuple[ProfilePoint, ...]
    weights: str | None = None
    torch_threads: int | None = None
    preprocess_ms_per_image: float | None = None
    preprocess_j_per_image: float | None = None
    notes: tuple[str, ...] = ()
    preprocess_energy_source: str | None = None
    preprocess_idle_included: bool | None = None

    def __post_init__(self) -> None:
        if not self.points:
            raise ProfileError(f"profile of {self.model}: no batch sizes were profiled")
        sizes = [p.batch_size for p in self.points]
        if sizes != sorted(set(sizes)):
            raise ProfileError(f"profile of {self.model}: batch sizes {sizes} are not sorted and unique")
        for point in self.points:
            if point.energy_source != self.energy_source:
                raise ProfileError(
                    f"profile of {self.model}: batch {point.batch_size} measured with "
                    f"{point.energy_source!r}, the profile says {self.energy_source!r}"
                )
            if not (math.isfinite(point.latency_mean_ms) and point.latency_mean_ms > 0):
                raise ProfileError(
                    f"profile of {self.model}: batch {point.batch_size} has latency "
                    f"{point.latency_mean_ms!r} ms; it must be > 0"
                )
            if not (math.isfinite(point.energy_j_per_batch) and point.energy_j_per_batch >= 0):
                raise ProfileError(
                    f"profile of {self.model}: batch {point.batch_size} has energy "
                    f"{point.energy_j_per_batch!r} J; it must be >= 0"
                )
        if len({p.energy_idle_included for p in self.points}) > 1:
            raise ProfileError(
                f"profile of {self.model}: batch sizes disagree on whether idle draw is included"
            )

        for name in ("preprocess_ms_per_image", "preprocess_j_per_image"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ProfileError(f"profile of {self.model}: {name} is {value!r}; it must be >= 0")

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(p.batch_size for p in self.points)

    @property
    def energy_idle_included(self) -> bool | None:
        """Whether the batches' joules include the device's idle (static) draw (None: unknown)."""
        return self.points[0].energy_idle_included

    @property
    def energy_label(self) -> str:
        """The batches' energy in words: ``nvml, idle included``."""
        idle = idle_phrase(self.energy_source, idle_included=self.energy_idle_included)
        return f"{self.energy_source}, {idle}"

    @property
    def served_energy_source(self) -> str:
        """The source a server labels this model's J/request with: the batches' meter and, when the
        decode is priced by another (a CPU meter beside a GPU), both, joined as ``/metrics`` joins
        them (``nvml+rapl``)."""
        sources = {self.energy_source}
        if self.preprocess_energy_source in CPU_SOURCES:
            sources.add(self.preprocess_energy_source)
        return "+".join(sorted(sources))

    @property
    def preprocess_energy_label(self) -> str | None:
        """The decode figure's energy in words (``rapl, CPU time above idle``), None when unmeasured."""
        source = self.preprocess_energy_source
        if source is None:
            return None
        if self.preprocess_idle_included is False and source_idle_included(source):
            return f"{source}, CPU time priced above idle: idle not included"
        return f"{source}, {idle_phrase(source, idle_included=self.preprocess_idle_included)}"

    def latency_s(self, batch_size: int) -> float:
        """Mean time to compute one batch of ``batch_size`` (seconds)."""
        return interpolate(self._curve("latency"), batch_size) / 1000.0

    def energy_j(self, batch_size: int) -> float:
        """Energy of one batch of ``batch_size`` (joules, this profile's ``energy_source``)."""
        return interpolate(self._curve("energy"), batch_size)

    def _curve(self, what: str) -> list[tuple[int, float]]:
        if what == "latency":
            return [(p.batch_size, p.latency_mean_ms) for p in self.points]
        return [(p.batch_size, p.energy_j_per_batch) for p in self.points]


def interpolate(curve: Sequence[tuple[int, float]], batch_size: float) -> float:
    """The value of a per-batch cost curve (sorted ``(batch size, cost)`` points) at ``batch_size``.

    * Inside the profiled range: linear between the two neighbouring sizes.
    * Beyond it (either side): linear from the two nearest points, kept between two bounds that
      hold for any batching model, where a batch never costs less than a smaller one and the cost
      per image never grows with the batch: for ``b`` above the largest size ``B``,
      ``cost(B) ≤ cost(b) ≤ cost(B) × b / B``; for ``b`` below the smallest size ``S``,
      ``cost(S) × b / S ≤ cost(b) ≤ cost(S)``. The bounds stop a noisy slope (a batch of 64
      measured faster than one of 32) from extrapolating to a negative or shrinking cost.
    * A single point: proportional scaling, ``cost(b) = cost(S) × b / S`` (constant cost per
      image). With nothing to say how the cost grows, this is the choice that never claims a
      gain from batching the profile did not measure.
    """
    if batch_size <= 0:
        raise ValueError(f"batch size must be > 0, got {batch_size!r}")
    if not curve:
        raise ValueError("empty cost curve")
    if len(curve) == 1:
        size, cost = curve[0]
        return cost * batch_size / size
    sizes = [size for size, _ in curve]
    if batch_size >= sizes[-1]:
        (b0, c0), (b1, c1) = curve[-2], curve[-1]
        linear = c1 + (c1 - c0) / (b1 - b0) * (batch_size - b1)
        return min(max(linear, c1), c1 * batch_size / b1)
    if batch_size <= sizes[0]:
        (b0, c0), (b1, c1) = curve[0], curve[1]
        linear = c0 + (c1 - c0) / (b1 - b0) * (batch_size - b0)
        return max(min(linear, c0), c0 * batch_size / b0)
    right = next(index for index, size in enumerate(sizes) if size >= batch_size)
    (b0, c0), (b1, c1) = curve[right - 1], curve[right]
    return c0 + (c1 - c0) * (batch_size - b0) / (b1 - b0)


# --- files ------------------------------------------------------------------------------------

#: CSV columns: the profile's own fields repeated on every row, then the point's.
_PROFILE_COLUMNS = (
    "model",
    "device",
    "weights",
    "torch_threads",
    "preprocess_ms_per_image",
    "preprocess_j_per_image",
    "preprocess_energy_source",
    "preprocess_idle_included",
)
_POINT_COLUMNS = tuple(f.name for f in dataclasses.fields(ProfilePoint))
CSV_COLUMNS = (*_PROFILE_COLUMNS, *_POINT_COLUMNS)
_REQUIRED_COLUMNS = frozenset(
    {"model", "device", "batch_size", "latency_mean_ms", "energy_j_per_batch", "energy_source"}
)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)


def write_profile(profile: ModelProfile, path: Path) -> Path:
    """Write ``profile`` as CSV (``.csv``: one row per batch size) or JSON (``.json``: everything,
    notes included), atomically (:func:`studies.kit.files.write_text_atomic`)."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(dataclasses.asdict(profile), indent=2) + "\n"
    elif suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        shared = [getattr(profile, name) for name in _PROFILE_COLUMNS]
        for point in profile.points:
            writer.writerow([_cell(v) for v in (*shared, *dataclasses.astuple(point))])
        text = buffer.getvalue()
    else:
        raise ProfileError(f"{path}: unknown profile format {suffix or '(no suffix)'!r}; use .csv or .json")
    return write_text_atomic(path, text)


def read_profile(path: Path) -> ModelProfile:
    """Read a profile written by :func:`write_profile` (CSV or JSON, by suffix).

    A missing, empty or malformed file, or one whose rows disagree on the model, device or energy
    source, is a :class:`ProfileError` naming the file (and the line, for CSV).
    """
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ProfileError(f"{path}: unknown profile format {suffix or '(no suffix)'!r}; use .csv or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file (make one with greenserve profile)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read the profile: {exc}") from None
    if not text.strip():
        raise ProfileError(f"{path}: the profile is empty")
    try:
        return _read_json(text) if suffix == ".json" else _read_csv(text)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None


def _number(raw: object, column: str, *, integer: bool = False, optional: bool = False) -> Any:
    """A finite number from a CSV cell (text) or a JSON value; ``optional``: empty means None."""
    if optional and (raw is None or raw == ""):
        return None
    kind = "an integer" if integer else "a number"
    value: float
    if isinstance(raw, str):
        try:
            value = int(raw.strip()) if integer else float(raw)
        except ValueError:
            raise ProfileError(f"{column} must be {kind}, got {raw!r}") from None
    elif (isinstance(raw, int) and not isinstance(raw, bool)) or (isinstance(raw, float) and not integer):
        value = raw
    else:
        raise ProfileError(f"{column} must be {kind}, got {raw!r}")
    if not math.isfinite(value):
        raise ProfileError(f"{column} must be finite, got {raw!r}")
    return value


def _flag(raw: object, column: str) -> bool | None:
    """A boolean from a CSV cell (``True``/``False``, any case) or a JSON value; empty means None."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise ProfileError(f"{column} must be true or false, got {raw!r}")


def _text(raw: object, column: str, *, optional: bool = False) -> Any:
    if optional and (raw is None or raw == ""):
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise ProfileError(f"{column} must be a non-empty string, got {raw!r}")
    return raw.strip()


def _parse_point(row: dict[str, Any]) -> ProfilePoint:
    size = _number(row.get("batch_size"), "batch_size", integer=True)
    if size < 1:
        raise ProfileError(f"batch_size must be >= 1, got {size}")
    latency = _number(row.get("latency_mean_ms"), "latency_mean_ms")
    energy = _number(row.get("energy_j_per_batch"), "energy_j_per_batch")

    def optional(column: str, default: float) -> float:
        value = _number(row.get(column), column, optional=True)
        return default if value is None else float(value)

    batches = _number(row.get("batches"), "batches", integer=True, optional=True)
    source = _text(row.get("energy_source"), "energy_source")
    idle_included = _flag(row.get("energy_idle_included"), "energy_idle_included")
    return ProfilePoint(
        batch_size=size,
        batches=1 if batches is None else batches,
        latency_mean_ms=latency,
        latency_p50_ms=optional("latency_p50_ms", latency),
        latency_p99_ms=optional("latency_p99_ms", latency),
        latency_std_ms=optional("latency_std_ms", 0.0),
        energy_j_per_batch=energy,
        energy_j_per_image=optional("energy_j_per_image", energy / size),
        images_per_s=optional("images_per_s", size / (latency / 1000.0) if latency > 0 else math.inf),
        energy_source=source,
        # A file written before the field existed: everything the meter read, as measured then.
        energy_idle_included=idle_included if "energy_idle_included" in row else source_idle_included(source),
    )


def _profile_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": _text(row.get("model"), "model"),
        "device": _text(row.get("device"), "device"),
        "weights": _text(row.get("weights"), "weights", optional=True),
        "torch_threads": _number(row.get("torch_threads"), "torch_threads", integer=True, optional=True),
        "preprocess_ms_per_image": _number(
            row.get("preprocess_ms_per_image"), "preprocess_ms_per_image", optional=True
        ),
        "preprocess_j_per_image": _number(
            row.get("preprocess_j_per_image"), "preprocess_j_per_image", optional=True
        ),
        "preprocess_energy_source": _text(
            row.get("preprocess_energy_source"), "preprocess_energy_source", optional=True
        ),
        "preprocess_idle_included": _flag(row.get("preprocess_idle_included"), "preprocess_idle_included"),
    }


def _read_csv(text: str) -> ModelProfile:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = _REQUIRED_COLUMNS - set(header)
    if missing:
        raise ProfileError(
            f"not a profile: missing column(s) {', '.join(sorted(missing))} (header {','.join(header)!r})"
        )
    shared: dict[str, Any] | None = None
    points: list[ProfilePoint] = []
    for row in reader:
        line = reader.line_num
        if None in row or any(value is None for value in row.values()):
            raise ProfileError(f"line {line}: {len(header)} columns expected")
        try:
            fields = _profile_fields(row)
            point = _parse_point(row)
        except ProfileError as exc:
            raise ProfileError(f"line {line}: {exc}") from None
        if shared is None:
            shared = fields
        elif fields != shared:
            changed = sorted(name for name in fields if fields[name] != shared[name])
            raise ProfileError(f"line {line}: {', '.join(changed)} differ(s) from the first row")
        points.append(point)
    if shared is None:
        raise ProfileError("the profile has no rows")
    return _build(shared, points, notes=(), legacy="preprocess_energy_source" not in header)


def _read_json(text: str) -> ModelProfile:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise ProfileError('not a profile: expected an object with a "points" list')
    notes = data.get("notes") or []
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ProfileError('"notes" must be a list of strings')
    points = []
    for index, raw in enumerate(data["points"], start=1):
        if not isinstance(raw, dict):
            raise ProfileError(f"point {index}: expected an object, got {raw!r}")
        try:
            points.append(_parse_point(raw))
        except ProfileError as exc:
            raise ProfileError(f"point {index}: {exc}") from None
    legacy = "preprocess_energy_source" not in data
    return _build(_profile_fields(data), points, notes=tuple(notes), legacy=legacy)


def _build(
    fields: dict[str, Any], points: list[ProfilePoint], notes: tuple[str, ...], *, legacy: bool
) -> ModelProfile:
    if not points:
        raise ProfileError("the profile has no batch sizes")
    points.sort(key=lambda p: p.batch_size)
    sizes = [p.batch_size for p in points]
    duplicates = sorted({s for s in sizes if sizes.count(s) > 1})
    if duplicates:
        raise ProfileError(f"batch size(s) {', '.join(map(str, duplicates))} appear more than once")
    sources = sorted({p.energy_source for p in points})
    if len(sources) > 1:
        raise ProfileError(f"rows disagree on the energy source ({', '.join(sources)})")
    if legacy and fields["preprocess_j_per_image"] is not None:
        # Written before the decode had its own source: it was read from the profile's meter,
        # everything that meter's devices used meanwhile.
        fields["preprocess_energy_source"] = sources[0]
        fields["preprocess_idle_included"] = source_idle_included(sources[0])
    return ModelProfile(energy_source=sources[0], points=tuple(points), notes=notes, **fields)
