"""The server's state object: one per app, no module-level globals (the uvicorn habit)."""

from __future__ import annotations

import enum
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from energy import EnergyMeter, EnergySampler
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
    meter: EnergyMeter
    sampler: EnergySampler
    engine: InferenceEngine
    batcher: Batcher[torch.Tensor, ItemResult]
    phase: Phase = Phase.STARTING
    failure: str | None = None
    started_at: float = field(default=0.0)

    def begin_draining(self) -> None:
        """Mark the server as draining; safe to call from a signal handler (an attribute write)."""
        self.phase = Phase.DRAINING
