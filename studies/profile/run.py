"""Profiling a served model offline: latency and energy per batch size, measured without HTTP.

:func:`profile_model` loads a model exactly as the server does (:func:`service.model.load_classifier`,
imported lazily) and profiles ``classifier.predict`` on real inputs decoded as the server decodes
them, plus the per-image decode + preprocess cost, with the generic core
:func:`energy.profile.profile_batches` (it lives in ``energy/`` so that the model-zoo study, which
never imports ``service``, profiles plain torch modules the same way).

Energy is measured as the server measures it (an :class:`~energy.EnergyAccountant`): the batches
on the device's meter (the GPU's ``nvml`` on a GPU, else the CPU meter), everything the device
used while they ran (idle/static draw included where the meter includes it); the decode on the CPU
side, its thread CPU time priced at the CPU meter's joules per CPU-second above idle (``rapl``,
else ``estimate``; idle not included), never the GPU's idle draw while the CPU decodes.

:func:`run_profile` is ``greenserve profile``: it says what it will measure and about how long it
takes, shows a progress bar over the batch sizes, and saves the profile (:mod:`studies.profile.format`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from energy.profile import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_MIN_TIME_S,
    DEFAULT_REPEATS,
    DEFAULT_WARMUP,
    cuda_synchronizer,
    profile_batches,
    profile_thread_calls,
)
from loadgen.errors import ProfileError
from studies.kit.progress import announce, progress_bar
from studies.profile.format import ModelProfile, write_profile
from studies.profile.settings import DEFAULT_IDLE_S, DEFAULT_IMAGES, ProfileSettings

if TYPE_CHECKING:
    from energy import EnergyAccountant
    from service.config import Settings

logger = logging.getLogger(__name__)

#: The server's default sampler period (``energy_sample_ms``), so both read energy alike.
SAMPLER_PERIOD_S = 0.02


def _default_weights(model: str) -> str | None:
    """The embedded checkpoint for the embedded model; random weights for the rest, which costs
    the same per batch as trained weights and needs no download (this machine may be offline)."""
    from service.config import EMBEDDED_MODEL

    if model == EMBEDDED_MODEL or model == "noop" or ":" in model:
        return None
    return "random"


def _server_settings(model: str, **fields: Any) -> Settings:
    """The server's own settings for ``model``; a bad value is a :class:`ProfileError`."""
    from pydantic import ValidationError

    from service.config import Settings

    try:
        return Settings(model=model, **fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ProfileError(f"invalid setting: {problems}") from None


class _SizeSteps:
    """The progress bar over the batch sizes: :func:`energy.profile.profile_batches` runs them
    smallest first, so a size is done when ``run_batch`` moves on to the next one."""

    def __init__(self, step: Callable[[str, bool], None], sizes: Sequence[int]) -> None:
        self._step = step
        self._sizes = sizes
        self._current: int | None = None
        self._done = 0

    def enter(self, size: int) -> None:
        if size != self._current:
            if self._current is not None:
                self._done += 1
            self._step(f"batch size {size}", self._current is not None)
            self._current = size

    def finish(self) -> None:
        """The last size done, and those skipped after one ran out of memory."""
        for _ in range(len(self._sizes) - self._done):
            self._step("decode + preprocess", True)
        self._done = len(self._sizes)


def profile_model(
    model: str,
    *,
    weights: str | None = None,
    device: str = "cpu",
    batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    min_time_s: float = DEFAULT_MIN_TIME_S,
    torch_threads: int | None = None,
    energy_source: str = "auto",
    watts_per_core: float | None = None,
    image_source: str | None = None,
    images: int = DEFAULT_IMAGES,
    allocator: Literal["reuse", "system"] = "reuse",
    idle_s: float = DEFAULT_IDLE_S,
    accountant: EnergyAccountant | None = None,
    progress: bool = False,
) -> ModelProfile:
    """Profile ``model`` as greenserve would serve it: same loader, same decoding, no HTTP.

    The model is loaded by :func:`service.model.load_classifier` from the server's own settings
    (``weights=None``: the embedded checkpoint for ``digits_cnn``, random weights for torchvision
    models, which cost the same). ``images`` payloads from ``image_source`` (a sample set,
    ``digits`` or ``photos``, or a directory; default: the samples that suit the model) are decoded
    with :func:`service.imaging.decode_image` and ``classifier.preprocess``, and batches cycle
    through them, so the model sees real inputs. The decode + preprocess cost per image is measured
    too, one image at a time in this thread (the server spreads it over its decode threads).

    Energy, as the server accounts it (the module docstring): an accountant for ``energy_source``
    (:func:`energy.create_accountant`; ``accountant`` gives one instead, whose samplers are started
    here and which the caller closes). The batches are read from its accelerator's sampler (a GPU)
    or else its CPU sampler; the decode is priced by its CPU side (thread CPU time × the CPU meter's
    joules per CPU-second above idle; a RAPL meter's idle power is measured first, for ``idle_s``).

    ``allocator`` is the server's setting of that name, applied to this process as the server
    applies it (:mod:`energy.allocator`; it cannot be undone), so that the profile's batches
    cost what the served ones do.

    ``torch_threads`` is set for the duration of the call and restored afterwards (None: torch's
    own choice, as the server's default). ``progress`` shows a bar over the batch sizes. Raises
    :class:`ProfileError` for an unknown model, a bad setting, an energy source that cannot start,
    or an image source without images.
    """
    settings = ProfileSettings(
        model=model,
        weights=weights,
        device=device,
        batch_sizes=tuple(batch_sizes),
        warmup=warmup,
        repeats=repeats,
        min_time_s=min_time_s,
        torch_threads=torch_threads,
        energy_source=energy_source,
        allocator=allocator,
        watts_per_core=watts_per_core,
        idle_s=idle_s,
        images=image_source,
        image_count=images,
    )
    return measure(settings, accountant=accountant, progress=progress)


def measure(
    settings: ProfileSettings, *, accountant: EnergyAccountant | None = None, progress: bool = False
) -> ModelProfile:
    """:func:`profile_model` of ``settings`` (its ``out`` aside)."""
    from energy import EnergyError, close_accountant, create_accountant
    from loadgen.images import ImageSourceError, default_sample_for, load_payloads
    from service.errors import ConfigurationError, GreenserveError
    from service.imaging import DecodeLimits, decode_image
    from service.model import load_classifier

    sizes = tuple(sorted(set(settings.batch_sizes)))
    model, torch_threads = settings.model, settings.torch_threads
    server = _server_settings(
        model,
        weights=settings.weights if settings.weights is not None else _default_weights(model),
        device=settings.device,
        torch_threads=torch_threads,
        allocator=settings.allocator,
    )

    import torch

    from energy.allocator import configure_allocator

    configure_allocator(server.allocator, thread_heaps=server.thread_heaps())
    threads_before = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        try:
            classifier = load_classifier(server)
        except ConfigurationError as exc:
            raise ProfileError(str(exc)) from None
        try:
            payloads = load_payloads(settings.images or default_sample_for(model), settings.image_count)
        except ImageSourceError as exc:
            raise ProfileError(str(exc)) from None
        limits = DecodeLimits()
        try:
            inputs = [
                classifier.preprocess(decode_image(p.body, limits, draft_size=classifier.draft_size))
                for p in payloads
            ]
        except GreenserveError as exc:  # BadImageError and friends from a user's directory
            raise ProfileError(f"cannot decode the images of {settings.images!r}: {exc}") from None
        owned = accountant is None
        if accountant is None:
            try:
                accountant = create_accountant(
                    settings.energy_source,
                    device=classifier.device,
                    watts_per_core=settings.watts_per_core,
                    period_s=SAMPLER_PERIOD_S,
                )
            except (EnergyError, ValueError) as exc:
                raise ProfileError(f"energy source {settings.energy_source!r}: {exc}") from None
        try:
            for sampler in accountant.samplers:
                sampler.start()
            for sampler in accountant.samplers:
                sampler.wait_ready(5.0)
            if accountant.cpu.idle_power_w is None and settings.idle_s > 0:
                accountant.cpu.measure_idle(settings.idle_s)  # RAPL: the decode is priced above idle
            batch_sampler = accountant.accelerator or accountant.cpu
            cursor = 0
            with progress_bar("profile", len(sizes) + 1, enabled=progress) as step:
                steps = _SizeSteps(step, sizes)

                def run_batch(size: int) -> None:
                    nonlocal cursor
                    steps.enter(size)
                    classifier.predict([inputs[(cursor + i) % len(inputs)] for i in range(size)])
                    cursor = (cursor + size) % len(inputs)

                run = profile_batches(
                    run_batch,
                    sizes,
                    warmup=settings.warmup,
                    repeats=settings.repeats,
                    sampler=batch_sampler,
                    min_time_s=settings.min_time_s,
                    synchronize=cuda_synchronizer(classifier.device),
                )
                steps.finish()
                decode_index = 0

                def decode_one() -> None:
                    nonlocal decode_index
                    body = payloads[decode_index % len(payloads)].body
                    classifier.preprocess(decode_image(body, limits, draft_size=classifier.draft_size))
                    decode_index += 1

                decode = profile_thread_calls(
                    decode_one,
                    warmup=min(len(payloads), 8),
                    repeats=len(payloads),
                    accountant=accountant,
                    min_time_s=min(settings.min_time_s, 0.5),
                )
                step("done", True)
        finally:
            if owned:
                close_accountant(accountant)
            else:
                for sampler in accountant.samplers:
                    sampler.stop()
    finally:
        torch.set_num_threads(threads_before)
    notes = [f"batch size {size} skipped: {reason}" for size, reason in run.skipped]
    if not run.points:
        raise ProfileError(f"{model}: no batch size could be profiled ({'; '.join(notes)})")
    if decode.unknown is not None:
        notes.append(f"decode + preprocess energy unknown: {decode.unknown}")
    return ModelProfile(
        model=classifier.name,
        device=classifier.device,
        energy_source=batch_sampler.source,
        points=run.points,
        weights=classifier.weights,
        torch_threads=torch_threads,
        preprocess_ms_per_image=decode.mean_ms,
        preprocess_j_per_image=decode.energy_j,
        notes=tuple(notes),
        preprocess_energy_source=decode.energy_source,
        preprocess_idle_included=decode.energy_idle_included,
    )


def plan(settings: ProfileSettings) -> tuple[str, float]:
    """What the profile measures, in words, and about how long it takes (the timed loops: at least
    ``min_time_s`` per size, half a second at most for the decode; the model's load is extra)."""
    sizes = sorted(set(settings.batch_sizes))
    what = (
        f"{settings.model} on {settings.device}: {len(sizes)} batch sizes ({', '.join(map(str, sizes))}) "
        f"× ≥{settings.repeats} batches and ≥{settings.min_time_s:g} s each, "
        f"then the decode of {settings.image_count} images"
    )
    return what, len(sizes) * settings.min_time_s + min(settings.min_time_s, 0.5)


def run_profile(settings: ProfileSettings, *, progress: bool = True) -> tuple[ModelProfile, Path]:
    """Profile the model of ``settings`` and save it (:attr:`ProfileSettings.out_path`)."""
    what, estimate_s = plan(settings)
    announce("profile", what, units=len(set(settings.batch_sizes)), estimate_s=estimate_s)
    profile = measure(settings, progress=progress)
    return profile, write_profile(profile, settings.out_path)
