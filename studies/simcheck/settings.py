"""The simulator check's settings: which models, which grid of batching configurations, which traces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from studies.kit.errors import LabError
from studies.sweep.settings import SweepSettings

DEFAULT_OUT = Path("results/bench-sim")
DEFAULT_MODELS = ("digits_cnn", "shufflenet_v2_x0_5")
#: Configurations per model: (max_batch_size, max_wait_ms); "greedy" is added by the sweep.
DEFAULT_BATCH_SIZES = ("16", "64", "greedy")  # greedy is the calibration run: keep it
DEFAULT_WAITS_MS = (200.0, 1000.0)
PROFILE_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
TOLERANCE = 0.15


@dataclass(frozen=True)
class SimCheckSettings:
    """Everything the check depends on; written to ``report.json`` (paths as text)."""

    models: tuple[str, ...] = field(default=DEFAULT_MODELS, metadata={"help": "comma-separated models"})
    batch_sizes: tuple[str, ...] = field(
        default=DEFAULT_BATCH_SIZES,
        metadata={"help": "the sweeps' max_batch_size values and 'greedy' (the calibration run: keep it)"},
    )
    max_waits_ms: tuple[float, ...] = field(
        default=DEFAULT_WAITS_MS, metadata={"help": "the sweeps' max_wait_ms values"}
    )
    rate: float = field(default=16.0, metadata={"help": "mean request rate of both traces (req/s)"})
    duration_s: float = field(default=30.0, metadata={"help": "length of each trace (s)"})
    torch_threads: int = field(default=1, metadata={"help": "torch threads, profiles and servers"})
    energy_source: str = field(default="auto", metadata={"help": "energy source, profiles and servers"})
    repeats: int = field(default=10, metadata={"help": "timed repeats per batch size of a profile"})
    reuse_profiles: bool = field(default=False, metadata={"help": "use profiles already in --out"})
    tolerance: float = field(
        default=TOLERANCE, metadata={"help": "the target: |predicted ÷ measured − 1| at most this"}
    )
    out: Path = field(default=DEFAULT_OUT, metadata={"help": "results directory"})

    def __post_init__(self) -> None:
        if not self.models:
            raise LabError("--models: empty list")
        if not self.batch_sizes or not self.max_waits_ms:
            raise LabError("--batch-sizes and --max-waits-ms: give at least one value each")
        if not (self.rate > 0 and self.duration_s > 0):
            raise LabError(f"--rate and --duration-s must be > 0, got {self.rate:g}, {self.duration_s:g}")
        if self.torch_threads < 1 or self.repeats < 1:
            raise LabError(
                f"--torch-threads and --repeats must be >= 1, got {self.torch_threads}, {self.repeats}"
            )

    def sweep_settings(self) -> SweepSettings:
        """The grid each trace is swept over."""
        return SweepSettings(
            models=self.models,
            batch_sizes=self.batch_sizes,
            max_waits_ms=self.max_waits_ms,
            torch_threads=self.torch_threads,
            energy_source=self.energy_source,
        )
