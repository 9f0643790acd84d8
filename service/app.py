"""Builds the FastAPI app; nothing else happens here (routes live in :mod:`service.api`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from energy import (
    CpuSpread,
    EnergySourceUnavailable,
    SyntheticSettings,
    close_accountant,
    create_accountant,
)
from service.affinity import CorePlan, allowed_cpus, plan_cores
from service.api.errors import install_error_handlers
from service.api.middleware import AccessLogMiddleware
from service.api.oip import router as oip_router
from service.api.routes import router
from service.batching import Batcher, BatchingConfig
from service.config import Settings
from service.errors import ConfigurationError
from service.imaging import DecodeLimits
from service.inference import InferenceEngine, ItemResult
from service.metrics import Metrics
from service.model import Classifier, NoopClassifier, load_classifier
from service.pipeline import Pipeline
from service.policy import read_profile_seed
from service.recording import ArrivalRecorder, ArrivalRecordingMiddleware, recording_lifespan
from service.state import Phase, ServerState
from service.tasks import create_logged_task

logger = logging.getLogger(__name__)

#: Start-up: how long to wait for the energy counter's period to be detected, and to measure idle.
ENERGY_READY_TIMEOUT_S = 5.0
IDLE_MEASURE_S = 1.0


def _core_plan(settings: Settings, classifier: Classifier) -> CorePlan | None:
    """The model's own CPUs (service.affinity) where ``cpu_affinity=auto`` and they can be had: a
    CPU device, a model that computes, and torch_threads × concurrent batches below the CPUs."""
    if settings.cpu_affinity == "off" or settings.torch_threads is None:
        return None
    if isinstance(classifier, NoopClassifier) or not classifier.device.startswith("cpu"):
        return None
    return plan_cores(allowed_cpus(), settings.torch_threads * settings.max_concurrent_batches)


def _build_state(settings: Settings, classifier: Classifier | None) -> ServerState:
    """Load the model and open the energy meter (blocking; run in a thread at start-up)."""
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    classifier = classifier or load_classifier(settings)
    try:
        accountant = create_accountant(
            settings.energy_source,
            device=classifier.device,
            watts_per_core=settings.watts_per_core,
            synthetic=SyntheticSettings(
                settings.synthetic_idle_w, settings.synthetic_counter_period_ms, settings.synthetic_read_ms
            ),
            period_s=None if settings.energy_sample_ms is None else settings.energy_sample_ms / 1000,
        )
    except EnergySourceUnavailable as exc:
        raise ConfigurationError(str(exc)) from exc
    metrics = Metrics(settings.max_batch_size)
    metrics.attach_energy(accountant)
    metrics.set_model_info(classifier.name, classifier.device, classifier.weights)
    engine = InferenceEngine(
        classifier,
        accountant,
        workers=settings.max_concurrent_batches,
        cores=_core_plan(settings, classifier),
    )
    seed = None
    if settings.batching_profile is not None:
        try:
            seed = read_profile_seed(settings.batching_profile)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"batching_profile: {exc}") from exc
    batcher: Batcher[torch.Tensor, ItemResult] = Batcher(
        engine.run_batch,
        BatchingConfig(
            settings.max_batch_size,
            settings.max_wait_ms,
            settings.max_queue,
            policy=settings.batching,
            slo_p99_ms=settings.slo_p99_ms,
        ),
        max_concurrent_batches=settings.max_concurrent_batches,
        observer=metrics,
        name=f"batcher[{classifier.name}]",
        # The policy learns each batch's model energy (the whole batch's: every item carries it).
        batch_energy=lambda results: results[0].batch_energy.joules if results else None,
        policy_seed=seed,
        # The engine's executor has max_concurrent_batches threads and queues what it is handed
        # beyond them in order, so a full batch may be handed to it while the model computes: it
        # then starts as the running batch ends, without waiting for the event loop (which holds
        # the GIL while it writes the answers; docs/performance.md).
        queue_ahead=True,
    )
    metrics.attach_policy(lambda: batcher.policy)
    for sampler in accountant.samplers:
        meter = sampler.meter
        logger.info(
            "model %s (weights %s) on %s; energy source %s (devices: %s)%s",
            classifier.name,
            classifier.weights,
            classifier.device,
            meter.source,
            ", ".join(meter.devices),
            f" — {meter.source.upper()}, a model, not a measurement" if meter.is_model else "",
        )
    pipeline = Pipeline(
        engine,
        batcher,
        accountant,
        DecodeLimits(settings.max_body_bytes, settings.max_image_pixels),
        decode_workers=settings.decode_workers,
    )
    return ServerState(settings=settings, metrics=metrics, pipeline=pipeline, started_at=time.time())


async def _warm_up(state: ServerState) -> None:
    # The energy accounting first: the counter's update period is detected, and a CPU meter whose
    # idle draw is unknown (RAPL) has it measured while nothing runs. A meter that fails here does
    # not keep the server from serving: requests then report their energy as unknown.
    for sampler in state.accountant.samplers:
        if not await asyncio.to_thread(sampler.wait_ready, ENERGY_READY_TIMEOUT_S):
            logger.warning("energy (%s): counter period not detected in time", sampler.source)
    cpu = state.accountant.cpu
    if cpu.idle_power_w is None:
        try:
            await asyncio.to_thread(cpu.measure_idle, IDLE_MEASURE_S)
        except Exception:
            logger.exception("energy (%s): measuring idle power failed; assuming 0 W", cpu.source)
            cpu.idle_power_w = dict.fromkeys(cpu.devices, 0.0)
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
        state.pipeline.serving = CpuSpread()  # here, in the event loop's thread, whose CPU clock it reads
        app.state.server = state
        for sampler in state.accountant.samplers:
            sampler.start()
        state.batcher.start()
        warm = create_logged_task(_warm_up(state), name="warm-up")
        try:
            yield
        finally:
            state.begin_draining()
            warm.cancel()
            # What is left of the drain's one deadline: uvicorn's connection wait used the rest.
            # (Under GreenServer the batcher's drain began with uvicorn's shutdown: same report.)
            await state.batcher.close(state.drain_remaining_s())  # (it logs its own report)
            # Every connection is closed by now (or uvicorn gave up on it): the tally is complete.
            logger.info("shutdown: while draining, %s", state.drain.summary())
            state.engine.close()
            state.pipeline.close()
            close_accountant(state.accountant)

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
    app.include_router(oip_router)
    install_error_handlers(app)
    app.add_middleware(AccessLogMiddleware, enabled=settings.access_log)
    if recorder is not None:
        app.add_middleware(ArrivalRecordingMiddleware, recorder=recorder)
    return app
