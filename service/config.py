"""The server's one settings class (pydantic-settings, env prefix ``GREENSERVE_``).

Every field is also a ``greenserve serve --flag`` (the CLI is generated from this class, so the
two cannot drift). Validators refuse bad configuration at start-up with a message naming the
value.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.recording import TRACE_SUFFIXES

EMBEDDED_MODEL = "digits_cnn"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost, or no address at all


class Settings(BaseSettings):
    """Settings of one greenserve server process."""

    model_config = SettingsConfigDict(env_prefix="GREENSERVE_", extra="forbid", validate_default=True)

    # --- network ---
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    keep_alive_s: int = Field(
        75,
        ge=1,
        le=3600,
        description=(
            "How long an idle keep-alive connection stays open. Longer than the clients' own pool "
            "expiry (httpx 5 s), so the server never closes a connection a client is reusing."
        ),
    )

    # --- model ---
    model: str = Field(
        EMBEDDED_MODEL,
        description=(
            "Model: 'digits_cnn' (embedded default), any torchvision classification architecture "
            "(e.g. resnet18), 'noop' (no compute; measures serving overhead), or 'module:factory' "
            "returning a service.model.Classifier."
        ),
    )
    weights: str | None = Field(
        None,
        description=(
            "Weights: a file path (torch.load, weights_only), a torchvision weights name "
            "(DEFAULT, IMAGENET1K_V1; cache or download), or 'random' (benchmarking only: "
            "predictions are meaningless). Default: embedded for digits_cnn, DEFAULT otherwise."
        ),
    )
    model_runtime: Literal["torchscript", "eager"] = Field(
        "torchscript",
        description=(
            "How the model's forward runs: 'torchscript' traces it once at load (torch.jit.trace, the "
            "same kernels, checked against eager at load; falls back to eager with a warning where it "
            "does not trace) so a batch runs without taking the GIL for every op; 'eager' runs the "
            "nn.Module as it is (docs/performance.md)."
        ),
    )
    labels_file: Path | None = Field(
        None, description="Labels, one per line (or a JSON list); overrides the weights' metadata."
    )
    num_classes: int | None = Field(None, ge=1, description="Classes of a weights file (default: labels).")
    device: str = Field("cpu", description="Torch device: cpu, cuda, cuda:N, mps, or auto.")
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="torch intra-op threads (default: torch's own choice)."
    )
    cpu_affinity: Literal["auto", "off"] = Field(
        "auto",
        description=(
            "auto: on a CPU device, when torch_threads leaves CPUs free, the model thread(s) run on "
            "torch_threads CPUs of their own and the event loop and decode threads on the others, so "
            "the model never waits for a core (docs/performance.md); off: the scheduler places them."
        ),
    )
    allocator: Literal["reuse", "system"] = Field(
        "reuse",
        description=(
            "C heap policy: 'reuse' keeps freed memory so batches do not page-fault their buffers "
            "back in (glibc; see energy/allocator.py), 'system' leaves the allocator alone."
        ),
    )
    warmup: bool = Field(True, description="Run warm-up batches before reporting ready.")

    # --- batching ---
    max_batch_size: int = Field(32, ge=1, le=4096, description="Largest batch handed to the model.")
    max_wait_ms: float = Field(
        5.0, ge=0, le=60_000, description="Longest wait after a batch's first request (0: greedy)."
    )
    max_queue: int = Field(1024, ge=1, le=1_000_000, description="Queued requests before 429.")
    max_concurrent_batches: int = Field(1, ge=1, le=64, description="Batches computed at once.")
    batching: Literal["static", "adaptive", "latency-adaptive"] = Field(
        "static",
        description=(
            "Batching policy: 'static' (max_batch_size and max_wait_ms, as set), 'adaptive' (picks batch "
            "size and wait for the lowest J/request with p99 under slo_p99_ms; max_batch_size is its cap), "
            "'latency-adaptive' (waits as long as slo_p99_ms allows, ignoring energy: a baseline). "
            "docs/adaptive.md."
        ),
    )
    slo_p99_ms: float | None = Field(
        None, gt=0, le=600_000, description="The adaptive policies' p99 latency objective (ms)."
    )
    batching_profile: Path | None = Field(
        None,
        description=(
            "A 'greenserve profile' file (.json or .csv) seeding the adaptive policy's compute time and "
            "energy per batch size (it keeps learning from the batches it serves)."
        ),
    )
    default_timeout_ms: float = Field(
        30_000, gt=0, description="Deadline for a request to start computing, when the client sets none."
    )
    max_timeout_ms: float = Field(
        300_000, gt=0, description="Largest X-Request-Timeout-Ms a client may ask for."
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="On shutdown, how long to finish accepted work.")
    drain_idle_grace_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description=(
            "On shutdown, how long an idle keep-alive connection stays open, so that a request already "
            "on the wire is answered (503 draining, Connection: close) instead of meeting a closed "
            "connection; 0 closes idle connections at once."
        ),
    )

    # --- input limits ---
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest request body (413).")
    max_image_pixels: int = Field(40_000_000, ge=64, description="Largest image, width × height (413).")
    infer_max_body_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest Open Inference Protocol infer body, all its images or tensors together, after "
            "decompression (413); each image element is also held to max_body_bytes."
        ),
    )
    decode_workers: int = Field(
        min(4, os.cpu_count() or 1), ge=1, le=256, description="Threads that decode images."
    )

    # --- energy ---
    energy_source: Literal["auto", "nvml", "rapl", "estimate", "synthetic"] = Field(
        "auto",
        description=(
            "Energy source; auto tries nvml (cuda) or rapl, then estimate. 'synthetic' (only when "
            "named) is a known-truth model for testing the accounting: idle W + watts per core × CPU "
            "time, read through a slow counter (docs/energy.md)."
        ),
    )
    watts_per_core: float = Field(
        10.0, gt=0, description="estimate and synthetic: watts per fully busy core (see docs/energy.md)."
    )
    energy_sample_ms: float | None = Field(
        None,
        ge=1,
        le=1000,
        description=(
            "Energy sampler period (default: a quarter of the counter's update period, detected at "
            "start-up, 5-50 ms; 20 ms for counters that change at every read)."
        ),
    )
    synthetic_idle_w: float = Field(
        10.0, ge=0, le=10_000, description="synthetic source: idle power (W), included in its counter."
    )
    synthetic_counter_period_ms: float = Field(
        100.0, gt=0, le=10_000, description="synthetic source: how often its energy counter advances (ms)."
    )
    synthetic_read_ms: float = Field(
        4.0, ge=0, le=1000, description="synthetic source: how long one read of its counter takes (ms)."
    )

    # --- admin and logging ---
    admin_token: SecretStr | None = Field(
        None,
        description=(
            "Bearer token required by PUT /v1/batching; required to bind a non-loopback host "
            "(none, on loopback only: PUT is open)."
        ),
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description=(
            "Log format on stderr: 'text', or 'json' (JSON Lines: one object per record with time, "
            "level, logger, message and the request id where there is one)."
        ),
    )
    access_log: bool = Field(True, description="Log one structured line per request.")
    record_trace: Path | None = Field(
        None,
        description=(
            "Append each request's arrival time to this trace file (JSON Lines) so real traffic "
            "can be replayed."
        ),
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(f"device must be cpu, cuda, cuda:N, mps or auto, got {value!r}")
        return value

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must not be empty")
        return value.strip()

    @field_validator("labels_file")
    @classmethod
    def _check_labels_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"labels_file {str(value)!r} does not exist")
        return value

    @field_validator("record_trace")
    @classmethod
    def _check_record_trace(cls, value: Path | None) -> Path | None:
        # Checked here so that a typo ends start-up with exit 2 and this message; a file that still
        # cannot be opened (permissions) is reported by service.recording when the server starts.
        if value is None:
            return value
        if value.suffix.lower() not in TRACE_SUFFIXES:
            raise ValueError(
                f"record_trace {str(value)!r} must end in .jsonl or .ndjson (it is written as JSON Lines)"
            )
        if value.is_dir():
            raise ValueError(f"record_trace {str(value)!r} is a directory; give a file path")
        if not value.parent.is_dir():
            raise ValueError(f"record_trace {str(value)!r}: directory {str(value.parent)!r} does not exist")
        return value

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("admin_token is empty; give a token, or leave it unset (loopback only)")
        return value

    @model_validator(mode="after")
    def _check_admin_token_off_loopback(self) -> Settings:
        # PUT /v1/batching changes how the server serves: open only where nobody else can reach it.
        if self.admin_token is None and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address, and PUT /v1/batching would be open to "
                "anyone who can reach it: set --admin-token / GREENSERVE_ADMIN_TOKEN"
            )
        return self

    @model_validator(mode="after")
    def _check_batching(self) -> Settings:
        if self.batching != "static" and self.slo_p99_ms is None:
            raise ValueError(f"batching {self.batching!r} needs slo_p99_ms, the p99 latency objective (ms)")
        if self.batching_profile is not None and not self.batching_profile.is_file():
            raise ValueError(f"batching_profile {str(self.batching_profile)!r} does not exist")
        return self

    @model_validator(mode="after")
    def _check_timeouts(self) -> Settings:
        if self.default_timeout_ms > self.max_timeout_ms:
            raise ValueError(
                f"default_timeout_ms ({self.default_timeout_ms:g}) exceeds max_timeout_ms "
                f"({self.max_timeout_ms:g})"
            )
        return self

    def thread_heaps(self) -> bool:
        """Whether ``allocator=reuse`` gives each thread a heap of its own: where a model computes
        on the CPU (its buffers apart from the front end's); one shared heap for a no-op model or
        a GPU's (energy/allocator.py has the measurements)."""
        return self.model != "noop" and self.resolved_device().startswith("cpu")

    def resolved_device(self) -> str:
        """The torch device to use: ``auto`` becomes cuda when available, else cpu."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
