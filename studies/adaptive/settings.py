"""The adaptive-batching study's settings: the models, the latency objective, the static grid, the
three traces and how their windows are judged. Flags are generated from :class:`AdaptiveSettings`
(:mod:`studies.adaptive.cli`); ``--quick`` starts from :data:`QUICK` instead of the defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studies.kit.errors import LabError

#: The traces, in run order: the rate sweeps ``peak_to_trough``× and back; on/off bursts whose on
#: rate is ``peak_to_trough``× the off rate; a steady Poisson stream. All of the same mean rate.
TRACE_NAMES = ("diurnal", "bursty", "steady")
#: The policies' kinds. ``static`` is each configuration of the grid.
STATIC, TRITON_LIKE, LATENCY_ADAPTIVE, ADAPTIVE = "static", "triton_like", "latency_adaptive", "adaptive"
NAMED_POLICIES = (TRITON_LIKE, LATENCY_ADAPTIVE, ADAPTIVE)
ENERGY_SOURCES = ("auto", "nvml", "rapl", "estimate", "synthetic")
#: Triton's starting queue delay: its docs' example ``max_queue_delay_microseconds: 100`` (docs/adaptive.md).
TRITON_MAX_WAIT_MS = 0.1
#: The sizes an offline profile measures for the simulator (capped at the largest size served).
PROFILE_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


class AdaptiveError(LabError):
    """Settings the study cannot run with; the message names the value."""


@dataclass(frozen=True)
class AdaptiveSettings:
    """Everything the study depends on (written to ``settings.json``: a resumed run must match)."""

    models: tuple[str, ...] = field(
        default=("digits_cnn", "shufflenet_v2_x0_5"), metadata={"help": "models, comma-separated"}
    )
    slo_p99_ms: float = field(default=500.0, metadata={"help": "the p99 latency objective (ms)"})
    batch_sizes: tuple[int, ...] = field(
        default=(4, 16, 64), metadata={"help": "the static grid's max_batch_size values"}
    )
    max_waits_ms: tuple[float, ...] = field(
        default=(10.0, 50.0, 200.0), metadata={"help": "the static grid's max_wait_ms values"}
    )
    triton_max_wait_ms: float = field(
        default=TRITON_MAX_WAIT_MS,
        metadata={"help": "the Triton-like baseline's queue delay (its max batch: the grid's largest)"},
    )
    traces: tuple[str, ...] = field(
        default=TRACE_NAMES, metadata={"help": f"traces to run, of {', '.join(TRACE_NAMES)}"}
    )
    mean_rate: float = field(default=16.0, metadata={"help": "every trace's mean rate (req/s)"})
    peak_to_trough: float = field(
        default=10.0, metadata={"help": "diurnal peak ÷ trough, and bursty on-rate ÷ off-rate"}
    )
    duration_s: float = field(default=120.0, metadata={"help": "every trace's length (s)"})
    burst_mean_s: float = field(
        default=15.0, metadata={"help": "bursty: mean length of an on and of an off phase (s)"}
    )
    seed: int = field(default=0, metadata={"help": "the traces' seed (the same for every policy)"})
    window_s: float = field(default=10.0, metadata={"help": "violation windows' length (s)"})
    min_window_requests: int = field(
        default=20, metadata={"help": "a window with fewer requests is not judged"}
    )
    step_ratio: float = field(
        default=3.0,
        metadata={"help": "a window with this many times its predecessor's arrivals starts a step"},
    )
    device: str = field(default="cpu", metadata={"help": "the servers' --device"})
    torch_threads: int = field(default=1, metadata={"help": "the servers' --torch-threads"})
    energy_source: str = field(
        default="auto", metadata={"help": f"the servers' --energy-source, of {', '.join(ENERGY_SOURCES)}"}
    )
    max_queue: int = field(default=1024, metadata={"help": "the servers' --max-queue"})
    weights: str | None = field(
        default=None, metadata={"help": "weights for every model (None: embedded digits_cnn, else random)"}
    )
    simulate: bool = field(
        default=True, metadata={"help": "profile each model offline and simulate every run beside it"}
    )
    profile_repeats: int = field(default=5, metadata={"help": "the offline profile's timed batches per size"})
    profile_min_time_s: float = field(
        default=1.0, metadata={"help": "the offline profile's least timed seconds per size"}
    )

    def __post_init__(self) -> None:
        _check_unique("models", self.models)
        _check_unique("batch sizes", self.batch_sizes)
        _check_unique("max waits", self.max_waits_ms)
        _check_unique("traces", self.traces)
        for size in self.batch_sizes:
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 4096:
                raise AdaptiveError(f"batch size {size!r} is not an integer in 1..4096")
        for wait in (*self.max_waits_ms, self.triton_max_wait_ms):
            if not (math.isfinite(wait) and 0 <= wait <= 60_000):
                raise AdaptiveError(f"max wait {wait:g} ms is outside 0..60000")
        unknown = [t for t in self.traces if t not in TRACE_NAMES]
        if unknown:
            raise AdaptiveError(f"unknown trace {unknown[0]!r}; valid: {', '.join(TRACE_NAMES)}")
        _positive("slo_p99_ms", self.slo_p99_ms)
        _positive("mean_rate", self.mean_rate)
        _positive("duration_s", self.duration_s)
        _positive("burst_mean_s", self.burst_mean_s)
        _positive("window_s", self.window_s)
        _positive("profile_min_time_s", self.profile_min_time_s)
        if not (math.isfinite(self.peak_to_trough) and self.peak_to_trough >= 1):
            raise AdaptiveError(f"peak_to_trough must be ≥ 1, got {self.peak_to_trough!r}")
        if not (math.isfinite(self.step_ratio) and self.step_ratio > 1):
            raise AdaptiveError(f"step_ratio must be > 1, got {self.step_ratio!r}")
        for name in ("min_window_requests", "torch_threads", "max_queue", "profile_repeats"):
            if getattr(self, name) < 1:
                raise AdaptiveError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.seed < 0:
            raise AdaptiveError(f"seed must be ≥ 0, got {self.seed}")
        if self.energy_source not in ENERGY_SOURCES:
            raise AdaptiveError(
                f"unknown energy source {self.energy_source!r}; valid: {', '.join(ENERGY_SOURCES)}"
            )

    def fingerprint(self) -> dict[str, Any]:
        """The settings as JSON values (tuples as lists), for ``settings.json``."""
        document: dict[str, Any] = json_ready(dataclasses.asdict(self))
        return document


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _check_unique(what: str, values: tuple[Any, ...]) -> None:
    if not values:
        raise AdaptiveError(f"no {what} given")
    if len(set(values)) != len(values):
        raise AdaptiveError(f"a value is listed twice in the {what}: {', '.join(map(str, values))}")


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise AdaptiveError(f"{name} must be a finite number > 0, got {value!r}")


#: ``--quick``: one model, traces of a few seconds, two static configurations and the three named
#: policies; windows of 1 s. Flags given with ``--quick`` override these.
QUICK: dict[str, Any] = {
    "models": ("digits_cnn",),
    "batch_sizes": (8,),
    "max_waits_ms": (5.0, 50.0),
    "mean_rate": 12.0,
    "duration_s": 3.0,
    "burst_mean_s": 1.0,
    "window_s": 1.0,
    "min_window_requests": 3,
    "profile_repeats": 2,
    "profile_min_time_s": 0.05,
}


def settings_from(given: dict[str, Any], *, quick: bool = False) -> AdaptiveSettings:
    """The settings: the defaults (or :data:`QUICK`'s with ``quick``), then the ``given`` values."""
    return AdaptiveSettings(**{**(QUICK if quick else {}), **given})


@dataclass(frozen=True)
class Policy:
    """One way of batching one run: a static configuration (``max_batch_size`` and ``max_wait_ms``),
    or a named policy (the Triton-like one is static too; the adaptive ones get the objective)."""

    kind: str
    max_batch_size: int | None = None
    max_wait_ms: float | None = None

    @property
    def key(self) -> str:
        """``static-b16-w50`` for a grid configuration, else the kind (``adaptive``)."""
        if self.kind == STATIC:
            return f"static-b{self.max_batch_size}-w{self.max_wait_ms:g}"
        return self.kind

    @property
    def batching(self) -> str:
        """The server's ``--batching``."""
        return {ADAPTIVE: "adaptive", LATENCY_ADAPTIVE: "latency-adaptive"}.get(self.kind, "static")


def policies(settings: AdaptiveSettings) -> list[Policy]:
    """The grid's static configurations, then the Triton-like, latency-adaptive and adaptive policies."""
    grid = [Policy(STATIC, size, wait) for size in settings.batch_sizes for wait in settings.max_waits_ms]
    triton = Policy(TRITON_LIKE, max(settings.batch_sizes), settings.triton_max_wait_ms)
    return [*grid, triton, Policy(LATENCY_ADAPTIVE), Policy(ADAPTIVE)]


def check_models(settings: AdaptiveSettings) -> None:
    """:class:`AdaptiveError` unless every model is one greenserve can serve (the server's check)."""
    from service.errors import ConfigurationError
    from service.model import check_model_name

    for model in settings.models:
        try:
            check_model_name(model)
        except ConfigurationError as exc:
            raise AdaptiveError(str(exc)) from None


def weights_for(model: str, settings: AdaptiveSettings) -> str | None:
    """The user's weights, else embedded (digits_cnn) or random (energy needs no trained weights)."""
    if settings.weights is not None:
        return settings.weights
    return None if model in ("digits_cnn", "noop") or ":" in model else "random"
