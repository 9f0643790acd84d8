"""A classification request's path, once: decode, submit to the batcher and await, compose the answer.

The route reads the body and watches the client; everything between the bytes and the answer is
here, in this order, and nowhere else:

1. **Decode** in the decode pool (:func:`service.imaging.decode_image`, then the classifier's
   ``preprocess``), the thread's CPU time measured as the request's decode energy;
2. **Submit and await**: the tensor joins a batch (:class:`service.batching.Batcher`, whose batch
   function is :meth:`service.inference.InferenceEngine.run_batch`);
3. **Answer**: labelled top classes, and the request's energy composed in its one place
   (:func:`service.request_energy.compose`).

``classify`` answers one image (``/classify``); ``infer`` answers several, given as encoded images or
as tensors the client preprocessed (the Open Inference Protocol): each is an item of its own in the
batcher, so the images of one request may share batches with each other and with other requests,
and each item's energy is composed the same way (the request's serving share split among its items).

It knows nothing of HTTP: errors are :mod:`service.errors`, turned into responses by the API layer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

from energy import CpuSpread, EnergyAccountant, StageEnergy
from service.batching import Admission, Batcher, Outcome
from service.imaging import DecodeLimits, decode_image
from service.inference import InferenceEngine, ItemResult
from service.request_energy import RequestEnergy, compose, total

T = TypeVar("T")


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


@dataclass(frozen=True)
class Inference:
    """What an infer request gets: every item's class probabilities (rows in the request's order),
    the batch each item was computed in, and the energy of all its items."""

    model: str
    probabilities: torch.Tensor
    batch_sizes: list[int]
    energy: RequestEnergy
    energy_source: str

    @property
    def images(self) -> int:
        return len(self.batch_sizes)


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
        outcome, energy = await self._compute(tensor, decoded, deadline, admission, request_items=1)
        item = outcome.value
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

    @functools.cached_property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one preprocessed item (``C, H, W``): what a client that preprocesses sends."""
        classifier = self.engine.classifier
        return tuple(classifier.preprocess(classifier.example_image()).shape)

    async def infer(
        self,
        *,
        images: Sequence[bytes] | None = None,
        tensors: torch.Tensor | None = None,
        deadline: float,
        admissions: Sequence[Admission],
    ) -> Inference:
        """Classify several items, given as encoded ``images`` (decoded as ``classify`` does) or as
        preprocessed ``tensors`` (``N × item_shape``), one admission each. Every item is submitted to
        the batcher on its own; the first failure (a bad image: before any is queued) is raised and
        the other items are cancelled (they leave the queue uncomputed), as is everything when this
        is cancelled."""
        loop = asyncio.get_running_loop()
        if images is not None:
            decoded = await _all(
                [loop.run_in_executor(self._decode_pool, self._decode, data) for data in images]
            )
        elif tensors is not None:
            decoded = [(row, StageEnergy("decode")) for row in tensors.unbind(0)]
        else:
            raise ValueError("infer needs images or tensors")
        if len(decoded) != len(admissions):
            raise ValueError(f"{len(decoded)} items but {len(admissions)} admissions")
        items = len(decoded)
        answers = await _all(
            [
                self._compute(tensor, energy, deadline, admission, request_items=items)
                for (tensor, energy), admission in zip(decoded, admissions, strict=True)
            ]
        )
        energy = total([e for _, e in answers])
        return Inference(
            model=self.engine.classifier.name,
            probabilities=torch.stack([outcome.value.probabilities for outcome, _ in answers]),
            batch_sizes=[outcome.batch_size for outcome, _ in answers],
            energy=energy,
            energy_source=energy.source(self.accountant.sources),
        )

    async def _compute(
        self,
        tensor: torch.Tensor,
        decoded: StageEnergy,
        deadline: float,
        admission: Admission,
        *,
        request_items: int,
    ) -> tuple[Outcome[ItemResult], RequestEnergy]:
        """One item through the batcher, and its energy (its request's serving share split among
        ``request_items``)."""
        outcome = await self.batcher.submit(tensor, deadline=deadline, admission=admission)
        item = outcome.value
        energy = compose(
            self.accountant,
            batch_model=item.batch_energy,
            batch_size=outcome.batch_size,
            decode=decoded,
            serving=self.serving,
            request_items=request_items,
        )
        return outcome, energy

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


async def _all(work: Sequence[Awaitable[T]]) -> list[T]:
    """Every result, in order; on the first failure the rest is cancelled (and awaited) and that
    failure raised; cancelled itself, it cancels them all."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = next(
            (t for t in tasks if t in done and not t.cancelled() and t.exception() is not None), None
        )
        if failed is not None:
            raise failed.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
    finally:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
