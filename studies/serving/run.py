"""Serving benchmark: what serving costs on top of the bare model, in throughput and in joules.

One run measures, side by side (``python -m studies.serving``, ``make bench``; docs/benchmarks.md):

* **offline** — ``classifier.predict`` on preprocessed tensors in a loop, per model and batch size:
  images/s and J/image, energy from :func:`energy.create_meter` + :class:`energy.EnergySampler`,
  measured in two halves that bracket the served point (before and after it), so that a drift of
  the machine's speed affects both sides of a ratio alike (:mod:`studies.serving.offline`);
* **served** — a real ``greenserve serve`` subprocess per model and max batch size, driven at
  saturation by a concurrent HTTP/1.1 client in this process with pre-encoded 224×224 JPEGs:
  responses/s, J/request (from the responses and from ``/metrics``), mean batch size, latency
  (:mod:`studies.serving.served`);
* **no-op overhead** — greenserve with ``--model noop`` against a bare FastAPI app
  (:mod:`studies.serving.bare_app`) doing the same decode, same client, same concurrency.

The study is data plus functions: :func:`studies.serving.settings.plan` turns the settings into a
list of steps, :func:`run` measures each step into a point, :func:`studies.serving.summary.summarize`
(pure) turns points into the ratios and target verdicts, and the JSON file (:func:`result_document`)
holds all of it, so a report can be redrawn without re-running (:mod:`studies.serving.report`).
Servers only ever bind 127.0.0.1 and are always stopped (their process group is killed) when a
step ends, fails or is interrupted (:mod:`studies.kit.server`); CPU accounting is
:mod:`studies.kit.machine`'s.

A run is not resumed after an interruption: its ratios compare points measured minutes apart on a
machine whose speed drifts, and a point measured in another session would not bracket its pair.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from loadgen.images import make_jpegs
from studies.kit.files import write_text_atomic
from studies.kit.machine import machine_info, wait_for_quiet
from studies.kit.progress import progress_bar
from studies.serving.offline import (
    decode_workers_default,
    load_model,
    measure_offline,
    measure_pipeline,
    preprocess_all,
)
from studies.serving.points import OfflinePoint, ServedPoint
from studies.serving.served import measure_served
from studies.serving.settings import CONTENDED_CORES, BenchSettings, Step
from studies.serving.summary import summarize

if TYPE_CHECKING:
    import torch

    from service.model import Classifier


@dataclass
class RunResult:
    offline: list[OfflinePoint] = field(default_factory=list)
    served: list[ServedPoint] = field(default_factory=list)
    offline_energy_source: str = ""
    watts_per_core: float | None = None


def run(
    steps: Sequence[Step], settings: BenchSettings, console: Console, *, progress: bool = False
) -> RunResult:
    """Measure every step, printing one line per point (and a progress bar on stderr when ``progress``)."""
    import torch

    from energy import EnergySampler, EstimateMeter, create_meter

    torch.set_num_threads(settings.torch_threads)
    bodies = make_jpegs(settings.images, seed=settings.seed)
    result = RunResult()
    meter = create_meter("auto", device="cpu")
    result.offline_energy_source = meter.source
    if isinstance(meter, EstimateMeter):
        result.watts_per_core = meter.watts_per_core
    sampler = EnergySampler(meter, period_s=0.02)
    sampler.start()
    loaded: tuple[Classifier, list[torch.Tensor]] | None = None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="greenserve-bench-") as tmp,
            progress_bar("serving benchmark", len(steps), enabled=progress) as step_done,
        ):
            for index, step in enumerate(steps, 1):
                step_done(step.label(), False)
                wait_for_quiet(settings.quiet_wait_s, CONTENDED_CORES, console.print)
                started = time.monotonic()
                prefix = f"[{index}/{len(steps)}] {step.label()}:"
                if step.kind in ("offline", "pipeline"):
                    if loaded is None or loaded[0].name != step.model:
                        loaded = None  # free the previous model before loading the next
                        classifier = load_model(step.model, settings.torch_threads)
                        loaded = (classifier, preprocess_all(classifier, bodies))
                    # Each half gets half the time: the bracket costs no more than one point.
                    if step.kind == "pipeline":
                        offline = measure_pipeline(
                            loaded[0],
                            bodies,
                            step.batch_size,
                            sampler,
                            decode_workers=settings.decode_workers or decode_workers_default(),
                            duration_s=settings.duration_s / 2,
                            warmup_s=settings.warmup_s / 2,
                            half=step.half,
                        )
                    else:
                        offline = measure_offline(
                            loaded[0],
                            loaded[1],
                            step.batch_size,
                            sampler,
                            duration_s=settings.duration_s / 2,
                            warmup_s=settings.warmup_s / 2,
                            half=step.half,
                        )
                    result.offline.append(offline)
                    console.print(
                        f"{prefix} {offline.images_per_s:.1f} img/s, "
                        f"{offline.energy_j_per_image:.3g} J/image ({offline.energy_source}), "
                        f"{offline.cpu_cores:.2f} cores busy"
                        f"{_cpu_per_image(offline)}{_contention(offline.other_cpu_cores)} "
                        f"[{time.monotonic() - started:.0f} s]"
                    )
                    step_done(step.label(), True)
                    continue
                served = measure_served(step, settings, bodies, Path(tmp))
                result.served.append(served)
                energy = (
                    f", {served.energy_j_per_request:.3g} J/request ({served.energy_source}), "
                    f"mean batch {served.mean_batch_size:.1f}"
                    if served.energy_j_per_request is not None and served.mean_batch_size is not None
                    else ""
                )
                errors = f", ERRORS {served.errors}" if served.errors else ""
                console.print(
                    f"{prefix} {served.requests_per_s:.1f} req/s{energy}, "
                    f"p50 {served.latency_p50_ms:.0f} ms, p99 {served.latency_p99_ms:.0f} ms{errors}"
                    f"{_contention(served.other_cpu_cores)} "
                    f"[{time.monotonic() - started:.0f} s]"
                )
                step_done(step.label(), True)
    finally:
        sampler.stop()
        meter.close()
    return result


def _cpu_per_image(point: OfflinePoint) -> str:
    if point.stage != "pipeline":
        return ""
    return f" ({point.cpu_cores * point.wall_s / point.images * 1000:.2f} CPU ms/image)"


def _contention(other_cores: float | None) -> str:
    if other_cores is None or other_cores < CONTENDED_CORES:
        return ""
    return f" [yellow](contended: other processes used {other_cores:.2f} cores)[/yellow]"


def result_document(
    settings: BenchSettings, result: RunResult, *, started_at: str, elapsed_s: float
) -> dict[str, Any]:
    """What the JSON file holds: the settings, the machine, every point and their summary."""
    return {
        "benchmark": "serving",
        "version": 1,
        "started_at": started_at,
        "elapsed_s": elapsed_s,
        "energy_source": result.offline_energy_source,
        "watts_per_core": result.watts_per_core,
        "machine": machine_info(settings.torch_threads),
        "settings": asdict(settings),
        "offline": [asdict(p) for p in result.offline],
        "served": [asdict(p) for p in result.served],
        "summary": summarize(settings, result.offline, result.served),
    }


def write_result(document: dict[str, Any], path: Path) -> Path:
    """Write the result file atomically (a reader never sees half of it)."""
    return write_text_atomic(path, json.dumps(document, indent=2) + "\n")
