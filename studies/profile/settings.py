"""The profile's settings: which model, served how, profiled at which batch sizes for how long.
Flags are generated from :class:`ProfileSettings` (:mod:`studies.profile.cli`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from energy import SOURCE_CHOICES
from energy.profile import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_MIN_TIME_S,
    DEFAULT_REPEATS,
    DEFAULT_WARMUP,
    BatchProfileError,
    check_batch_sizes,
    check_counts,
)
from loadgen.errors import ProfileError
from studies.kit.flags import DEFAULT_RESULTS

#: Images decoded (and cycled through) for the inputs and the decode cost.
DEFAULT_IMAGES = 64
#: How long a RAPL meter's idle power is measured before profiling (its price per CPU-second is
#: above idle, and RAPL alone does not know its idle draw).
DEFAULT_IDLE_S = 1.0
ALLOCATORS = ("reuse", "system")
FORMATS = (".csv", ".json")


@dataclass(frozen=True)
class ProfileSettings:
    """One model's profile; a bad value is a :class:`ProfileError` naming it."""

    model: str = field(default="digits_cnn", metadata={"help": "model, as greenserve serve --model"})
    weights: str | None = field(
        default=None,
        metadata={
            "help": "as greenserve serve --weights (None: embedded for digits_cnn, 'random' for others)"
        },
    )
    device: str = field(default="cpu", metadata={"help": "torch device: cpu, cuda, cuda:N, mps"})
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    warmup: int = field(default=DEFAULT_WARMUP, metadata={"help": "untimed batches per size"})
    repeats: int = field(default=DEFAULT_REPEATS, metadata={"help": "least timed batches per size"})
    min_time_s: float = field(
        default=DEFAULT_MIN_TIME_S,
        metadata={"help": "least timed seconds per size: a slow energy counter needs time"},
    )
    torch_threads: int | None = field(
        default=None, metadata={"help": "torch intra-op threads, as served (None: torch's choice)"}
    )
    energy_source: str = "auto"
    allocator: Literal["reuse", "system"] = "reuse"
    watts_per_core: float | None = field(
        default=None, metadata={"help": "estimate and synthetic sources only"}
    )
    idle_s: float = field(
        default=DEFAULT_IDLE_S,
        metadata={"help": "RAPL: seconds of idle power measured first, the decode priced above it"},
    )
    images: str | None = field(
        default=None,
        metadata={
            "help": "inputs: a sample set (digits, photos) or a directory (None: what suits the model)"
        },
    )
    image_count: int = field(default=DEFAULT_IMAGES, metadata={"help": "images to decode and cycle"})
    out: Path | None = field(
        default=None, metadata={"help": "profile file, .csv or .json (None: results/profile-MODEL.csv)"}
    )

    def __post_init__(self) -> None:
        """Every value checked before the model loads, which takes a while."""
        try:
            check_batch_sizes(self.batch_sizes)
            check_counts(self.warmup, self.repeats, self.min_time_s)
        except BatchProfileError as exc:
            raise ProfileError(str(exc)) from None
        if self.image_count < 1:
            raise ProfileError(f"images must be >= 1, got {self.image_count}")
        if not (math.isfinite(self.idle_s) and self.idle_s >= 0):
            raise ProfileError(f"idle_s must be a finite number >= 0, got {self.idle_s!r}")
        if self.energy_source not in SOURCE_CHOICES:
            raise ProfileError(
                f"unknown energy source {self.energy_source!r}; valid: {', '.join(SOURCE_CHOICES)}"
            )
        if self.allocator not in ALLOCATORS:
            raise ProfileError(f"unknown allocator {self.allocator!r}; valid: {', '.join(ALLOCATORS)}")
        if self.out is not None and self.out.suffix.lower() not in FORMATS:
            raise ProfileError(f"--out {self.out}: use a .csv or .json file name")

    @property
    def out_path(self) -> Path:
        return self.out or default_out(self.model)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,16,32"`` → ``(1, 16, 32)``; anything else is a :class:`ProfileError` naming the bad part."""
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            size = int(part)
        except ValueError:
            raise ProfileError(f"--batch-sizes: {part!r} is not an integer (expected e.g. 1,16,32)") from None
        if size < 1:
            raise ProfileError(f"--batch-sizes: {size} is not >= 1")
        sizes.append(size)
    if not sizes:
        raise ProfileError(f"--batch-sizes: no batch size in {text!r}")
    return tuple(sizes)


def default_out(model: str) -> Path:
    """``results/profile-<model>.csv``, the model name made safe for a file name (``module:factory``)."""
    return DEFAULT_RESULTS / f"profile-{re.sub(r'[^A-Za-z0-9_.-]+', '_', model)}.csv"
