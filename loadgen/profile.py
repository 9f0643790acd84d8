"""Offline model profiles: latency and energy per batch size, measured without HTTP.

A profile is the physical limit the served figures are compared with, and the simulator's
(:mod:`loadgen.simulate`) model of the server's compute: how long a batch of ``b`` items takes and
how many joules it costs. See ``docs/simulator.md``.

Two layers:

* a generic core, :func:`energy.profile.profile_batches` (re-exported here), that times any
  ``run_batch(batch_size)`` callable and reads its energy from an :class:`~energy.EnergySampler`.
  It lives in ``energy/`` so that the trainer's model-zoo study (which never imports ``service``
  or ``loadgen``) profiles plain torch modules the same way;
* :func:`profile_model`, which loads a model exactly as the server does
  (:func:`service.model.load_classifier`, imported lazily) and profiles ``classifier.predict`` on
  real inputs decoded as the server decodes them, plus the per-image decode + preprocess cost.

Energy is measured as the server measures it (an :class:`~energy.EnergyAccountant`): the batches
on the device's meter (the GPU's ``nvml`` on a GPU, else the CPU meter), everything the device
used while they ran (idle/static draw included where the meter includes it); the decode on the CPU
side, its thread CPU time priced at the CPU meter's joules per CPU-second above idle (``rapl``,
else ``estimate``; idle not included), never the GPU's idle draw while the CPU decodes. Each figure
is recorded with its source and whether it includes idle draw.

:class:`ModelProfile` holds the result, interpolates it at any batch size, and is saved as CSV
(one row per batch size) or JSON; a file that cannot be used is a :class:`ProfileError`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from energy.profile import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_MIN_TIME_S,
    DEFAULT_REPEATS,
    DEFAULT_WARMUP,
    BatchProfileError,
    CallCost,
    ProfilePoint,
    ProfileRun,
    check_batch_sizes,
    check_counts,
    cuda_synchronizer,
    idle_phrase,
    is_out_of_memory,
    profile_batches,
    profile_calls,
    profile_thread_calls,
    source_idle_included,
)
from loadgen.errors import ProfileError

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_MIN_TIME_S",
    "DEFAULT_REPEATS",
    "DEFAULT_WARMUP",
    "BatchProfileError",
    "CallCost",
    "ModelProfile",
    "ProfilePoint",
    "ProfileRun",
    "check_batch_sizes",
    "cuda_synchronizer",
    "interpolate",
    "is_out_of_memory",
    "profile_batches",
    "profile_calls",
    "profile_model",
    "profile_thread_calls",
    "read_profile",
    "write_profile",
]

if TYPE_CHECKING:
    from energy import EnergyAccountant

logger = logging.getLogger(__name__)

#: Images decoded (and cycled through) for the inputs and the decode cost.
DEFAULT_IMAGES = 64
#: The server's default sampler period (``energy_sample_ms``), so both read energy alike.
SAMPLER_PERIOD_S = 0.02
#: Sources whose meter sees the CPU work of decoding: the CPU meters a decode figure is priced by.
CPU_SOURCES = frozenset({"rapl", "estimate", "synthetic"})
#: How long a RAPL meter's idle power is measured before profiling (its price per CPU-second is
#: above idle, and RAPL alone does not know its idle draw).
DEFAULT_IDLE_S = 1.0


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
    notes included), atomically (a temporary file, then a rename)."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


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


# --- profiling a served model ------------------------------------------------------------------


def _default_weights(model: str) -> str | None:
    """The embedded checkpoint for the embedded model; random weights for the rest, which costs
    the same per batch as trained weights and needs no download (this machine may be offline)."""
    from service.config import EMBEDDED_MODEL

    if model == EMBEDDED_MODEL or model == "noop" or ":" in model:
        return None
    return "random"


def profile_model(
    model: str,
    *,
    weights: str | None = None,
    device: str = "cpu",
    batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    min_time_s: float = DEFAULT_MIN_TIME_S,
    torch_threads: int | None = None,
    energy_source: str = "auto",
    watts_per_core: float | None = None,
    image_source: str | None = None,
    images: int = DEFAULT_IMAGES,
    allocator: Literal["reuse", "system"] = "reuse",
    idle_s: float = DEFAULT_IDLE_S,
    accountant: EnergyAccountant | None = None,
) -> ModelProfile:
    """Profile ``model`` as greenserve would serve it: same loader, same decoding, no HTTP.

    The model is loaded by :func:`service.model.load_classifier` from the server's own settings
    (``weights=None``: the embedded checkpoint for ``digits_cnn``, random weights for torchvision
    models, which cost the same). ``images`` payloads from ``image_source`` (a sample set,
    ``digits`` or ``photos``, or a directory; default: the samples that suit the model) are decoded
    with :func:`service.imaging.decode_image` and ``classifier.preprocess``, and batches cycle
    through them, so the model sees real inputs. The decode + preprocess cost per image is measured
    too, one image at a time in this thread (the server spreads it over its decode threads).

    Energy, as the server accounts it (the module docstring): an accountant for ``energy_source``
    (:func:`energy.create_accountant`; ``accountant`` gives one instead, whose samplers are started
    here and which the caller closes). The batches are read from its accelerator's sampler (a GPU)
    or else its CPU sampler; the decode is priced by its CPU side (thread CPU time × the CPU meter's
    joules per CPU-second above idle; a RAPL meter's idle power is measured first, for ``idle_s``).

    ``allocator`` is the server's setting of that name, applied to this process as the server
    applies it (:mod:`energy.allocator`; it cannot be undone), so that the profile's batches
    cost what the served ones do.

    ``torch_threads`` is set for the duration of the call and restored afterwards (None: torch's
    own choice, as the server's default). Raises :class:`ProfileError` for an unknown model, a bad
    setting, an energy source that cannot start, or an image source without images.
    """
    from pydantic import ValidationError

    from energy import SOURCE_CHOICES, EnergyError, close_accountant, create_accountant
    from loadgen.images import ImageSourceError, default_sample_for, load_payloads
    from service.config import Settings
    from service.errors import ConfigurationError, GreenserveError
    from service.imaging import DecodeLimits, decode_image
    from service.model import load_classifier

    try:
        sizes = check_batch_sizes(batch_sizes)
        check_counts(warmup, repeats, min_time_s)
    except BatchProfileError as exc:
        raise ProfileError(str(exc)) from None
    if images < 1:
        raise ProfileError(f"images must be >= 1, got {images}")
    if not (math.isfinite(idle_s) and idle_s >= 0):
        raise ProfileError(f"idle_s must be a finite number >= 0, got {idle_s!r}")
    if energy_source not in SOURCE_CHOICES:  # before loading the model, which takes a while
        raise ProfileError(f"unknown energy source {energy_source!r}; valid: {', '.join(SOURCE_CHOICES)}")
    weights = weights if weights is not None else _default_weights(model)
    try:
        settings = Settings(
            model=model, weights=weights, device=device, torch_threads=torch_threads, allocator=allocator
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ProfileError(f"invalid setting: {problems}") from None

    import torch

    from energy.allocator import configure_allocator

    configure_allocator(settings.allocator)
    threads_before = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        try:
            classifier = load_classifier(settings)
        except ConfigurationError as exc:
            raise ProfileError(str(exc)) from None
        try:
            payloads = load_payloads(image_source or default_sample_for(model), images)
        except ImageSourceError as exc:
            raise ProfileError(str(exc)) from None
        limits = DecodeLimits()
        try:
            inputs = [
                classifier.preprocess(decode_image(p.body, limits, draft_size=classifier.draft_size))
                for p in payloads
            ]
        except GreenserveError as exc:  # BadImageError and friends from a user's directory
            raise ProfileError(f"cannot decode the images of {image_source!r}: {exc}") from None
        owned = accountant is None
        if accountant is None:
            try:
                accountant = create_accountant(
                    energy_source,
                    device=classifier.device,
                    watts_per_core=watts_per_core,
                    period_s=SAMPLER_PERIOD_S,
                )
            except (EnergyError, ValueError) as exc:
                raise ProfileError(f"energy source {energy_source!r}: {exc}") from None
        try:
            for sampler in accountant.samplers:
                sampler.start()
            for sampler in accountant.samplers:
                sampler.wait_ready(5.0)
            if accountant.cpu.idle_power_w is None and idle_s > 0:
                accountant.cpu.measure_idle(idle_s)  # RAPL: the decode is priced above idle
            batch_sampler = accountant.accelerator or accountant.cpu
            cursor = 0

            def run_batch(size: int) -> None:
                nonlocal cursor
                classifier.predict([inputs[(cursor + i) % len(inputs)] for i in range(size)])
                cursor = (cursor + size) % len(inputs)

            run = profile_batches(
                run_batch,
                sizes,
                warmup=warmup,
                repeats=repeats,
                sampler=batch_sampler,
                min_time_s=min_time_s,
                synchronize=cuda_synchronizer(classifier.device),
            )
            decode_index = 0

            def decode_one() -> None:
                nonlocal decode_index
                body = payloads[decode_index % len(payloads)].body
                classifier.preprocess(decode_image(body, limits, draft_size=classifier.draft_size))
                decode_index += 1

            decode = profile_thread_calls(
                decode_one,
                warmup=min(len(payloads), 8),
                repeats=len(payloads),
                accountant=accountant,
                min_time_s=min(min_time_s, 0.5),
            )
        finally:
            if owned:
                close_accountant(accountant)
            else:
                for sampler in accountant.samplers:
                    sampler.stop()
    finally:
        torch.set_num_threads(threads_before)
    notes = [f"batch size {size} skipped: {reason}" for size, reason in run.skipped]
    if not run.points:
        raise ProfileError(f"{model}: no batch size could be profiled ({'; '.join(notes)})")
    if decode.unknown is not None:
        notes.append(f"decode + preprocess energy unknown: {decode.unknown}")
    return ModelProfile(
        model=classifier.name,
        device=classifier.device,
        energy_source=batch_sampler.source,
        points=run.points,
        weights=classifier.weights,
        torch_threads=torch_threads,
        preprocess_ms_per_image=decode.mean_ms,
        preprocess_j_per_image=decode.energy_j,
        notes=tuple(notes),
        preprocess_energy_source=decode.energy_source,
        preprocess_idle_included=decode.energy_idle_included,
    )
