"""The server's state object: one per app, no module-level globals (the uvicorn habit)."""

from __future__ import annotations

import enum
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from energy import CpuSpread, EnergyAccountant, EnergyMeter
from service.batching import Batcher
from service.config import Settings
from service.imaging import DecodeLimits
from service.inference import InferenceEngine, ItemResult
from service.metrics import Metrics


class Phase(enum.Enum):
    STARTING = "starting"  # model loaded, warming up: /readyz 503, /classify 503 not_ready
    READY = "ready"
    DRAINING = "draining"  # shutdown began: /readyz 503, /classify 503 draining
    FAILED = "failed"  # warm-up failed: /readyz 503 with the reason


@dataclass
class ServerState:
    settings: Settings
    metrics: Metrics
    limits: DecodeLimits
    decode_pool: ThreadPoolExecutor
    accountant: EnergyAccountant
    serving: CpuSpread  # the event loop's CPU time per request it finished
    engine: InferenceEngine
    batcher: Batcher[torch.Tensor, ItemResult]
    phase: Phase = Phase.STARTING
    failure: str | None = None
    started_at: float = field(default=0.0)
    #: ``time.monotonic()`` by which the drain must be over; set once, when draining begins.
    drain_deadline: float | None = None

    @property
    def meter(self) -> EnergyMeter:
        """The meter of the model's device (the accelerator's when there is one)."""
        return self.accountant.samplers[0].meter

    def begin_draining(self) -> None:
        """Mark the server as draining and fix the drain's one deadline, ``drain_timeout_s`` from
        the first call; safe to call from a signal handler (attribute writes)."""
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.settings.drain_timeout_s
        self.phase = Phase.DRAINING

    def drain_remaining_s(self) -> float:
        """Seconds left until the drain deadline, at least 0 (all of ``drain_timeout_s`` before
        draining began)."""
        if self.drain_deadline is None:
            return self.settings.drain_timeout_s
        return max(0.0, self.drain_deadline - time.monotonic())
