"""The sweep's settings: the grid of batching configurations, what is fixed across it, and the trace
generated when none is given. Flags are generated from these dataclasses (:mod:`studies.sweep.cli`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from loadgen.errors import GridError

GREEDY = "greedy"
#: The study's batch sizes, and the greedy mode.
DEFAULT_BATCH_SIZES: tuple[str, ...] = ("16", "32", "64", "128", GREEDY)
DEFAULT_MAX_WAITS_MS: tuple[float, ...] = (200.0, 1000.0)
DEFAULT_MODELS: tuple[str, ...] = ("digits_cnn", "shufflenet_v2_x0_5")
#: The study's request stream: 16 req/s ± 20 % for 30 s.
DEFAULT_TRACE_RATE = 16.0
DEFAULT_TRACE_JITTER = 0.2
DEFAULT_TRACE_DURATION_S = 30.0
#: Greedy mode's max_batch_size when the grid has no integer size.
DEFAULT_GREEDY_MAX_BATCH_SIZE = 128
ENERGY_SOURCES = ("auto", "nvml", "rapl", "estimate", "synthetic")


@dataclass(frozen=True)
class SweepSettings:
    """The grid and what is fixed across it (checked by :func:`configurations`)."""

    models: tuple[str, ...] = field(default=DEFAULT_MODELS, metadata={"help": "models, comma-separated"})
    batch_sizes: tuple[str, ...] = field(
        default=DEFAULT_BATCH_SIZES,
        metadata={"help": "max_batch_size values and/or 'greedy' (the study's sizes)"},
    )
    max_waits_ms: tuple[float, ...] = field(
        default=DEFAULT_MAX_WAITS_MS, metadata={"help": "max_wait_ms values"}
    )
    greedy_max_batch_size: int | None = field(
        default=None,
        metadata={
            "help": f"greedy mode's max_batch_size (None: the largest size, else "
            f"{DEFAULT_GREEDY_MAX_BATCH_SIZE})"
        },
    )
    max_queue: int = field(default=1024, metadata={"help": "the servers' --max-queue"})
    timeout_ms: float | None = field(
        default=None, metadata={"help": "per-request deadline sent as X-Request-Timeout-Ms"}
    )
    weights: str | None = field(
        default=None,
        metadata={"help": "weights for every model (None: embedded digits_cnn, random otherwise)"},
    )
    device: str = field(default="cpu", metadata={"help": "the servers' --device"})
    torch_threads: int = field(
        default=1,
        metadata={"help": "the servers' --torch-threads (1: the load generator gets the other core)"},
    )
    energy_source: str = field(
        default="auto",
        metadata={
            "help": "the servers' --energy-source (synthetic: a known-truth test source, not a measurement)"
        },
    )
    images: str | None = field(
        default=None, metadata={"help": "'digits', 'photos' or a directory (None: what suits the model)"}
    )
    p99_target_ms: float = field(default=500.0, metadata={"help": "p99 latency target of the recommendation"})


@dataclass(frozen=True)
class TraceSettings:
    """The trace replayed against every configuration: ``trace`` if given, else one generated into
    the results directory (the study's 16 req/s ± 20 % for 30 s), so that a sweep can be resumed."""

    trace: Path | None = field(
        default=None, metadata={"help": "a trace file (JSON Lines or CSV); None: generated into --out"}
    )
    rate: float = field(default=DEFAULT_TRACE_RATE, metadata={"help": "generated trace: requests per second"})
    jitter: float = field(
        default=DEFAULT_TRACE_JITTER, metadata={"help": "generated trace: ± fraction of the rate"}
    )
    duration_s: float = field(default=DEFAULT_TRACE_DURATION_S, metadata={"help": "generated trace: seconds"})
    seed: int = field(default=0, metadata={"help": "generated trace: seed"})

    def generated_name(self) -> str:
        """The generated trace's file name (kept: resumed sweeps find it by this name)."""
        return f"trace-jitter-{self.rate:g}rps-{self.duration_s:g}s-seed{self.seed}.jsonl"


@dataclass(frozen=True)
class SweepConfig:
    """One configuration of the grid."""

    model: str
    max_batch_size: int
    max_wait_ms: float
    greedy: bool = False

    @property
    def key(self) -> str:
        mode = GREEDY if self.greedy else f"w{self.max_wait_ms:g}"
        return f"{self.model}|b{self.max_batch_size}|{mode}"

    @property
    def label(self) -> str:
        return (
            f"greedy (b≤{self.max_batch_size})"
            if self.greedy
            else f"b{self.max_batch_size} w{self.max_wait_ms:g}ms"
        )

    @property
    def slug(self) -> str:
        """The key as a directory name."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.key)


def check_model(name: str) -> None:
    """:class:`GridError` unless ``name`` is a model greenserve can serve (the server's own check)."""
    from service.errors import ConfigurationError
    from service.model import check_model_name

    try:
        check_model_name(name)
    except ConfigurationError as exc:
        raise GridError(str(exc)) from None


def _sizes(settings: SweepSettings) -> tuple[list[int], bool]:
    """The grid's integer batch sizes, and whether it has the greedy mode."""
    if not settings.batch_sizes:
        raise GridError("no batch sizes to sweep")
    sizes: list[int] = []
    greedy = False
    for raw in settings.batch_sizes:
        text = str(raw).strip().lower()
        if text == GREEDY:
            greedy = True
            continue
        try:
            size = int(text)
        except ValueError:
            raise GridError(f"batch size {raw!r} is neither an integer nor {GREEDY!r}") from None
        if not 1 <= size <= 4096:
            raise GridError(f"batch size {size} is outside 1..4096")
        if size in sizes:
            raise GridError(f"batch size {size} is listed twice")
        sizes.append(size)
    return sizes, greedy


def _waits(settings: SweepSettings) -> list[float]:
    waits: list[float] = []
    for wait in settings.max_waits_ms:
        if not (math.isfinite(wait) and 0 <= wait <= 60_000):
            raise GridError(f"max wait {wait:g} ms is outside 0..60000")
        if wait in waits:
            raise GridError(f"max wait {wait:g} ms is listed twice")
        waits.append(wait)
    return waits


def configurations(settings: SweepSettings) -> list[SweepConfig]:
    """The grid's configurations in run order (model by model); :class:`GridError` on a bad grid."""
    if not settings.models:
        raise GridError("no models to sweep")
    sizes, greedy = _sizes(settings)
    waits = _waits(settings)
    if sizes and not waits:
        raise GridError("no max waits to sweep")
    greedy_size = settings.greedy_max_batch_size or (max(sizes) if sizes else DEFAULT_GREEDY_MAX_BATCH_SIZE)
    if not 1 <= greedy_size <= 4096:
        raise GridError(f"greedy max batch size {greedy_size} is outside 1..4096")
    if len(set(settings.models)) != len(settings.models):
        raise GridError("a model is listed twice")
    if settings.max_queue < 1:
        raise GridError(f"max queue {settings.max_queue} must be at least 1")
    if settings.p99_target_ms <= 0:
        raise GridError(f"p99 target {settings.p99_target_ms:g} ms must be positive")
    if settings.energy_source not in ENERGY_SOURCES:
        raise GridError(
            f"unknown energy source {settings.energy_source!r}; valid: {', '.join(ENERGY_SOURCES)}"
        )
    configs: list[SweepConfig] = []
    for model in settings.models:
        check_model(model)
        configs += [SweepConfig(model, size, wait) for size in sizes for wait in waits]
        if greedy:
            configs.append(SweepConfig(model, greedy_size, 0.0, greedy=True))
    return configs


def weights_for(model: str, settings: SweepSettings) -> str | None:
    """The weights to serve: the user's, else embedded (digits_cnn) or random (energy needs no weights)."""
    if settings.weights is not None:
        return settings.weights
    return None if model in ("digits_cnn", "noop") or ":" in model else "random"


def images_for(model: str, settings: SweepSettings) -> str:
    from loadgen.images import default_sample_for

    return settings.images or default_sample_for(model)
