"""Latency and energy of any batch function, per batch size: the offline profile's core.

``profile_batches(run_batch, sizes, sampler=…)`` times ``run_batch(b)`` for each batch size and
reads its energy from an :class:`~energy.EnergySampler`'s curve over the timed loop
(``energy_between(…, settle=True)``: it waits until the curve covers the loop's end, so the figure
is an interpolation between readings, never an extrapolation). :func:`profile_thread_calls` times
CPU-side work done in the calling thread (decoding) and prices its CPU time with an
:class:`~energy.EnergyAccountant`'s CPU meter, as the server does, so that a GPU's idle draw meanwhile
is never charged to it. It imports neither torch nor anything of greenserve's packages, so the
model profile study (``studies.profile``, a served model through the server's own loader) and
the zoo and the trainer's studies (plain torch modules) measure the same way. Bad arguments are a
:class:`BatchProfileError` (an :class:`~energy.EnergyError` and a ``ValueError``).

Every figure carries its source and whether it includes the devices' idle (static) draw;
:func:`source_idle_included` and :func:`energy_label` turn a source into the words tables and plots
use ("J, rapl, idle included").
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from energy.base import EnergySettingError

if TYPE_CHECKING:
    from energy.accounting import EnergyAccountant
    from energy.sampler import EnergySampler

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 16, 32, 64, 128)
DEFAULT_WARMUP = 3
DEFAULT_REPEATS = 10
#: Each batch size is timed for at least this long (and at least ``repeats`` batches): NVML's
#: counter refreshes only every ~10-100 ms, so a few short batches would read as a lump or as 0 J.
DEFAULT_MIN_TIME_S = 1.0
#: What out-of-memory failures say: torch.cuda.OutOfMemoryError ("CUDA out of memory"), the CPU
#: allocator ("DefaultCPUAllocator: can't allocate memory"), MPS ("MPS backend out of memory").
_OOM_MARKERS = ("out of memory", "can't allocate memory")


class BatchProfileError(EnergySettingError):
    """Arguments a profile cannot be measured with (no batch sizes, a negative count, …); an
    :class:`~energy.EnergyError` and a ``ValueError``."""


# --- labels: which source, and whether idle draw is in the figure ---------------------------------


def _idle_by_source() -> dict[str, bool]:
    from energy.estimate import EstimateMeter
    from energy.nvml import NvmlMeter
    from energy.rapl import RaplMeter
    from energy.synthetic import SyntheticMeter

    return {m.source: m.idle_included for m in (NvmlMeter, RaplMeter, EstimateMeter, SyntheticMeter)}


def source_idle_included(source: str | None) -> bool | None:
    """Whether the joules of ``source`` include its devices' idle (static) draw.

    True for the hardware counters (``nvml``, ``rapl``) and ``synthetic``, False for ``estimate``
    (CPU time × W per core: zero when idle). A combination (``"nvml+rapl"``, as the server labels
    figures made of several meters) is True or False when every part agrees, None when they differ;
    an unknown name (or None) is None.
    """
    if not source:
        return None
    table = _idle_by_source()
    parts = {table.get(part.strip()) for part in source.split("+")}
    return parts.pop() if len(parts) == 1 else None


def idle_phrase(source: str | None, *, net: bool = False, idle_included: bool | None = None) -> str:
    """How a figure of ``source`` stands to idle draw, in words: "idle included", "idle not included",
    "idle subtracted" (``net``: idle power × duration taken off a figure that included it), or, for a
    combination whose parts differ, which part includes it. ``idle_included`` overrides what the
    source says (a figure priced above idle from a source that includes it)."""
    included = source_idle_included(source) if idle_included is None else idle_included
    if included is None and source and "+" in source:
        table = _idle_by_source()
        parts = source.split("+")
        with_idle = [p for p in parts if table.get(p)]
        without = [p for p in parts if table.get(p) is False]
        if with_idle and without:
            verb = "subtracted" if net else "included"
            return f"idle {verb} for {'+'.join(with_idle)}, not for {'+'.join(without)}"
    if included is None:
        return "idle unknown"
    if not included:
        return "idle not included"
    return "idle subtracted" if net else "idle included"


def energy_label(
    what: str, source: str | None, *, unit: str = "J", net: bool = False, idle_included: bool | None = None
) -> str:
    """``what`` with its unit, source and idle: ``energy per run (J, rapl, idle included)``."""
    idle = idle_phrase(source, net=net, idle_included=idle_included)
    return f"{what} ({unit}, {source or 'no source'}, {idle})"


@dataclass(frozen=True)
class ProfilePoint:
    """One batch size, timed over ``batches`` consecutive batches.

    Units in the names. ``energy_j_per_batch`` is the sampler's energy over the whole timed loop
    divided by ``batches``: the meter cannot resolve single batches, and loop overhead between
    batches (a few µs) is charged to them, as it is in the server. It is everything the meter's
    devices used meanwhile, so it includes their idle (static) draw when the meter does
    (``energy_idle_included``: True for nvml, rapl and synthetic, False for estimate; None when
    unknown, in a file written before the field existed).
    """

    batch_size: int
    batches: int
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_std_ms: float
    energy_j_per_batch: float
    energy_j_per_image: float
    images_per_s: float
    energy_source: str
    energy_idle_included: bool | None = None


@dataclass(frozen=True)
class ProfileRun:
    """What :func:`profile_batches` measured, and the batch sizes it had to skip (size → reason)."""

    points: tuple[ProfilePoint, ...]
    skipped: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class CallCost:
    """Mean time and energy of one call of a function timed in a loop (the decode cost per image).

    ``energy_j`` is None when it is unknown (``unknown`` says why: a failing meter); its source and
    whether it includes idle draw come with it (None: not recorded).
    """

    calls: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    energy_j: float | None
    energy_source: str | None = None
    energy_idle_included: bool | None = None
    unknown: str | None = None


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator running out of memory (CUDA, MPS or CPU), by type or message.

    torch.cuda.OutOfMemoryError is a RuntimeError, and the other devices raise plain RuntimeErrors,
    so the message is what tells them apart from a model's own failures.
    """
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _OOM_MARKERS)


def _release_cached_memory() -> None:
    """After an out-of-memory error, give the CUDA cache back so the next size starts clean."""
    torch = sys.modules.get("torch")  # only if the caller uses torch: the core never imports it
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def cuda_synchronizer(device: str) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for a CUDA device, else None: kernels run asynchronously, so a
    batch on the GPU is over only when the device says so, not when the Python call returns."""
    if not device.startswith("cuda"):
        return None
    import torch

    index = torch.device(device)

    def synchronize() -> None:
        torch.cuda.synchronize(index)

    return synchronize


def _timed_loop(
    call: Callable[[], None],
    *,
    repeats: int,
    min_time_s: float,
    sampler: EnergySampler,
    synchronize: Callable[[], None] | None,
) -> tuple[list[float], float, float]:
    """Run ``call`` at least ``repeats`` times and for at least ``min_time_s``; return the
    durations (s), the loop's wall time (s) and the sampler's energy over the loop (J)."""
    durations: list[float] = []
    sampler.sample()  # a reading right at the start, even if the sampler's thread is not running
    loop_start = time.monotonic()
    while len(durations) < repeats or time.monotonic() - loop_start < min_time_s:
        t0 = time.monotonic()
        call()
        if synchronize is not None:
            synchronize()
        durations.append(time.monotonic() - t0)
    loop_end = time.monotonic()
    return durations, loop_end - loop_start, sampler.energy_between(loop_start, loop_end, settle=True)


def check_counts(warmup: int, repeats: int, min_time_s: float) -> None:
    if warmup < 0:
        raise BatchProfileError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise BatchProfileError(f"repeats must be >= 1, got {repeats}")
    if not (math.isfinite(min_time_s) and min_time_s >= 0):
        raise BatchProfileError(f"min_time_s must be a finite number >= 0, got {min_time_s!r}")


def check_batch_sizes(batch_sizes: Iterable[int]) -> tuple[int, ...]:
    """Sorted, unique, each ≥ 1; anything else is a :class:`BatchProfileError` naming the value."""
    sizes = tuple(batch_sizes)
    if not sizes:
        raise BatchProfileError("no batch sizes given")
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise BatchProfileError(f"batch sizes must be integers >= 1, got {size!r}")
    return tuple(sorted(set(sizes)))


def profile_batches(
    run_batch: Callable[[int], None],
    batch_sizes: Iterable[int],
    *,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    sampler: EnergySampler,
    min_time_s: float = DEFAULT_MIN_TIME_S,
    synchronize: Callable[[], None] | None = None,
) -> ProfileRun:
    """Time ``run_batch(b)`` for each batch size ``b`` (smallest first) and read its energy.

    Per size: ``warmup`` untimed batches (first calls allocate memory and pick kernels), then at
    least ``repeats`` timed batches and at least ``min_time_s`` of them. ``synchronize`` is called
    after each batch inside the timing (:func:`cuda_synchronizer` for a CUDA device). ``sampler``
    should be running (its thread spreads a slow counter's steps; see docs/energy.md).

    A size that runs out of memory (:func:`is_out_of_memory`) is skipped with a warning, and so is
    every larger size, which would only fail again, slowly; any other exception propagates.
    """
    sizes = check_batch_sizes(batch_sizes)
    check_counts(warmup, repeats, min_time_s)
    points: list[ProfilePoint] = []
    skipped: list[tuple[int, str]] = []
    for position, size in enumerate(sizes):
        try:
            for _ in range(warmup):
                run_batch(size)
            if synchronize is not None:
                synchronize()
            durations, wall_s, energy_j = _timed_loop(
                functools.partial(run_batch, size),
                repeats=repeats,
                min_time_s=min_time_s,
                sampler=sampler,
                synchronize=synchronize,
            )
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            _release_cached_memory()
            reason = f"out of memory: {str(exc).splitlines()[0][:200]}"
            skipped.append((size, reason))
            skipped += [
                (larger, f"larger than {size}, which ran out of memory") for larger in sizes[position + 1 :]
            ]
            logger.warning("batch size %d skipped (%s); larger sizes skipped too", size, reason)
            break
        points.append(_point(size, durations, wall_s, energy_j, sampler.source, sampler.meter.idle_included))
        logger.info(
            "batch %d: %.2f ms/batch, %.4g J/image (%s), %.1f images/s",
            size,
            points[-1].latency_mean_ms,
            points[-1].energy_j_per_image,
            sampler.source,
            points[-1].images_per_s,
        )
    return ProfileRun(tuple(points), tuple(skipped))


def _point(
    size: int, durations_s: Sequence[float], wall_s: float, energy_j: float, source: str, idle_included: bool
) -> ProfilePoint:
    ms = np.asarray(durations_s, dtype=np.float64) * 1000.0
    p50, p99 = np.percentile(ms, [50, 99])
    batches = len(durations_s)
    return ProfilePoint(
        batch_size=size,
        batches=batches,
        latency_mean_ms=float(ms.mean()),
        latency_p50_ms=float(p50),
        latency_p99_ms=float(p99),
        latency_std_ms=float(ms.std(ddof=1)) if batches > 1 else 0.0,
        energy_j_per_batch=energy_j / batches,
        energy_j_per_image=energy_j / (batches * size),
        images_per_s=batches * size / wall_s if wall_s > 0 else math.inf,
        energy_source=source,
        energy_idle_included=idle_included,
    )


def profile_calls(
    call: Callable[[], None],
    *,
    warmup: int,
    repeats: int,
    sampler: EnergySampler,
    min_time_s: float = 0.0,
) -> CallCost:
    """Mean time and energy of ``call()`` (at least ``repeats`` calls and ``min_time_s``): the
    sampler's energy over the loop, everything its devices used meanwhile (idle included when the
    meter includes it). For CPU work on a machine whose sampler measures a GPU, use
    :func:`profile_thread_calls`."""
    check_counts(warmup, repeats, min_time_s)
    for _ in range(warmup):
        call()
    durations, _wall_s, energy_j = _timed_loop(
        call, repeats=repeats, min_time_s=min_time_s, sampler=sampler, synchronize=None
    )
    return _call_cost(
        durations,
        energy_j / len(durations),
        energy_source=sampler.source,
        energy_idle_included=sampler.meter.idle_included,
    )


def _call_cost(
    durations_s: Sequence[float],
    energy_j: float | None,
    *,
    energy_source: str,
    energy_idle_included: bool,
    unknown: str | None = None,
) -> CallCost:
    ms = np.asarray(durations_s, dtype=np.float64) * 1000.0
    p50, p99 = np.percentile(ms, [50, 99])
    return CallCost(
        len(durations_s),
        float(ms.mean()),
        float(p50),
        float(p99),
        energy_j,
        energy_source=energy_source,
        energy_idle_included=energy_idle_included,
        unknown=unknown,
    )


def profile_thread_calls(
    call: Callable[[], None],
    *,
    warmup: int,
    repeats: int,
    accountant: EnergyAccountant,
    stage: str = "decode",
    min_time_s: float = 0.0,
) -> CallCost:
    """Mean time and energy of ``call()``, CPU work done in the calling thread (decoding).

    Each call's energy is its thread CPU time priced at the accountant's CPU meter's joules per
    CPU-second above idle (:meth:`EnergyAccountant.thread_work`), as the server charges a request's
    decode: labelled with the CPU meter's source (rapl, estimate or synthetic), idle not included,
    and never a GPU counter's idle draw while the CPU decodes. The CPU sampler should be running
    (its price comes from its last second of readings), and a RAPL meter's idle power measured
    (:meth:`EnergySampler.measure_idle`), else the price includes the package's idle draw.
    ``energy_j`` is None, with the reason, when the CPU meter cannot say (failing, no reading yet).
    """
    check_counts(warmup, repeats, min_time_s)
    for _ in range(warmup):
        call()
    durations: list[float] = []
    joules = 0.0
    unknown: str | None = None
    loop_start = time.monotonic()
    while len(durations) < repeats or time.monotonic() - loop_start < min_time_s:
        t0 = time.monotonic()
        with accountant.thread_work(stage) as out:
            call()
        durations.append(time.monotonic() - t0)
        part = out[0].joules
        if part is None:
            unknown = unknown or out[0].unknown
        else:
            joules += part
    return _call_cost(
        durations,
        None if unknown is not None else joules / len(durations),
        energy_source=accountant.cpu.source,
        energy_idle_included=False,
        unknown=unknown,
    )
