"""Runs batches on the classifier and measures the model part of their energy.

This is the glue between the generic :class:`~service.batching.Batcher` and a
:class:`~service.model.Classifier`: ``run_batch`` executes one batch in the model's worker thread
inside :meth:`energy.EnergyAccountant.batch_work`, which stamps the batch's start and end and its
threads' CPU time (no meter is read here). Each item carries the whole batch's model energy; a
request's share of it, with its decode and serving parts, is composed in one place
(:func:`service.request_energy.compose`, docs/energy.md, the attribution model).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from energy import EnergyAccountant, StageEnergy
from energy.cpuclock import unnamed_foreign_threads
from service.affinity import CorePlan, pin_other_threads, pin_this_thread
from service.errors import ModelError
from service.model import Classifier

logger = logging.getLogger(__name__)

#: Every batch returns this many top classes per item; a request slices its own ``top_k``.
MAX_TOP_K = 100
#: How long a model thread waits at warm-up for the others to start before giving up.
WARM_UP_BARRIER_S = 60.0


@dataclass(frozen=True)
class ItemResult:
    """One item of a batch: its top classes, and the batch's compute time and model energy (the
    whole batch's, shared among its items by :func:`service.request_energy.compose`)."""

    indices: list[int]
    scores: list[float]
    compute_s: float
    batch_energy: StageEnergy
    #: Every class's probability (a row of the batch's output; the Open Inference Protocol's scores).
    probabilities: torch.Tensor


class InferenceEngine:
    """Owns the model worker thread(s) and turns a batch of input tensors into item results."""

    def __init__(
        self,
        classifier: Classifier,
        accountant: EnergyAccountant,
        *,
        workers: int = 1,
        cores: CorePlan | None = None,
    ) -> None:
        self.classifier = classifier
        self.cores = cores
        self.accountant = accountant
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
        if self.cores is not None:
            # Before the model threads exist: every thread now (the event loop, the sampler, ...)
            # and every thread they start later (the decode pool) runs on the front end's CPUs;
            # each model thread moves itself to the model's (service.affinity).
            pin_other_threads(self.cores.front)
            logger.info("CPU affinity: %s", self.cores.describe())
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
        self.share_pool_threads()

    def share_pool_threads(self) -> None:
        """Count the threads Python did not start (torch's intra-op pool, which warm-up created) as
        model work shared by the batches running while they run (energy.accounting)."""
        pool = unnamed_foreign_threads()
        self.accountant.share_threads(pool)
        if pool:
            logger.info("model energy includes %d thread(s) outside Python (torch's pool)", len(pool))

    def _warm_up_thread(self, batch_sizes: tuple[int, ...], barrier: threading.Barrier) -> None:
        if self.cores is not None:
            # First, so that torch's intra-op workers, started by this thread's first batch,
            # inherit the model's CPUs.
            pin_this_thread(self.cores.model)
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
        # Stamps and CPU clocks only: a meter read here (4 ms on NVML) would cap a server that
        # computes batches of one at ~125 batches/s; the energy comes from the sampler's curve.
        # The model threads do nothing else, so each batch is charged with its thread's CPU time
        # since the previous batch ended (the executor's handling of the job included).
        t0 = time.monotonic()
        with self.accountant.batch_work("model", dedicated=True) as measured:
            probs = self.classifier.predict(batch)
            if (
                probs.ndim != 2
                or probs.shape[0] != len(batch)
                or probs.shape[1] != len(self.classifier.labels)
            ):
                raise ModelError(
                    f"model output has shape {tuple(probs.shape)} for a batch of {len(batch)} "
                    f"and {len(self.classifier.labels)} labels"
                )
            scores, indices = probs.topk(self._top, dim=1)
            rows = list(zip(indices.tolist(), scores.tolist(), strict=True))
            compute_s = time.monotonic() - t0
        return [
            ItemResult(idx, sc, compute_s, measured[0], row)
            for (idx, sc), row in zip(rows, probs, strict=True)
        ]

    def run_batch(self, batch: list[torch.Tensor]) -> asyncio.Future[list[ItemResult]]:
        """The batcher's batch function: hands the batch to the worker thread *now* and returns
        the future of its results (failures become ModelError). Not a coroutine, so the batch is
        submitted when the batcher calls this, not a turn of the event loop later when it awaits."""
        return asyncio.get_running_loop().run_in_executor(self._executor, self._compute_or_fail, batch)

    def _compute_or_fail(self, batch: list[torch.Tensor]) -> list[ItemResult]:
        try:
            return self._compute(batch)
        except ModelError:
            raise
        except Exception as exc:
            logger.exception("model %s failed on a batch of %d", self.classifier.name, len(batch))
            raise ModelError(f"model failed on this batch: {exc.__class__.__name__}: {exc}") from exc
