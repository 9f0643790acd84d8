"""Runs batches on the classifier and accounts their energy.

This is the glue between the generic :class:`~service.batching.Batcher` and a
:class:`~service.model.Classifier`: ``run_batch`` executes one batch in the model's worker thread,
reads the energy of exactly that compute interval from the sampler, and splits it evenly over the
batch's requests (DESIGN.md, "Energy model"). Idle energy stays in the device totals.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from energy import EnergySampler
from service.errors import ModelError
from service.model import Classifier

logger = logging.getLogger(__name__)

#: Every batch returns this many top classes per item; a request slices its own ``top_k``.
MAX_TOP_K = 100
#: How long a model thread waits at warm-up for the others to start before giving up.
WARM_UP_BARRIER_S = 60.0


@dataclass(frozen=True)
class ItemResult:
    """One item's share of a batch: top classes, and the batch's compute time and energy share."""

    indices: list[int]
    scores: list[float]
    compute_s: float
    energy_j: float
    energy_source: str


class InferenceEngine:
    """Owns the model worker thread(s) and turns a batch of input tensors into item results."""

    def __init__(
        self,
        classifier: Classifier,
        sampler: EnergySampler,
        *,
        workers: int = 1,
        on_batch_energy: Callable[[str, float, int], None] | None = None,
    ) -> None:
        self.classifier = classifier
        self.sampler = sampler
        self._on_batch_energy = on_batch_energy
        self._workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model")
        self._top = min(MAX_TOP_K, len(classifier.labels))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run one batch of each size in every model thread, the threads that will serve.

        First calls allocate memory and pick kernels, and part of that state is the calling
        thread's own (torch's and oneDNN's thread-local scratch, the OpenMP team): warmed in another
        thread, the first served batch still paid it (a batch of 16 digits: 6.7 ms instead of
        1.7 ms, which the first batch of every measured run carried).
        """
        # One job per thread: each waits at the barrier until all have started, so no thread can
        # take two jobs while another takes none.
        barrier = threading.Barrier(self._workers)
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, self._warm_up_thread, batch_sizes, barrier)
                for _ in range(self._workers)
            )
        )

    def _warm_up_thread(self, batch_sizes: tuple[int, ...], barrier: threading.Barrier) -> None:
        barrier.wait(timeout=WARM_UP_BARRIER_S)
        example = self.classifier.preprocess(self.classifier.example_image())
        for size in sorted(set(batch_sizes)):
            started = time.perf_counter()
            probs = self.classifier.predict([example] * size)
            if probs.shape != (size, len(self.classifier.labels)):
                raise ModelError(
                    f"model output has shape {tuple(probs.shape)} for a batch of {size}; expected "
                    f"({size}, {len(self.classifier.labels)}), one score per label"
                )
            probs.topk(self._top, dim=1)
            logger.info(
                "warm-up batch of %d took %.1f ms in %s",
                size,
                (time.perf_counter() - started) * 1000,
                threading.current_thread().name,
            )

    def _compute(self, batch: list[torch.Tensor]) -> list[ItemResult]:
        # A reading at the start (as energy_between takes one at the end): for meters that read
        # instantly (estimate, rapl) the batch's energy is then exact at both edges instead of
        # interpolated over the sampler's period, which is ±(period ÷ batch time), ±15 % for a
        # 140 ms batch at 20 ms. Slow counters (NVML) are still spread by the interpolation.
        try:
            t0, _ = self.sampler.sample()
        except Exception:  # a meter that fails now is reported by the sampler; the batch goes on
            t0 = time.monotonic()
        probs = self.classifier.predict(batch)
        if probs.ndim != 2 or probs.shape[0] != len(batch) or probs.shape[1] != len(self.classifier.labels):
            raise ModelError(
                f"model output has shape {tuple(probs.shape)} for a batch of {len(batch)} "
                f"and {len(self.classifier.labels)} labels"
            )
        scores, indices = probs.topk(self._top, dim=1)
        t1 = time.monotonic()
        energy_j = self.sampler.energy_between(t0, t1)
        share = energy_j / len(batch)
        compute_s = t1 - t0
        source = self.sampler.source
        if self._on_batch_energy is not None:
            self._on_batch_energy(source, energy_j, len(batch))
        return [
            ItemResult(idx, sc, compute_s, share, source)
            for idx, sc in zip(indices.tolist(), scores.tolist(), strict=True)
        ]

    async def run_batch(self, batch: list[torch.Tensor]) -> list[ItemResult]:
        """The batcher's batch function: compute in the worker thread; failures become ModelError."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._compute, batch)
        except ModelError:
            raise
        except Exception as exc:
            logger.exception("model %s failed on a batch of %d", self.classifier.name, len(batch))
            raise ModelError(f"model failed on this batch: {exc.__class__.__name__}: {exc}") from exc
