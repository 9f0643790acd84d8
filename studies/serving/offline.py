"""The offline side of the serving benchmark: ``classifier.predict`` on preprocessed tensors in a loop.

The model is loaded as the server loads it (same settings, same heap policy) and the images are
decoded as the server decodes them, so that the served figures differ from these by what serving
adds and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
    configure_allocator(settings.allocator)  # the server's heap policy, so both sides compare
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
