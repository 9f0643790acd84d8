"""A classification request's path, once: decode, submit to the batcher and await, compose the answer.

The route reads the body and watches the client; everything between the bytes and the answer is
here, in this order, and nowhere else:

1. **Decode** in the decode pool (:func:`service.imaging.decode_image`, then the classifier's
   ``preprocess``), the thread's CPU time measured as the request's decode energy;
2. **Submit and await**: the tensor joins a batch (:class:`service.batching.Batcher`, whose batch
   function is :meth:`service.inference.InferenceEngine.run_batch`);
3. **Answer**: labelled top classes, and the request's energy composed in its one place
   (:func:`service.request_energy.compose`).

It knows nothing of HTTP: errors are :mod:`service.errors`, turned into responses by the API layer.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from energy import CpuSpread, EnergyAccountant, StageEnergy
from service.batching import Admission, Batcher
from service.imaging import DecodeLimits, decode_image
from service.inference import InferenceEngine, ItemResult
from service.request_energy import RequestEnergy, compose


@dataclass(frozen=True, slots=True)
class Prediction:
    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    """What a request gets: the model, its top classes, batching facts and its energy."""

    model: str
    predictions: list[Prediction]
    batch_size: int
    queue_wait_s: float
    compute_s: float
    energy: RequestEnergy
    #: Where the joules come from (``nvml+rapl``-style), or ``unknown: <why>``.
    energy_source: str


class Pipeline:
    """Decode, batch and answer classification requests; owns the decode pool (see the module
    docstring). ``serving`` is the event loop's CPU time per request it began: the app replaces it
    with one created in the loop's thread, whose clock it reads."""

    def __init__(
        self,
        engine: InferenceEngine,
        batcher: Batcher[torch.Tensor, ItemResult],
        accountant: EnergyAccountant,
        limits: DecodeLimits,
        *,
        decode_workers: int,
    ) -> None:
        self.engine = engine
        self.batcher = batcher
        self.accountant = accountant
        self.limits = limits
        self.serving = CpuSpread()
        self._decode_pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="decode")

    def reserve(self) -> Admission:
        """A place in the queue before any work (the batcher's admission: 429 or 503 when refused)."""
        return self.batcher.reserve()

    async def classify(
        self, data: bytes, *, top_k: int, deadline: float, admission: Admission
    ) -> Classification:
        """Decode ``data``, compute it in a batch (computing must start by ``deadline``, a
        ``time.monotonic()`` instant) and answer with its ``top_k`` classes. Raises the errors of
        :mod:`service.errors` (bad image, queue full, deadline, model failure, draining).
        Cancelling it drops the item from the queue: it is never computed."""
        loop = asyncio.get_running_loop()
        tensor, decoded = await loop.run_in_executor(self._decode_pool, self._decode, data)
        outcome = await self.batcher.submit(tensor, deadline=deadline, admission=admission)
        item = outcome.value
        energy = compose(
            self.accountant,
            batch_model=item.batch_energy,
            batch_size=outcome.batch_size,
            decode=decoded,
            serving=self.serving,
        )
        classifier = self.engine.classifier
        labels = classifier.labels
        k = min(top_k, len(item.indices))
        return Classification(
            model=classifier.name,
            predictions=[
                Prediction(i, labels[i], s) for i, s in zip(item.indices[:k], item.scores[:k], strict=True)
            ],
            batch_size=outcome.batch_size,
            queue_wait_s=outcome.queue_wait_s,
            compute_s=item.compute_s,
            energy=energy,
            energy_source=energy.source(self.accountant.sources),
        )

    def _decode(self, data: bytes) -> tuple[torch.Tensor, StageEnergy]:
        classifier = self.engine.classifier
        # The decode thread's CPU time (since its previous decode: the pool's handling included),
        # priced at the CPU meter's J per CPU-second.
        with self.accountant.thread_work("decode", dedicated=True) as measured:
            tensor = classifier.preprocess(decode_image(data, self.limits, draft_size=classifier.draft_size))
        return tensor, measured[0]

    def close(self) -> None:
        """Stop the decode pool (after the batcher's drain; requests still decoding are dropped)."""
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
