"""The batch-configuration sweep: which batching settings cost the least energy per request at an
acceptable latency, for which model.

For each configuration of a grid (model × ``max_batch_size`` × ``max_wait_ms``, plus a "greedy"
mode per model) the sweep starts a real ``greenserve serve`` on a free loopback port, replays the
*same* trace against it with Locust in open-loop mode (:func:`loadgen.loadtest.run_trace`), reads
the figures from the responses and from the server's ``/metrics``, stops the server, and appends
one row to ``sweep.csv``. It talks to the service only over HTTP.

* **Resumable.** A configuration whose row is in the CSV with ``status == ok`` is skipped; a failed
  one (the server did not start, Locust failed) is recorded with its error and retried next time.
  Rows of another trace (its SHA-256 differs) are refused rather than mixed.
* **Greedy** ("take whatever is queued") is ``max_wait_ms = 0`` with ``max_batch_size`` equal to
  the largest size of the grid (``--greedy-max-batch-size`` to change it): a batch is cut as soon
  as the model is free, with everything that queued meanwhile. It is run once per model, whatever
  the waits.
* **The report** (``summary.md``, ``pareto.png``, ``energy-vs-batch.png``) is drawn from the CSV
  alone, so a finished or interrupted sweep can be redrawn with ``greenserve sweep --report-only``.
  The recommendation is, per model, the configuration with the lowest J/request among those whose
  p99 latency meets the user's target and which rejected nothing and failed nothing.
* **Two J/request figures**, each labelled with its source and what it holds (columns
  ``j_per_request_label`` and ``amortised_label``): ``j_per_request``, the energy the server
  *attributed* to the requests answered 200 (idle excluded; what the recommendation ranks), and
  ``amortised_j_per_request``, every device's energy over the run (idle included where the meter
  includes it) ÷ those requests: the operator's bill. A table written before the amortised columns
  existed is resumed as it is (its rows have no amortised figure) and rewritten with them.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadgen.errors import GridError
from loadgen.figures import OPTIONAL_FIGURES, RunFigures, amortised_label, attributed_label

logger = logging.getLogger(__name__)

GREEDY = "greedy"
#: The study's batch sizes, and the greedy mode.
DEFAULT_BATCH_SIZES: tuple[str, ...] = ("16", "32", "64", "128", GREEDY)
DEFAULT_MAX_WAITS_MS: tuple[float, ...] = (200.0, 1000.0)
DEFAULT_MODELS: tuple[str, ...] = ("digits_cnn", "shufflenet_v2_x0_5")
#: The study's request stream: 16 req/s ± 20 %.
DEFAULT_TRACE_RATE = 16.0
DEFAULT_TRACE_JITTER = 0.2
DEFAULT_TRACE_DURATION_S = 30.0
CSV_NAME = "sweep.csv"
CONFIG_COLUMNS = (
    "key",
    "model",
    "mode",
    "max_batch_size",
    "max_wait_ms",
    "max_queue",
    "timeout_ms",
    "weights",
    "device",
    "torch_threads",
)
RUN_COLUMNS = ("trace", "trace_sha256", "max_lag_ms", "late_requests", "wall_s", "status", "finished_at")
COLUMNS = (*CONFIG_COLUMNS, *RunFigures.field_names(), *RUN_COLUMNS)


@dataclass(frozen=True)
class SweepSettings:
    """The grid and what is fixed across it."""

    models: tuple[str, ...] = DEFAULT_MODELS
    batch_sizes: tuple[str, ...] = DEFAULT_BATCH_SIZES  # integers, or "greedy"
    max_waits_ms: tuple[float, ...] = DEFAULT_MAX_WAITS_MS
    greedy_max_batch_size: int | None = None  # default: the grid's largest size (128 if none)
    max_queue: int = 1024
    timeout_ms: float | None = None  # per-request deadline sent by the load generator
    weights: str | None = None  # default: embedded for digits_cnn, "random" for torchvision models
    device: str = "cpu"
    torch_threads: int = 1
    energy_source: str = "auto"
    images: str | None = None  # default: digits samples for digits_cnn, generated photos otherwise
    p99_target_ms: float = 500.0


@dataclass(frozen=True)
class SweepConfig:
    """One configuration of the grid."""

    model: str
    max_batch_size: int
    max_wait_ms: float
    greedy: bool = False

    @property
    def key(self) -> str:
        mode = GREEDY if self.greedy else f"w{self.max_wait_ms:g}"
        return f"{self.model}|b{self.max_batch_size}|{mode}"

    @property
    def label(self) -> str:
        return (
            f"greedy (b≤{self.max_batch_size})"
            if self.greedy
            else f"b{self.max_batch_size} w{self.max_wait_ms:g}ms"
        )

    @property
    def slug(self) -> str:
        """The key as a directory name."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.key)


def check_model(name: str) -> None:
    """:class:`GridError` unless ``name`` is a model greenserve can serve (the server's own check)."""
    from service.errors import ConfigurationError
    from service.model import check_model_name

    try:
        check_model_name(name)
    except ConfigurationError as exc:
        raise GridError(str(exc)) from None


def configurations(settings: SweepSettings) -> list[SweepConfig]:
    """The grid's configurations in run order (model by model); :class:`GridError` on a bad grid."""
    if not settings.models:
        raise GridError("no models to sweep")
    if not settings.batch_sizes:
        raise GridError("no batch sizes to sweep")
    sizes: list[int] = []
    greedy = False
    for raw in settings.batch_sizes:
        text = str(raw).strip().lower()
        if text == GREEDY:
            greedy = True
            continue
        try:
            size = int(text)
        except ValueError:
            raise GridError(f"batch size {raw!r} is neither an integer nor {GREEDY!r}") from None
        if not 1 <= size <= 4096:
            raise GridError(f"batch size {size} is outside 1..4096")
        if size in sizes:
            raise GridError(f"batch size {size} is listed twice")
        sizes.append(size)
    waits: list[float] = []
    for wait in settings.max_waits_ms:
        if not (math.isfinite(wait) and 0 <= wait <= 60_000):
            raise GridError(f"max wait {wait:g} ms is outside 0..60000")
        if wait in waits:
            raise GridError(f"max wait {wait:g} ms is listed twice")
        waits.append(wait)
    if sizes and not waits:
        raise GridError("no max waits to sweep")
    greedy_size = settings.greedy_max_batch_size or (max(sizes) if sizes else 128)
    if not 1 <= greedy_size <= 4096:
        raise GridError(f"greedy max batch size {greedy_size} is outside 1..4096")
    if len(set(settings.models)) != len(settings.models):
        raise GridError("a model is listed twice")
    if settings.max_queue < 1:
        raise GridError(f"max queue {settings.max_queue} must be at least 1")
    if settings.p99_target_ms <= 0:
        raise GridError(f"p99 target {settings.p99_target_ms:g} ms must be positive")
    configs: list[SweepConfig] = []
    for model in settings.models:
        check_model(model)
        configs += [SweepConfig(model, size, wait) for size in sizes for wait in waits]
        if greedy:
            configs.append(SweepConfig(model, greedy_size, 0.0, greedy=True))
    return configs


def weights_for(model: str, settings: SweepSettings) -> str | None:
    """The weights to serve: the user's, else embedded (digits_cnn) or random (energy needs no weights)."""
    if settings.weights is not None:
        return settings.weights
    return None if model in ("digits_cnn", "noop") or ":" in model else "random"


def images_for(model: str, settings: SweepSettings) -> str:
    from loadgen.images import default_sample_for

    return settings.images or default_sample_for(model)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the CSV ----------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, str]]:
    """The sweep's rows ([] when the file does not exist); a foreign CSV is a :class:`GridError`."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or ()) - set(OPTIONAL_FIGURES)
        if missing:
            raise GridError(
                f"{path} is not a sweep CSV of this version (missing {', '.join(sorted(missing))})"
            )
        # A table from before the amortised figure: its rows have none (empty cells when rewritten).
        return [{**dict.fromkeys(OPTIONAL_FIGURES, ""), **row} for row in reader]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite the CSV atomically (a temporary file, then a rename: never a half-written file)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: _cell(row.get(name)) for name in COLUMNS})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    tmp.replace(path)


def _float(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    return float(text)


# --- running ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    csv_path: Path
    ran: int
    skipped: int
    failed: int
    outputs: list[Path]


RunConfig = Callable[[SweepConfig, SweepSettings, Path, Path], dict[str, Any]]


def run_config(
    config: SweepConfig, settings: SweepSettings, trace_path: Path, out_dir: Path
) -> dict[str, Any]:
    """Serve ``config``, replay the trace against it, and return the row's run fields."""
    from loadgen.loadtest import run_trace
    from studies.kit.server import greenserve_argv, running_server, server_env

    run_dir = out_dir / "runs" / config.slug
    run_dir.mkdir(parents=True, exist_ok=True)

    def argv(port: int) -> list[str]:
        return greenserve_argv(
            port,
            model=config.model,
            weights=weights_for(config.model, settings),
            device=settings.device,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            max_queue=settings.max_queue,
            torch_threads=settings.torch_threads,
            energy_source=settings.energy_source,
            drain_timeout_s=10.0,
            access_log=False,
            log_level="warning",
        )

    started = time.monotonic()
    with running_server(argv, name="greenserve", workdir=run_dir, env=server_env()) as server:
        summary = run_trace(
            server.base_url,
            trace_path,
            run_dir,
            images=images_for(config.model, settings),
            timeout_ms=settings.timeout_ms,
        )
    row: dict[str, Any] = dataclasses.asdict(summary.figures)
    row["max_lag_ms"] = summary.max_lag_ms
    row["late_requests"] = summary.late_requests
    row["wall_s"] = time.monotonic() - started
    return row


def config_row(config: SweepConfig, settings: SweepSettings) -> dict[str, Any]:
    return {
        "key": config.key,
        "model": config.model,
        "mode": GREEDY if config.greedy else "wait",
        "max_batch_size": config.max_batch_size,
        "max_wait_ms": config.max_wait_ms,
        "max_queue": settings.max_queue,
        "timeout_ms": settings.timeout_ms,
        "weights": weights_for(config.model, settings) or "embedded",
        "device": settings.device,
        "torch_threads": settings.torch_threads,
    }


def run_sweep(
    settings: SweepSettings,
    trace_path: Path,
    out_dir: Path,
    *,
    runner: RunConfig = run_config,
    progress: bool = True,
) -> SweepResult:
    """Run every configuration not yet in ``out_dir/sweep.csv``, then draw the report."""
    configs = configurations(settings)
    from loadgen.trace import read_trace

    trace = read_trace(trace_path)  # a bad trace fails before any server starts
    sha = file_sha256(trace_path)
    csv_path = out_dir / CSV_NAME
    rows = read_rows(csv_path)
    foreign = {row["trace_sha256"] for row in rows} - {sha}
    if foreign:
        raise GridError(
            f"{csv_path} holds results of another trace; resume only with the same trace, "
            "or use another --out"
        )
    done = {row["key"] for row in rows if row["status"] == "ok"}
    pending = [config for config in configs if config.key not in done]
    skipped = len(configs) - len(pending)
    if skipped:
        logger.info("resuming: %d of %d configurations already in %s", skipped, len(configs), csv_path)
    failed = 0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("sweep", total=len(pending))
        for config in pending:
            bar.update(task, description=f"{config.model} {config.label}")
            row = config_row(config, settings)
            row["trace"] = str(trace_path)
            row["trace_sha256"] = sha
            try:
                row.update(runner(config, settings, trace_path, out_dir))
                row["status"] = "ok"
            except Exception as exc:  # one configuration's failure must not end the sweep
                failed += 1
                logger.error("%s failed: %s", config.key, exc)
                row["status"] = (
                    f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                )
                row["requests"] = len(trace)
            row["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            rows = [r for r in rows if r["key"] != config.key] + [row]
            write_rows(csv_path, rows)
            bar.advance(task)
    outputs = write_report(csv_path, out_dir, p99_target_ms=settings.p99_target_ms)
    return SweepResult(csv_path, len(pending), skipped, failed, outputs)


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One ok row of the CSV, as numbers."""

    key: str
    model: str
    greedy: bool
    max_batch_size: int
    max_wait_ms: float
    p99_ms: float
    j_per_request: float
    energy_source: str
    throughput_rps: float
    mean_batch_size: float | None
    rejected: int
    errors: int
    amortised_j_per_request: float | None = None
    amortised_energy_source: str | None = None

    @property
    def label(self) -> str:
        return SweepConfig(self.model, self.max_batch_size, self.max_wait_ms, self.greedy).label

    @property
    def clean(self) -> bool:
        """Nothing rejected, nothing failed."""
        return self.rejected == 0 and self.errors == 0


def points_from_rows(rows: Sequence[Mapping[str, str]]) -> list[Point]:
    points = []
    for row in rows:
        p99 = _float(row["latency_p99_ms"])
        joules = _float(row["j_per_request"])
        if row["status"] != "ok" or p99 is None or joules is None:
            continue
        points.append(
            Point(
                key=row["key"],
                model=row["model"],
                greedy=row["mode"] == GREEDY,
                max_batch_size=int(row["max_batch_size"]),
                max_wait_ms=float(row["max_wait_ms"]),
                p99_ms=p99,
                j_per_request=joules,
                energy_source=row["energy_source"],
                throughput_rps=float(row["throughput_rps"]),
                mean_batch_size=_float(row["mean_batch_size"]),
                rejected=int(row["rejected_queue_full"]) + int(row["rejected_deadline"]),
                errors=int(row["errors"]),
                amortised_j_per_request=_float(row.get("amortised_j_per_request")),
                amortised_energy_source=row.get("amortised_energy_source") or None,
            )
        )
    return points


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """Points no other point beats on both p99 and J/request (ties kept), by increasing p99."""
    front = [
        p
        for p in points
        if not any(
            (q.p99_ms <= p.p99_ms and q.j_per_request <= p.j_per_request)
            and (q.p99_ms < p.p99_ms or q.j_per_request < p.j_per_request)
            for q in points
        )
    ]
    return sorted(front, key=lambda p: (p.p99_ms, p.j_per_request))


def recommend(points: Sequence[Point], p99_target_ms: float) -> Point | None:
    """The lowest-J/request clean point meeting the p99 target (ties: the lower p99), or None."""
    eligible = [p for p in points if p.clean and p.p99_ms <= p99_target_ms]
    return min(eligible, key=lambda p: (p.j_per_request, p.p99_ms)) if eligible else None


#: Two configurations whose mean batch sizes differ by less than this formed the same batches.
SAME_BATCHES = 0.05


def same_batches(best: Point, points: Sequence[Point]) -> list[Point]:
    """Other clean configurations of ``best``'s model that formed the same batches (the cap did not
    bind, or bound alike): their energy cannot differ for a reason the setting explains."""
    if best.mean_batch_size is None:
        return []
    return [
        p
        for p in points
        if p.key != best.key
        and p.clean
        and p.mean_batch_size is not None
        and abs(p.mean_batch_size / best.mean_batch_size - 1) < SAME_BATCHES
        and abs(p.p99_ms / best.p99_ms - 1) < 0.25
    ]


def _sources(points: Sequence[Point], *, amortised: bool = False) -> str:
    found = {p.amortised_energy_source if amortised else p.energy_source for p in points}
    return "/".join(sorted(s for s in found if s)) or "no source"


def attributed_axis(points: Sequence[Point]) -> str:
    """The attributed J/request's axis label: ``J/request (rapl, attributed, idle excluded)``."""
    source = _sources(points)
    return f"J/request ({source}, {attributed_label(source)})"


def amortised_axis(points: Sequence[Point]) -> str:
    source = _sources(points, amortised=True)
    return f"J/request ({source}, {amortised_label(source)})"


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(path)
    return path


def plot_pareto(points: Sequence[Point], path: Path, p99_target_ms: float) -> Path:
    """J/request against p99 latency, one panel per model, the Pareto front joined and highlighted."""
    from matplotlib.figure import Figure

    models = sorted({p.model for p in points})
    fig = Figure(figsize=(6 * len(models), 4.5), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models, strict=True):
        mine = [p for p in points if p.model == model]
        front = pareto_front(mine)
        ax.scatter(
            [p.p99_ms for p in mine], [p.j_per_request for p in mine], color="0.6", label="configuration"
        )
        ax.plot(
            [p.p99_ms for p in front],
            [p.j_per_request for p in front],
            "o-",
            color="tab:green",
            label="Pareto front",
        )
        for p in mine:
            ax.annotate(
                p.label, (p.p99_ms, p.j_per_request), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        ax.axvline(
            p99_target_ms,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"p99 target {p99_target_ms:g} ms",
        )
        best = recommend(mine, p99_target_ms)
        if best is not None:
            ax.scatter([best.p99_ms], [best.j_per_request], s=160, facecolors="none", edgecolors="tab:red")
        ax.set_xscale("log")
        ax.set_xlabel("p99 latency (ms, from the scheduled start)")
        ax.set_ylabel(attributed_axis(mine))
        ax.set_title(model)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_energy_vs_batch(points: Sequence[Point], path: Path) -> Path:
    """J/request against max_batch_size (one line per max wait, greedy as stars), one panel per model:
    the attributed figure solid, the amortised one (where measured) dashed in the same colour."""
    from matplotlib.figure import Figure

    models = sorted({p.model for p in points})
    fig = Figure(figsize=(6 * len(models), 4.5), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models, strict=True):
        mine = [p for p in points if p.model == model]
        for wait in sorted({p.max_wait_ms for p in mine if not p.greedy}):
            line = sorted(
                (p for p in mine if not p.greedy and p.max_wait_ms == wait), key=lambda p: p.max_batch_size
            )
            (drawn,) = ax.plot(
                [p.max_batch_size for p in line],
                [p.j_per_request for p in line],
                "o-",
                label=f"max wait {wait:g} ms, attributed",
            )
            amortised = [p for p in line if p.amortised_j_per_request is not None]
            if amortised:
                ax.plot(
                    [p.max_batch_size for p in amortised],
                    [p.amortised_j_per_request for p in amortised],
                    "s--",
                    color=drawn.get_color(),
                    alpha=0.7,
                    label=f"max wait {wait:g} ms, amortised",
                )
        greedy = [p for p in mine if p.greedy]
        if greedy:
            ax.scatter(
                [p.max_batch_size for p in greedy],
                [p.j_per_request for p in greedy],
                marker="*",
                s=120,
                label="greedy, attributed",
            )
            amortised = [p for p in greedy if p.amortised_j_per_request is not None]
            if amortised:
                ax.scatter(
                    [p.max_batch_size for p in amortised],
                    [p.amortised_j_per_request for p in amortised],
                    marker="*",
                    s=120,
                    facecolors="none",
                    edgecolors="0.3",
                    label="greedy, amortised",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("max_batch_size")
        ylabel = attributed_axis(mine)
        if any(p.amortised_j_per_request is not None for p in mine):
            ylabel += f"\ndashed: {amortised_axis(mine)}"
        ax.set_ylabel(ylabel)
        ax.set_title(model)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def render_summary(rows: Sequence[Mapping[str, str]], p99_target_ms: float) -> str:
    """The Markdown summary: a table per model (by J/request), the front and the recommendation."""
    points = points_from_rows(rows)
    failed = [row for row in rows if row["status"] != "ok"]
    sources = sorted({p.energy_source for p in points})
    lines = ["# Batch-configuration sweep", ""]
    traces = sorted({row["trace"] for row in rows})
    lines.append(
        f"Trace: {', '.join(traces)}; p99 target: {p99_target_ms:g} ms; energy source: {', '.join(sources)}."
    )
    parts = {part for source in sources for part in source.split("+")}
    if "estimate" in parts:
        lines.append(
            "Energy is an *estimate* (no sensor here): CPU time × watts per core, see docs/energy.md."
        )
    if "synthetic" in parts:
        lines.append("Energy is *synthetic* (a known-truth test source), not a measurement of this machine.")
    lines.append("")
    lines.append(
        f"Two J/request figures: **attributed** ({attributed_axis(points)}) is the energy the server "
        "charged to the requests answered 200 (their batches' model share, decode and serving), what "
        "the recommendation ranks; **amortised** ("
        + (amortised_axis(points) if any(p.amortised_j_per_request is not None for p in points) else "n/a")
        + ") is every device's energy over the run ÷ those requests, the operator's bill."
    )
    lines.append("")
    for model in sorted({p.model for p in points}):
        mine = [p for p in points if p.model == model]
        front = {p.key for p in pareto_front(mine)}
        best = recommend(mine, p99_target_ms)
        lines += [f"## {model}", ""]
        lines.append(
            f"| configuration | {attributed_axis(mine)} | {amortised_axis(mine)} | p99 ms "
            "| throughput req/s | mean batch | rejected | errors | Pareto |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for p in sorted(mine, key=lambda p: p.j_per_request):
            mark = "**" if best is not None and p.key == best.key else ""
            lines.append(
                f"| {mark}{p.label}{mark} | {p.j_per_request:.4g} | {_fmt(p.amortised_j_per_request, '.4g')} "
                f"| {p.p99_ms:.4g} | {p.throughput_rps:.3g} | "
                f"{_fmt(p.mean_batch_size)} | {p.rejected} | {p.errors} | {'yes' if p.key in front else ''} |"
            )
        lines.append("")
        if best is None:
            fastest = min(mine, key=lambda p: p.p99_ms)
            lines.append(
                f"No configuration meets p99 ≤ {p99_target_ms:g} ms without rejections; the lowest p99 is "
                f"{fastest.label} ({fastest.p99_ms:.4g} ms, {fastest.j_per_request:.4g} J/request, "
                f"{fastest.energy_source}, {attributed_label(fastest.energy_source)})."
            )
        else:
            amortised = (
                f"; amortised {best.amortised_j_per_request:.4g} J/request ({best.amortised_energy_source}, "
                f"{amortised_label(best.amortised_energy_source)})"
                if best.amortised_j_per_request is not None
                else ""
            )
            lines.append(
                f"Recommendation: **{best.label}** — {best.j_per_request:.4g} J/request "
                f"({best.energy_source}, {attributed_label(best.energy_source)}) "
                f"at p99 {best.p99_ms:.4g} ms, the lowest energy meeting the target{amortised}."
            )
            twins = same_batches(best, mine)
            if twins:
                gaps = ", ".join(f"{p.j_per_request / best.j_per_request - 1:+.0%}" for p in twins)
                lines.append(
                    f"{', '.join(p.label for p in twins)} formed the same batches (mean batch within "
                    f"{SAME_BATCHES:.0%}): their J/request differs from it by {gaps}, which is run-to-run "
                    "noise, not a property of the setting; among them, the smallest cap bounds memory best."
                )
        lines.append("")
    if failed:
        lines += ["## Failed configurations", ""]
        lines += [f"- {row['key']}: {row['status']}" for row in failed]
        lines.append("")
    return "\n".join(lines)


def write_report(csv_path: Path, out_dir: Path, *, p99_target_ms: float) -> list[Path]:
    """``summary.md`` and the plots, from the CSV alone."""
    rows = read_rows(csv_path)
    points = points_from_rows(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / "summary.md"
    tmp = summary.with_name(f".summary.{os.getpid()}.tmp")
    tmp.write_text(render_summary(rows, p99_target_ms), encoding="utf-8")
    tmp.replace(summary)
    outputs = [summary]
    if points:
        outputs.append(plot_pareto(points, out_dir / "pareto.png", p99_target_ms))
        outputs.append(plot_energy_vs_batch(points, out_dir / "energy-vs-batch.png"))
    return outputs
