"""Builds the FastAPI app; nothing else happens here (routes live in :mod:`service.api`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from energy import EnergySampler, EnergySourceUnavailable, create_meter
from service.api.errors import install_error_handlers
from service.api.middleware import AccessLogMiddleware
from service.api.routes import router
from service.batching import Batcher, BatchingConfig
from service.config import Settings
from service.errors import ConfigurationError
from service.imaging import DecodeLimits
from service.inference import InferenceEngine, ItemResult
from service.metrics import Metrics
from service.model import Classifier, load_classifier
from service.recording import ArrivalRecorder, ArrivalRecordingMiddleware, recording_lifespan
from service.state import Phase, ServerState
from service.tasks import create_logged_task

logger = logging.getLogger(__name__)


def _build_state(settings: Settings, classifier: Classifier | None) -> ServerState:
    """Load the model and open the energy meter (blocking; run in a thread at start-up)."""
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    classifier = classifier or load_classifier(settings)
    try:
        meter = create_meter(
            settings.energy_source, device=classifier.device, watts_per_core=settings.watts_per_core
        )
    except EnergySourceUnavailable as exc:
        raise ConfigurationError(str(exc)) from exc
    sampler = EnergySampler(meter, period_s=settings.energy_sample_ms / 1000)
    metrics = Metrics(settings.max_batch_size)
    metrics.attach_energy(sampler)
    metrics.model_info.labels(
        model=classifier.name, device=classifier.device, weights=classifier.weights
    ).set(1)
    metrics.set_batching_config(settings.max_batch_size, settings.max_wait_ms, settings.max_queue)
    engine = InferenceEngine(
        classifier,
        sampler,
        workers=settings.max_concurrent_batches,
        on_batch_energy=metrics.observe_batch_energy,
    )
    batcher: Batcher[torch.Tensor, ItemResult] = Batcher(
        engine.run_batch,
        BatchingConfig(settings.max_batch_size, settings.max_wait_ms, settings.max_queue),
        max_concurrent_batches=settings.max_concurrent_batches,
        observer=metrics,
        name=f"batcher[{classifier.name}]",
    )
    logger.info(
        "model %s (weights %s) on %s; energy source %s (devices: %s)%s",
        classifier.name,
        classifier.weights,
        classifier.device,
        meter.source,
        ", ".join(meter.devices),
        " — an ESTIMATE, not a measurement" if meter.is_estimate else "",
    )
    return ServerState(
        settings=settings,
        metrics=metrics,
        limits=DecodeLimits(settings.max_body_bytes, settings.max_image_pixels),
        decode_pool=ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode"),
        meter=meter,
        sampler=sampler,
        engine=engine,
        batcher=batcher,
        started_at=time.time(),
    )


async def _warm_up(state: ServerState) -> None:
    if state.settings.warmup:
        try:
            sizes = (1, state.batcher.config.max_batch_size)
            await state.engine.warm_up(sizes)
        except Exception as exc:
            logger.exception("warm-up failed; the server stays unready")
            state.failure = f"warm-up failed: {exc.__class__.__name__}: {exc}"
            state.phase = Phase.FAILED
            return
    if state.phase is Phase.STARTING:
        state.phase = Phase.READY
        logger.info("ready to serve %s", state.engine.classifier.name)


def create_app(settings: Settings | None = None, *, classifier: Classifier | None = None) -> FastAPI:
    """The app. ``classifier`` replaces loading one from the settings (tests, embedding)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loading is blocking (torch.load, model construction): keep the loop free meanwhile.
        # A configuration error aborts start-up here with its message, before the port opens.
        try:
            state = await asyncio.to_thread(_build_state, settings, classifier)
        except ConfigurationError as exc:
            logger.error("cannot start: %s", exc)
            raise
        app.state.server = state
        state.sampler.start()
        state.batcher.start()
        warm = create_logged_task(_warm_up(state), name="warm-up")
        try:
            yield
        finally:
            state.begin_draining()
            warm.cancel()
            # What is left of the drain's one deadline: uvicorn's connection wait used the rest.
            # (Under GreenServer the batcher's drain began with uvicorn's shutdown: same report.)
            report = await state.batcher.close(state.drain_remaining_s())
            logger.info("shutdown: %d accepted requests answered, %d failed", report.answered, report.failed)
            state.engine.close()
            state.decode_pool.shutdown(wait=False, cancel_futures=True)
            state.sampler.stop()
            state.meter.close()

    # --record-trace: the recorder opens before the lifespan and closes after its drain, and its
    # middleware is the outermost, so every POST /classify is recorded, even one refused later.
    recorder = ArrivalRecorder(settings.record_trace) if settings.record_trace is not None else None
    app = FastAPI(
        title="greenserve",
        summary="Energy-aware image classification with dynamic batching",
        version="0.1.0",
        lifespan=lifespan if recorder is None else recording_lifespan(recorder, lifespan),
    )
    app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(AccessLogMiddleware, enabled=settings.access_log)
    if recorder is not None:
        app.add_middleware(ArrivalRecordingMiddleware, recorder=recorder)
    return app
