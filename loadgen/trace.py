"""Arrival traces: when each request starts, in seconds from the start of the run.

A trace is a file, one arrival per line, in time order:

* **JSON Lines** (``.jsonl``, ``.ndjson``): ``{"t": 0.0625}`` or ``{"t": 0.0625, "image_id": "cat.jpg"}``;
* **CSV** (``.csv``): a header ``t`` or ``t,image_id``, then one row per arrival.

``t`` is a finite number ≥ 0, never smaller than the previous line's (equal times are simultaneous
arrivals). ``image_id`` (optional) names the image to send: a file name of the image directory, or
a sample id (``digits-3``, ``photo-17``); without it, images are taken round-robin. Blank lines
are ignored. Anything else is a :class:`TraceError` naming the file and line.

Traces come from three places: a file written by hand or by another tool; a **generator** of this
module (:func:`poisson`, :func:`uniform_jitter`, :func:`bursty`, :func:`ramp`, :func:`step`,
:func:`diurnal`; by name through :data:`GENERATORS` and :func:`generate`), each a pure function of
its parameters and a seed; or a server's **recording** of real traffic (``greenserve serve
--record-trace FILE``, :mod:`service.recording`), written in the same JSON Lines format so that it
replays as is. :func:`trace_stats` summarises any of them. The formulas are in ``docs/traces.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

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


# --- generators ----------------------------------------------------------------------------------
#
# Each generator is a pure function of its parameters and ``seed`` (numpy's ``default_rng``), so a
# trace named in a study's table can be re-created exactly. Every one returns the arrivals in
# [0, duration_s), sorted. The nonhomogeneous ones (ramp, diurnal) use Lewis–Shedler thinning: a
# homogeneous Poisson process at the highest rate, each arrival kept with probability
# rate(t) / highest rate, which is exact for any bounded rate function.

Times = npt.NDArray[np.float64]

#: Refuse parameters that would produce more arrivals (or on/off periods) than this: a typo such as
#: ``--rate 1e9`` should be an error message, not a machine out of memory.
MAX_ARRIVALS = 10_000_000


def _number(name: str, value: object, *, minimum: float = 0.0, strict: bool = True, unit: str = "") -> float:
    """``value`` as a float, checked to be finite and > ``minimum`` (≥ when not ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TraceError(f"{name} must be a number, got {value!r}")
    number = float(value)
    bound = f"> {minimum:g}" if strict else f"≥ {minimum:g}"
    unit = f" ({unit})" if unit else ""
    if not math.isfinite(number) or number < minimum or (strict and number == minimum):
        raise TraceError(f"{name}{unit} must be a finite number {bound}, got {value!r}")
    return number


def _rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TraceError(f"seed must be an integer ≥ 0, got {seed!r}")
    return np.random.default_rng(seed)


def _check_size(expected: float, what: str = "arrivals") -> None:
    if expected > MAX_ARRIVALS:
        raise TraceError(
            f"these parameters give about {expected:.3g} {what}, more than the limit of {MAX_ARRIVALS:,}; "
            "lower the rate or the duration"
        )


def _homogeneous(rate: float, duration_s: float, rng: np.random.Generator) -> Times:
    """A Poisson process of ``rate`` (req/s) on [0, duration_s): cumulative exponential gaps.

    Gaps are drawn in chunks sized to cover the duration with high probability, and more are
    drawn in the rare case they fall short, so the result is exact rather than truncated.
    """
    if rate <= 0:
        return np.empty(0)
    expected = rate * duration_s
    chunk = int(expected + 6 * math.sqrt(expected) + 16)
    parts = [np.cumsum(rng.exponential(1.0 / rate, chunk))]
    while parts[-1][-1] < duration_s:
        parts.append(parts[-1][-1] + np.cumsum(rng.exponential(1.0 / rate, chunk)))
    times = np.concatenate(parts)
    return times[times < duration_s]


def _thinned(
    rate_at: Callable[[Times], Times], rate_max: float, duration_s: float, rng: np.random.Generator
) -> Times:
    """A nonhomogeneous Poisson process with rate ``rate_at(t)`` ≤ ``rate_max`` (thinning)."""
    candidates = _homogeneous(rate_max, duration_s, rng)
    keep = rng.random(candidates.size) * rate_max < rate_at(candidates)
    return candidates[keep]


def _trace(times: Times, duration_s: float, expected: float, kind: str) -> Trace:
    times = np.sort(times[(times >= 0) & (times < duration_s)])
    if times.size == 0:
        raise TraceError(
            f"the {kind} trace has no arrivals (about {expected:.3g} expected); "
            "raise the rate or the duration, or try another seed"
        )
    return Trace(tuple(times.tolist()))


def poisson(rate: float, duration_s: float, seed: int = 0) -> Trace:
    """Poisson arrivals: independent exponential inter-arrival times of mean ``1 / rate``.

    The memoryless baseline of queueing theory (M/·/· queues): the inter-arrival coefficient of
    variation is 1, and the number of arrivals in any window of length w is Poisson(rate × w).
    """
    rate = _number("rate", rate, unit="req/s")
    duration_s = _number("duration_s", duration_s, unit="s")
    _check_size(rate * duration_s)
    return _trace(_homogeneous(rate, duration_s, _rng(seed)), duration_s, rate * duration_s, "poisson")


def uniform_jitter(rate: float, jitter: float, duration_s: float, seed: int = 0) -> Trace:
    """Nearly periodic arrivals: the first at 0, then gaps uniform in [(1 − jitter)/rate, (1 + jitter)/rate].

    The study's load (16 req/s ± 20 %: ``rate=16, jitter=0.2``): a steady client whose sending is
    slightly irregular. ``jitter=0`` is exactly periodic; the gap CV is jitter / √3.
    """
    rate = _number("rate", rate, unit="req/s")
    jitter = _number("jitter", jitter, strict=False)
    if jitter >= 1:
        raise TraceError(f"jitter must be in [0, 1) (a fraction of the period), got {jitter!r}")
    duration_s = _number("duration_s", duration_s, unit="s")
    period_s = 1.0 / rate
    count = int(duration_s / (period_s * (1 - jitter))) + 1  # gaps enough even if all are shortest
    _check_size(count)
    rng = _rng(seed)
    gaps = rng.uniform(period_s * (1 - jitter), period_s * (1 + jitter), count)
    times = np.concatenate(([0.0], np.cumsum(gaps)))
    return _trace(times, duration_s, rate * duration_s, "uniform-jitter")


def bursty_mean_rate(rate_on: float, rate_off: float, mean_on_s: float, mean_off_s: float) -> float:
    """The long-run mean rate of :func:`bursty`: the state rates weighted by the time in each state."""
    return (rate_on * mean_on_s + rate_off * mean_off_s) / (mean_on_s + mean_off_s)


def bursty(
    rate_on: float,
    rate_off: float,
    mean_on_s: float,
    mean_off_s: float,
    duration_s: float,
    seed: int = 0,
) -> Trace:
    """On/off bursts: a two-state Markov-modulated Poisson process (MMPP-2).

    The source alternates between an *on* state (Poisson arrivals at ``rate_on``) and an *off*
    state (``rate_off``, which may be 0), staying in each for an exponential time of mean
    ``mean_on_s`` / ``mean_off_s``. The first state is on with probability mean_on / (mean_on +
    mean_off), and exponential holding times are memoryless, so the process is stationary from
    t = 0: its mean rate is :func:`bursty_mean_rate` over any window, and its inter-arrival CV is
    above 1 whenever the two rates differ — what makes a batcher's queue grow in bursts.
    """
    rate_on = _number("rate_on", rate_on, unit="req/s")
    rate_off = _number("rate_off", rate_off, strict=False, unit="req/s")
    mean_on_s = _number("mean_on_s", mean_on_s, unit="s")
    mean_off_s = _number("mean_off_s", mean_off_s, unit="s")
    duration_s = _number("duration_s", duration_s, unit="s")
    _check_size(max(rate_on, rate_off) * duration_s)
    _check_size(2 * duration_s / (mean_on_s + mean_off_s), "on/off periods")
    rng = _rng(seed)
    first_on = bool(rng.random() < mean_on_s / (mean_on_s + mean_off_s))
    first, second = ((mean_on_s, rate_on), (mean_off_s, rate_off))[:: 1 if first_on else -1]
    # State periods alternate first, second, first, …: draw them in chunks until they cover the run.
    pairs = int(duration_s / (mean_on_s + mean_off_s)) + 8
    means = np.tile([first[0], second[0]], pairs)
    lengths = [rng.exponential(1.0, means.size) * means]
    while np.sum([part.sum() for part in lengths]) < duration_s:
        lengths.append(rng.exponential(1.0, means.size) * means)
    length = np.concatenate(lengths)
    ends = np.cumsum(length)
    starts = ends - length
    inside = starts < duration_s
    starts, spans = starts[inside], np.minimum(ends[inside], duration_s) - starts[inside]
    rates = np.resize(np.array([first[1], second[1]]), starts.size)
    # Given the number of Poisson arrivals in a period, their times are independent and uniform.
    counts = rng.poisson(rates * spans)
    times = np.repeat(starts, counts) + rng.random(int(counts.sum())) * np.repeat(spans, counts)
    expected = bursty_mean_rate(rate_on, rate_off, mean_on_s, mean_off_s) * duration_s
    return _trace(times, duration_s, expected, "bursty")


def ramp(start_rate: float, end_rate: float, duration_s: float, seed: int = 0) -> Trace:
    """Poisson arrivals whose rate changes linearly from ``start_rate`` at 0 to ``end_rate`` at the end.

    rate(t) = start + (end − start) · t / duration; either end may be 0 (not both). Finds the load at
    which a configuration starts to queue, in one run.
    """
    start_rate = _number("start_rate", start_rate, strict=False, unit="req/s")
    end_rate = _number("end_rate", end_rate, strict=False, unit="req/s")
    duration_s = _number("duration_s", duration_s, unit="s")
    rate_max = max(start_rate, end_rate)
    if rate_max == 0:
        raise TraceError("start_rate and end_rate are both 0: the ramp has no arrivals")
    _check_size(rate_max * duration_s)
    slope = (end_rate - start_rate) / duration_s

    def rate_at(t: Times) -> Times:
        return start_rate + slope * t

    times = _thinned(rate_at, rate_max, duration_s, _rng(seed))
    return _trace(times, duration_s, (start_rate + end_rate) / 2 * duration_s, "ramp")


def step(rates: Sequence[float], step_s: float, seed: int = 0) -> Trace:
    """Poisson arrivals at ``rates[0]`` for ``step_s`` seconds, then ``rates[1]``, …

    Piecewise-constant load, the Locust "shape" of stages as data: the duration is
    ``len(rates) × step_s``. A rate may be 0 (a pause), not all of them.
    """
    if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence) or not rates:
        raise TraceError(f"rates must be a non-empty list of rates (req/s), got {rates!r}")
    checked = [_number(f"rates[{i}]", r, strict=False, unit="req/s") for i, r in enumerate(rates)]
    step_s = _number("step_s", step_s, unit="s")
    if max(checked) == 0:
        raise TraceError("every rate is 0: the step trace has no arrivals")
    _check_size(max(checked) * step_s * len(checked))
    rng = _rng(seed)
    duration_s = step_s * len(checked)
    parts = [index * step_s + _homogeneous(rate, step_s, rng) for index, rate in enumerate(checked)]
    return _trace(np.concatenate(parts), duration_s, sum(checked) * step_s, "step")


def diurnal(
    mean_rate: float, peak_to_trough: float, period_s: float, duration_s: float, seed: int = 0
) -> Trace:
    """A day's traffic compressed into ``period_s``: a sinusoidal rate, trough at 0, peak at period/2.

    rate(t) = mean_rate · (1 − a · cos(2πt / period)) with a = (r − 1) / (r + 1) for
    ``peak_to_trough`` = r ≥ 1, so the peak is mean · (1 + a), the trough mean · (1 − a), and their
    ratio r. Over whole periods the mean rate is ``mean_rate``.
    """
    mean_rate = _number("mean_rate", mean_rate, unit="req/s")
    peak_to_trough = _number("peak_to_trough", peak_to_trough, minimum=1.0, strict=False)
    period_s = _number("period_s", period_s, unit="s")
    duration_s = _number("duration_s", duration_s, unit="s")
    amplitude = (peak_to_trough - 1) / (peak_to_trough + 1)
    rate_max = mean_rate * (1 + amplitude)
    _check_size(rate_max * duration_s)

    def rate_at(t: Times) -> Times:
        return mean_rate * (1 - amplitude * np.cos(2 * np.pi * t / period_s))

    times = _thinned(rate_at, rate_max, duration_s, _rng(seed))
    return _trace(times, duration_s, mean_rate * duration_s, "diurnal")


# --- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One parameter of a generator: its keyword, command-line flag, help, type and default."""

    name: str
    help: str
    default: float | int | tuple[float, ...] | None = None  # None: required
    kind: Literal["float", "int", "floats"] = "float"
    flag: str = ""  # default: --name with dashes

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class TraceKind:
    """A generator by name, with what the CLI needs to offer it (the torchvision registry habit)."""

    name: str
    build: Callable[..., Trace]
    summary: str
    params: tuple[Param, ...]

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


def _duration(default: float = 60.0) -> Param:
    return Param("duration_s", "Length of the trace (s).", default, flag="--duration")


_SEED = Param("seed", "Random seed: the same seed gives the same trace.", 0, "int")

#: Every generator by name (the names of ``greenserve trace generate KIND``).
GENERATORS: Mapping[str, TraceKind] = {
    kind.name: kind
    for kind in (
        TraceKind(
            "poisson",
            poisson,
            "Poisson arrivals (exponential inter-arrival times).",
            (Param("rate", "Mean arrival rate (req/s).", 16.0), _duration(), _SEED),
        ),
        TraceKind(
            "uniform-jitter",
            uniform_jitter,
            "Nearly periodic arrivals: each gap within ±jitter of 1/rate (the study: 16 req/s ±20 %).",
            (
                Param("rate", "Nominal arrival rate (req/s).", 16.0),
                Param("jitter", "Largest deviation of a gap, as a fraction of the period, in [0, 1).", 0.2),
                _duration(),
                _SEED,
            ),
        ),
        TraceKind(
            "bursty",
            bursty,
            "On/off bursts: a two-state Markov-modulated Poisson process.",
            (
                Param("rate_on", "Arrival rate while on (req/s).", 48.0),
                Param("rate_off", "Arrival rate while off (req/s; may be 0).", 4.0),
                Param("mean_on_s", "Mean length of an on period (s; exponential).", 2.0, flag="--mean-on"),
                Param("mean_off_s", "Mean length of an off period (s; exponential).", 6.0, flag="--mean-off"),
                _duration(),
                _SEED,
            ),
        ),
        TraceKind(
            "ramp",
            ramp,
            "Poisson arrivals with a rate changing linearly from start to end.",
            (
                Param("start_rate", "Rate at the start (req/s).", 1.0),
                Param("end_rate", "Rate at the end (req/s).", 32.0),
                _duration(),
                _SEED,
            ),
        ),
        TraceKind(
            "step",
            step,
            "Poisson arrivals at piecewise-constant rates, one per step.",
            (
                Param("rates", "Rate of each step (req/s), in order.", (4.0, 8.0, 16.0, 32.0), "floats"),
                Param("step_s", "Length of each step (s).", 15.0, flag="--step"),
                _SEED,
            ),
        ),
        TraceKind(
            "diurnal",
            diurnal,
            "A day compressed into one period: sinusoidal rate, trough at the start, peak mid-period.",
            (
                Param("mean_rate", "Mean rate over a period (req/s).", 16.0),
                Param("peak_to_trough", "Ratio of the peak rate to the trough rate (≥ 1).", 4.0),
                Param("period_s", "Length of one compressed day (s).", 60.0, flag="--period"),
                _duration(120.0),
                _SEED,
            ),
        ),
    )
}


def get_generator(name: str) -> TraceKind:
    try:
        return GENERATORS[name]
    except KeyError:
        raise TraceError(f"unknown trace kind {name!r}; choose from {', '.join(GENERATORS)}") from None


def generate(name: str, **params: Any) -> Trace:
    """The trace of generator ``name``; parameters not given take the registry's defaults."""
    kind = get_generator(name)
    unknown = set(params) - set(kind.param_names)
    if unknown:
        raise TraceError(
            f"unknown parameter(s) {', '.join(sorted(unknown))} for {name}; "
            f"expected {', '.join(kind.param_names)}"
        )
    values: dict[str, Any] = {}
    for param in kind.params:
        value = params.get(param.name, param.default)
        if value is None:
            raise TraceError(f"{name} needs {param.name} ({param.option})")
        values[param.name] = value
    return kind.build(**values)


# --- statistics -----------------------------------------------------------------------------------


def window_rates(trace: Trace, window_s: float = 1.0, duration_s: float | None = None) -> Times:
    """Arrivals per second in consecutive windows [k·w, (k+1)·w) covering [0, duration_s).

    ``duration_s`` defaults to the last arrival; an arrival at or after it counts in the last
    window, so a last window shorter than ``window_s`` reads low, never high.
    """
    window_s = _number("window_s", window_s, unit="s")
    span = trace.duration_s if duration_s is None else _number("duration_s", duration_s, strict=False)
    windows = max(1, math.ceil(span / window_s))
    _check_size(windows, "windows")
    index = np.minimum((np.asarray(trace.times) / window_s).astype(np.int64), windows - 1)
    return np.bincount(index, minlength=windows).astype(np.float64) / window_s


@dataclass(frozen=True)
class TraceStats:
    """What a trace offers a server. Rates in req/s, times in s; ``None`` where undefined.

    ``interarrival_cv`` is the standard deviation of the gaps over their mean: 1 for Poisson,
    below 1 for smoother traffic (periodic: 0), above 1 for bursts. ``peak_rate_rps`` is the most
    arrivals in one window of ``window_s`` (consecutive windows from 0), per second.
    """

    count: int
    duration_s: float
    mean_rate_rps: float | None
    interarrival_mean_s: float | None
    interarrival_cv: float | None
    interarrival_min_s: float | None
    interarrival_max_s: float | None
    peak_rate_rps: float
    window_s: float
    with_image_id: int

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for printing."""

        def show(value: float | None, unit: str = "", digits: int = 4) -> str:
            return "–" if value is None else f"{value:.{digits}g}{unit}"

        return [
            ("arrivals", str(self.count)),
            ("duration", show(self.duration_s, " s", 6)),
            ("mean rate", show(self.mean_rate_rps, " req/s")),
            ("inter-arrival mean", show(self.interarrival_mean_s, " s")),
            ("inter-arrival CV", show(self.interarrival_cv)),
            ("inter-arrival min", show(self.interarrival_min_s, " s")),
            ("inter-arrival max", show(self.interarrival_max_s, " s")),
            (f"peak rate ({self.window_s:g} s windows)", show(self.peak_rate_rps, " req/s")),
            ("with image_id", str(self.with_image_id)),
        ]


def trace_stats(trace: Trace, *, duration_s: float | None = None, window_s: float = 1.0) -> TraceStats:
    """Summarise ``trace``. ``duration_s``: the run's length when known (a generator's), since the
    last arrival comes before the end; the default is the last arrival's time."""
    span = trace.duration_s if duration_s is None else _number("duration_s", duration_s, unit="s")
    times = np.asarray(trace.times, dtype=np.float64)
    gaps = np.diff(times)
    gap_mean = float(gaps.mean()) if gaps.size else None
    return TraceStats(
        count=len(trace),
        duration_s=span,
        mean_rate_rps=len(trace) / span if span > 0 else None,
        interarrival_mean_s=gap_mean,
        interarrival_cv=float(gaps.std() / gap_mean) if gap_mean else None,
        interarrival_min_s=float(gaps.min()) if gaps.size else None,
        interarrival_max_s=float(gaps.max()) if gaps.size else None,
        peak_rate_rps=float(window_rates(trace, window_s, span).max()) if len(trace) else 0.0,
        window_s=window_s,
        with_image_id=sum(i is not None for i in trace.image_ids) if trace.image_ids else 0,
    )
