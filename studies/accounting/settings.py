"""The energy accounting benchmark's settings: which sources, which model, how much load, how long."""

from __future__ import annotations

from dataclasses import dataclass, field

from studies.kit.errors import LabError

DEFAULT_SOURCES = ("synthetic", "estimate")
DEFAULT_DURATION_S = 10.0
#: ``--quick``: the measured window per source of a smoke run (it wins over --duration-s).
QUICK_DURATION_S = 3.0


@dataclass(frozen=True)
class AccountingSettings:
    sources: tuple[str, ...] = field(
        default=DEFAULT_SOURCES, metadata={"help": "comma-separated energy sources"}
    )
    model: str = "digits_cnn"
    weights: str | None = field(
        default=None, metadata={"help": "the servers' --weights (e.g. random for resnet50 offline)"}
    )
    device: str = field(
        default="cpu",
        metadata={
            "help": "the servers' torch device "
            "(the NVML check: --sources nvml --model resnet50 --device cuda)"
        },
    )
    clients: int = field(default=16, metadata={"help": "closed-loop clients"})
    duration_s: float = field(default=DEFAULT_DURATION_S, metadata={"help": "measured window per source"})
    max_batch_size: int = field(default=8, metadata={"help": "the servers' --max-batch-size"})
    max_wait_ms: float = field(default=2.0, metadata={"help": "the servers' --max-wait-ms"})
    quick: bool = field(default=False, metadata={"help": f"{QUICK_DURATION_S:g} s per source (a smoke run)"})

    def __post_init__(self) -> None:
        if not self.sources:
            raise LabError("--sources: empty list")
        if self.clients < 1 or self.max_batch_size < 1:
            raise LabError(
                f"--clients and --max-batch-size must be >= 1, got {self.clients}, {self.max_batch_size}"
            )
        if not self.duration_s > 0:
            raise LabError(f"--duration-s must be > 0, got {self.duration_s:g}")

    @property
    def measured_s(self) -> float:
        """The measured window per source: ``--quick``'s, else ``duration_s``."""
        return QUICK_DURATION_S if self.quick else self.duration_s
