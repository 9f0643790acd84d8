"""The serving benchmark's settings and plan: what a run measures, in which order, and how long it takes.

:class:`BenchSettings` is the whole configuration (its fields are the command's flags, through
:mod:`studies.kit.flags`, and it is written to the JSON file with the results); :func:`plan` turns
it into the list of :class:`Step` that :mod:`studies.serving.run` measures; :func:`estimate_s`
says roughly how long that takes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from studies.kit.errors import LabError

DEFAULT_OUT = Path("results/bench-serving.json")
DEFAULT_MODELS = ("resnet18", "shufflenet_v2_x0_5")
DEFAULT_BATCH_SIZES = (1, 4, 16)
DEFAULT_DURATION_S = 10.0
DEFAULT_WARMUP_S = 3.0
QUICK_MODELS = ("shufflenet_v2_x0_5",)
QUICK_BATCH_SIZES = (1, 4)
QUICK_DURATION_S = 2.0
QUICK_WARMUP_S = 1.0
#: What ``--quick`` changes, for the settings not given explicitly (explicit flags still win).
QUICK_SETTINGS: dict[str, object] = {
    "models": QUICK_MODELS,
    "batch_sizes": QUICK_BATCH_SIZES,
    "duration_s": QUICK_DURATION_S,
    "warmup_s": QUICK_WARMUP_S,
}
#: Rough costs per step (model loading, server start and stop, the quiet check), for the estimate.
_OVERHEAD_ESTIMATE_S = {"served": 8.0, "bare": 4.0, "offline": 1.5, "pipeline": 1.5}


@dataclass(frozen=True)
class Target:
    """What a served model should reach relative to its offline figures (per batch size)."""

    min_throughput_ratio: float
    max_energy_ratio: float


#: Models with targets; the others are reported without a verdict.
SERVED_TARGETS: dict[str, Target] = {"resnet18": Target(min_throughput_ratio=0.95, max_energy_ratio=1.10)}


@dataclass(frozen=True)
class PipelineTarget:
    """What a served model should reach relative to the offline pipeline (decode + preprocess +
    model on the same cores) at the largest batch size: throughput, and server CPU-s per request."""

    min_throughput_ratio: float
    max_cpu_ratio: float


#: Light models, where the serving path is a large share of a request (issue 17).
PIPELINE_TARGETS: dict[str, PipelineTarget] = {
    "shufflenet_v2_x0_5": PipelineTarget(min_throughput_ratio=0.90, max_cpu_ratio=1.15)
}
#: greenserve noop ÷ bare FastAPI throughput should reach at least this.
NOOP_MIN_RATIO = 0.80
#: A point during which other processes kept this many cores busy is flagged as contended.
CONTENDED_CORES = 0.25


def default_torch_threads() -> int:
    """CPUs - 1 (at least 1): one core stays free for the server's event loop and decode threads
    and for the load client, which the offline loop does not need. With every core given to torch,
    the served side pays for that contention twice (OpenMP threads wait for each other while one
    of them is descheduled), and the ratio measures the client as much as the server."""
    return max(1, (os.cpu_count() or 1) - 1)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class BenchSettings:
    """Everything a run depends on; written to the JSON file with the results (field order kept)."""

    models: tuple[str, ...] = field(default=DEFAULT_MODELS, metadata=_help("comma-separated model names"))
    batch_sizes: tuple[int, ...] = field(
        default=DEFAULT_BATCH_SIZES,
        metadata=_help("comma-separated, the offline batch and served max batch sizes"),
    )
    duration_s: float = field(default=DEFAULT_DURATION_S, metadata=_help("measured period per point"))
    warmup_s: float = field(default=DEFAULT_WARMUP_S, metadata=_help("warm-up per point"))
    torch_threads: int = field(
        default_factory=default_torch_threads,
        metadata=_help("torch intra-op threads, offline and served; by default CPUs - 1, at least 1"),
    )
    max_wait_ms: float = field(default=5.0, metadata=_help("server max_wait_ms"))
    decode_workers: int | None = field(
        default=None, metadata=_help("server (and bare app) decode threads; none: greenserve's default")
    )
    concurrency: int | None = field(
        default=None, metadata=_help("in-flight requests; none: 2 × max batch size + 2")
    )
    noop_batch_size: int = field(default=16, metadata=_help("max batch of the no-op server"))
    overhead: bool = field(default=True, metadata=_help("measure the no-op overhead"))
    pipeline: bool = field(
        default=True,
        metadata=_help(
            "measure the offline pipeline (decode + preprocess in the decode threads, the model in "
            "another, overlapped) at each model's largest batch size"
        ),
    )
    protocols: bool = field(
        default=True,
        metadata=_help(
            "measure the Open Inference Protocol (v2 infer, binary, one image per request) against "
            "/classify multipart, the last model at the largest batch size"
        ),
    )
    quiet_wait_s: float = field(
        default=10.0,
        metadata=_help("before each point, wait up to this long for other processes to go quiet (0: off)"),
    )
    images: int = field(default=32, metadata=_help("distinct JPEGs"))
    seed: int = field(default=0, metadata=_help("seed of the generated JPEGs"))
    quick: bool = field(
        default=False,
        metadata=_help(
            f"smoke test: {','.join(QUICK_MODELS)}, batch sizes {','.join(map(str, QUICK_BATCH_SIZES))}, "
            f"{QUICK_DURATION_S:g} s per point (explicit flags still win)"
        ),
    )
    out: str = field(default=str(DEFAULT_OUT), metadata=_help("JSON results"))

    def __post_init__(self) -> None:
        if not self.models:
            raise LabError("--models: empty list")
        if not self.batch_sizes:
            raise LabError("--batch-sizes: empty list")
        for name, value in (
            ("--batch-sizes", min(self.batch_sizes)),
            ("--torch-threads", self.torch_threads),
            ("--decode-workers", self.decode_workers),
            ("--concurrency", self.concurrency),
            ("--noop-batch-size", self.noop_batch_size),
            ("--images", self.images),
        ):
            if value is not None and value < 1:
                raise LabError(f"{name} must be >= 1, got {value}")
        if not self.duration_s > 0:
            raise LabError(f"--duration-s must be > 0, got {self.duration_s:g}")
        if not self.warmup_s >= 0:
            raise LabError(f"--warmup-s must be >= 0, got {self.warmup_s:g}")

    def concurrency_for(self, max_batch_size: int) -> int:
        return self.concurrency or 2 * max_batch_size + 2

    def with_quick_defaults(self, given: set[str]) -> BenchSettings:
        """With ``quick``, the smoke run's models, batch sizes and times for the fields not in ``given``."""
        if not self.quick:
            return self
        return dataclasses.replace(self, **{k: v for k, v in QUICK_SETTINGS.items() if k not in given})  # type: ignore[arg-type]


StepKind = Literal["offline", "pipeline", "served", "bare"]
#: How a served step's requests are sent: ``raw`` (POST /classify, the JPEG as the body),
#: ``multipart`` (POST /classify, a form with the file, as curl -F and browsers send it), ``v2``
#: (the Open Inference Protocol's infer, the JPEG as a BYTES element in the binary extension, as
#: tritonclient.http sends it).
Protocol = Literal["raw", "multipart", "v2"]


@dataclass(frozen=True)
class Step:
    """One measured point: offline predict, a greenserve server, or the bare app (``half``: which
    half of a point measured in two halves around another, 0 for a whole point)."""

    kind: StepKind
    model: str
    batch_size: int
    half: int = 0
    protocol: Protocol = "raw"

    def label(self) -> str:
        what = {
            "offline": "offline",
            "pipeline": "offline pipeline",
            "served": "served",
            "bare": "bare FastAPI",
        }[self.kind]
        if self.protocol != "raw":
            what += {"multipart": " /classify multipart", "v2": " v2 infer binary"}[self.protocol]
        size = "batch" if self.kind in ("offline", "pipeline") else "max batch"
        part = f", half {self.half}/2" if self.half else ""
        name = what if self.kind == "bare" else f"{self.model} {what}"
        return f"{name} ({size} {self.batch_size}{part})"


def plan(settings: BenchSettings) -> list[Step]:
    """The steps of a run, in order. Each served point sits between the two halves of its offline
    point, so a drift of the machine's speed (other tenants, a neighbour on the same physical core,
    thermals) hits both sides of a ratio alike."""
    steps: list[Step] = []
    largest = max(settings.batch_sizes)
    for model in settings.models:
        for size in settings.batch_sizes:
            # The offline pipeline (decode + preprocess + model) brackets the served point too, at
            # the largest batch size: its targets are the serving path's (issue 17).
            inner = settings.pipeline and size == largest and model != "noop"
            steps += [
                Step("offline", model, size, half=1),
                *([Step("pipeline", model, size, half=1)] if inner else []),
                Step("served", model, size),
                *([Step("pipeline", model, size, half=2)] if inner else []),
                Step("offline", model, size, half=2),
            ]
    if settings.protocols:
        # The Open Inference Protocol between two halves of /classify multipart, same server settings.
        model, size = settings.models[-1], max(settings.batch_sizes)
        steps += [
            Step("served", model, size, half=1, protocol="multipart"),
            Step("served", model, size, protocol="v2"),
            Step("served", model, size, half=2, protocol="multipart"),
        ]
    if settings.overhead:
        # The bare app brackets greenserve's no-op server the same way.
        steps += [
            Step("bare", "bare", settings.noop_batch_size, half=1),
            Step("served", "noop", settings.noop_batch_size),
            Step("bare", "bare", settings.noop_batch_size, half=2),
        ]
    return steps


def estimate_s(steps: Sequence[Step], settings: BenchSettings) -> float:
    """A rough wall-clock estimate of a run (model loading and server start-up guessed)."""
    total = 0.0
    for step in steps:
        share = 0.5 if step.half else 1.0
        warmup_s = settings.warmup_s * share if step.kind in ("offline", "pipeline") else settings.warmup_s
        total += _OVERHEAD_ESTIMATE_S[step.kind] + warmup_s + settings.duration_s * share
    return total
