"""The offline side of the serving benchmark: ``classifier.predict`` on preprocessed tensors in a loop,
and the offline pipeline: the same, from the JPEG bytes, decoding in a thread pool while predicting.

The model is loaded as the server loads it (same settings, same heap policy) and the images are
decoded as the server decodes them, so that the served figures differ from these by what serving
adds and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from studies.kit.machine import delta, machine_busy_cpu_s
from studies.serving.points import OfflinePoint

if TYPE_CHECKING:
    import torch

    from energy import EnergySampler
    from service.model import Classifier

#: Offline: at least this many timed batches per half point, however long they take.
MIN_OFFLINE_BATCHES = 3


def load_model(name: str, torch_threads: int) -> Classifier:
    from energy.allocator import configure_allocator
    from service.config import Settings
    from service.model import load_classifier

    settings = Settings(model=name, weights="random", torch_threads=torch_threads)
    # The server's heap policy, so both sides compare.
    configure_allocator(settings.allocator, thread_heaps=settings.thread_heaps())
    return load_classifier(settings)


def preprocess_all(classifier: Classifier, bodies: Sequence[bytes]) -> list[torch.Tensor]:
    """The model inputs of ``bodies``, decoded exactly as the server decodes them."""
    from service.imaging import DecodeLimits, decode_image

    limits = DecodeLimits()
    return [
        classifier.preprocess(decode_image(body, limits, draft_size=classifier.draft_size)) for body in bodies
    ]


def measure_offline(
    classifier: Classifier,
    inputs: Sequence[torch.Tensor],
    batch_size: int,
    sampler: EnergySampler,
    *,
    duration_s: float,
    warmup_s: float,
    half: int = 0,
) -> OfflinePoint:
    """Pure ``predict`` throughput and energy at one batch size (time-bounded, ≥ MIN_OFFLINE_BATCHES)."""
    batches = [
        [inputs[(start + i) % len(inputs)] for i in range(batch_size)]
        for start in range(0, len(inputs) * batch_size, batch_size)
    ]
    warm_until = time.monotonic() + warmup_s
    done = 0
    while done < 2 or time.monotonic() < warm_until:
        classifier.predict(batches[done % len(batches)])
        done += 1
    machine0 = machine_busy_cpu_s()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    done = 0
    while done < MIN_OFFLINE_BATCHES or time.monotonic() - t0 < duration_s:
        classifier.predict(batches[done % len(batches)])
        done += 1
    t1 = time.monotonic()
    cpu_s = time.process_time() - cpu0
    machine_s = delta(machine0, machine_busy_cpu_s())
    energy_j = sampler.energy_between(t0, t1, settle=True)  # offline: wait for the counter to cover t1
    wall_s = t1 - t0
    images = done * batch_size
    return OfflinePoint(
        model=classifier.name,
        batch_size=batch_size,
        half=half,
        batches=done,
        images=images,
        wall_s=wall_s,
        images_per_s=images / wall_s,
        energy_j=energy_j,
        energy_j_per_image=energy_j / images,
        energy_source=sampler.source,
        cpu_cores=cpu_s / wall_s,
        ms_per_batch=wall_s / done * 1000,
        other_cpu_cores=None if machine_s is None else max(0.0, machine_s - cpu_s) / wall_s,
    )


def decode_workers_default() -> int:
    """The server's own default number of decode threads (``Settings.decode_workers``)."""
    from service.config import Settings

    return Settings().decode_workers


def measure_pipeline(
    classifier: Classifier,
    bodies: Sequence[bytes],
    batch_size: int,
    sampler: EnergySampler,
    *,
    decode_workers: int,
    duration_s: float,
    warmup_s: float,
    half: int = 0,
) -> OfflinePoint:
    """What the serving path is measured against: the best offline pipeline on the same cores.

    ``decode_workers`` threads decode and preprocess (exactly as the server's decode pool: the
    same functions, the same limits) the images of the next batch while this thread predicts the
    current one, so decoding and the model overlap as they do in the server; the process's CPU time
    over the loop ÷ images is the pipeline's CPU-s per image. No HTTP, no batcher, no accounting.
    """
    import torch

    from service.affinity import allowed_cpus, pin_this_thread, plan_cores
    from service.imaging import DecodeLimits, decode_image

    limits = DecodeLimits()
    draft = classifier.draft_size
    allowed = allowed_cpus()
    # The server's own placement (service.affinity): the model on its CPUs, decoding on the others.
    plan = plan_cores(allowed, torch.get_num_threads())

    def decode(body: bytes) -> torch.Tensor:
        return classifier.preprocess(decode_image(body, limits, draft_size=draft))

    def pin_decode_thread() -> None:
        if plan is not None:
            pin_this_thread(plan.front)

    if plan is not None:
        pin_this_thread(plan.model)
    try:
        return _pipeline_loop(
            classifier,
            bodies,
            batch_size,
            sampler,
            decode,
            pin_decode_thread,
            decode_workers=decode_workers,
            duration_s=duration_s,
            warmup_s=warmup_s,
            half=half,
        )
    finally:
        if plan is not None and allowed is not None:
            pin_this_thread(allowed)


def _pipeline_loop(
    classifier: Classifier,
    bodies: Sequence[bytes],
    batch_size: int,
    sampler: EnergySampler,
    decode: Callable[[bytes], torch.Tensor],
    initializer: Callable[[], None],
    *,
    decode_workers: int,
    duration_s: float,
    warmup_s: float,
    half: int,
) -> OfflinePoint:
    with ThreadPoolExecutor(
        decode_workers, thread_name_prefix="offline-decode", initializer=initializer
    ) as pool:
        turn = 0

        def submit() -> list[Future[torch.Tensor]]:
            nonlocal turn
            batch = [pool.submit(decode, bodies[(turn + i) % len(bodies)]) for i in range(batch_size)]
            turn += batch_size
            return batch

        pending = submit()

        def step() -> None:
            nonlocal pending
            inputs = [f.result() for f in pending]
            pending = submit()  # the next batch decodes while this one computes
            classifier.predict(inputs)

        warm_until = time.monotonic() + warmup_s
        done = 0
        while done < 2 or time.monotonic() < warm_until:
            step()
            done += 1
        machine0 = machine_busy_cpu_s()
        cpu0 = time.process_time()
        t0 = time.monotonic()
        done = 0
        while done < MIN_OFFLINE_BATCHES or time.monotonic() - t0 < duration_s:
            step()
            done += 1
        t1 = time.monotonic()
        cpu_s = time.process_time() - cpu0
        machine_s = delta(machine0, machine_busy_cpu_s())
        for future in pending:
            future.cancel()
    energy_j = sampler.energy_between(t0, t1, settle=True)
    wall_s = t1 - t0
    images = done * batch_size
    return OfflinePoint(
        model=classifier.name,
        batch_size=batch_size,
        half=half,
        batches=done,
        images=images,
        wall_s=wall_s,
        images_per_s=images / wall_s,
        energy_j=energy_j,
        energy_j_per_image=energy_j / images,
        energy_source=sampler.source,
        cpu_cores=cpu_s / wall_s,
        ms_per_batch=wall_s / done * 1000,
        other_cpu_cores=None if machine_s is None else max(0.0, machine_s - cpu_s) / wall_s,
        stage="pipeline",
    )
