"""The server's state object: one per app, no module-level globals (the uvicorn habit)."""

from __future__ import annotations

import enum
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from energy import CpuSpread, EnergyAccountant, EnergyMeter
from service.batching import Batcher
from service.config import Settings
from service.imaging import DecodeLimits
from service.inference import InferenceEngine, ItemResult
from service.metrics import Metrics
from service.pipeline import Pipeline


class Phase(enum.Enum):
    STARTING = "starting"  # model loaded, warming up: /readyz 503, /classify 503 not_ready
    READY = "ready"
    DRAINING = "draining"  # shutdown began: /readyz 503, /classify 503 draining
    FAILED = "failed"  # warm-up failed: /readyz 503 with the reason


@dataclass
class DrainTally:
    """Responses finished once the drain began: by HTTP status, and whether each was written (False:
    the client's connection was gone, so the answer never left the server)."""

    responses: Counter[tuple[int, bool]] = field(default_factory=Counter)

    def add(self, status: int, written: bool) -> None:
        self.responses[(status, written)] += 1

    def summary(self) -> str:
        """E.g. ``231 answered (200: 224, 503: 7), 0 could not be written``."""
        answered: Counter[int] = Counter()
        for (status, written), n in self.responses.items():
            if written:
                answered[status] += n
        by_status = ", ".join(f"{status}: {n}" for status, n in sorted(answered.items()))
        unwritten = sum(n for (_, written), n in self.responses.items() if not written)
        return (
            f"{sum(answered.values())} answered ({by_status or 'none'}), "
            f"{unwritten} could not be written (connection gone)"
        )


@dataclass
class ServerState:
    settings: Settings
    metrics: Metrics
    pipeline: Pipeline
    phase: Phase = Phase.STARTING
    failure: str | None = None
    started_at: float = field(default=0.0)
    #: ``time.monotonic()`` by which the drain must be over; set once, when draining begins.
    drain_deadline: float | None = None
    drain: DrainTally = field(default_factory=DrainTally)

    @property
    def engine(self) -> InferenceEngine:
        return self.pipeline.engine

    @property
    def batcher(self) -> Batcher[torch.Tensor, ItemResult]:
        return self.pipeline.batcher

    @property
    def accountant(self) -> EnergyAccountant:
        return self.pipeline.accountant

    @property
    def limits(self) -> DecodeLimits:
        return self.pipeline.limits

    @property
    def serving(self) -> CpuSpread:
        """The event loop's CPU time per request it began (every route's requests count)."""
        return self.pipeline.serving

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

    def observe_response(self, status: int, written: bool) -> None:
        """A response finished (written to its connection or not); counted while draining."""
        if self.phase is Phase.DRAINING:
            self.drain.add(status, written)
            self.metrics.observe_drain_response(status, written)

    def drain_remaining_s(self) -> float:
        """Seconds left until the drain deadline, at least 0 (all of ``drain_timeout_s`` before
        draining began)."""
        if self.drain_deadline is None:
            return self.settings.drain_timeout_s
        return max(0.0, self.drain_deadline - time.monotonic())
