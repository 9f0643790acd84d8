"""``greenserve profile``: a model's offline latency and energy per batch size, saved as CSV or JSON.

``greenserve profile --model digits_cnn --batch-sizes 1,16,32,64,128 --out results/profile-digits_cnn.csv``

Prints a table and writes the profile that ``greenserve simulate --profile`` reads. Bad input (an
unknown model, bad batch sizes, an energy source that cannot start) is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rich.console import Console
from rich.table import Table

from energy import SOURCE_CHOICES
from loadgen.errors import ProfileError
from loadgen.profile import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_IDLE_S,
    DEFAULT_IMAGES,
    DEFAULT_MIN_TIME_S,
    DEFAULT_REPEATS,
    DEFAULT_WARMUP,
    ModelProfile,
    profile_model,
    write_profile,
)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,16,32"`` → ``(1, 16, 32)``; anything else is a :class:`ProfileError` naming the bad part."""
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            size = int(part)
        except ValueError:
            raise ProfileError(f"--batch-sizes: {part!r} is not an integer (expected e.g. 1,16,32)") from None
        if size < 1:
            raise ProfileError(f"--batch-sizes: {size} is not >= 1")
        sizes.append(size)
    if not sizes:
        raise ProfileError(f"--batch-sizes: no batch size in {text!r}")
    return tuple(sizes)


def default_out(model: str) -> Path:
    """``results/profile-<model>.csv``, the model name made safe for a file name (``module:factory``)."""
    return Path("results") / f"profile-{re.sub(r'[^A-Za-z0-9_.-]+', '_', model)}.csv"


def render(profile: ModelProfile, console: Console) -> None:
    table = Table(
        title=(
            f"{profile.model} on {profile.device} (weights {profile.weights or 'default'}, "
            f"torch threads {profile.torch_threads or 'default'}); batch energy: {profile.energy_label}"
        )
    )
    for column in ("batch", "timed", "ms mean", "p50", "p99", "std", "img/s", "J/batch", "J/img"):
        table.add_column(column, justify="right")
    for p in profile.points:
        table.add_row(
            str(p.batch_size),
            str(p.batches),
            f"{p.latency_mean_ms:.3g}",
            f"{p.latency_p50_ms:.3g}",
            f"{p.latency_p99_ms:.3g}",
            f"{p.latency_std_ms:.2g}",
            f"{p.images_per_s:.0f}",
            f"{p.energy_j_per_batch:.3g}",
            f"{p.energy_j_per_image:.3g}",
        )
    console.print(table)
    if profile.preprocess_ms_per_image is not None and profile.preprocess_j_per_image is not None:
        console.print(
            f"decode + preprocess per image: {profile.preprocess_ms_per_image:.3g} ms, "
            f"{profile.preprocess_j_per_image:.3g} J ({profile.preprocess_energy_label})"
        )
    elif profile.preprocess_ms_per_image is not None:
        console.print(
            f"decode + preprocess per image: {profile.preprocess_ms_per_image:.3g} ms, energy unknown "
            f"({profile.preprocess_energy_source or 'no source'})"
        )
    for note in profile.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def _run(args: argparse.Namespace) -> int:
    sizes = parse_batch_sizes(args.batch_sizes)
    out: Path = args.out or default_out(args.model)
    if out.suffix.lower() not in (".csv", ".json"):
        raise ProfileError(f"--out {out}: use a .csv or .json file name")
    profile = profile_model(
        args.model,
        weights=args.weights,
        device=args.device,
        batch_sizes=sizes,
        warmup=args.warmup,
        repeats=args.repeats,
        min_time_s=args.min_time_s,
        torch_threads=args.torch_threads,
        energy_source=args.energy_source,
        allocator=args.allocator,
        watts_per_core=args.watts_per_core,
        image_source=args.images,
        images=args.image_count,
        idle_s=args.idle_s,
    )
    console = Console()
    render(profile, console)
    write_profile(profile, out)
    console.print(f"saved {out}")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="digits_cnn", help="Model, as greenserve serve --model.")
    parser.add_argument(
        "--weights",
        default=None,
        help="As greenserve serve --weights (default: embedded for digits_cnn, 'random' for others).",
    )
    parser.add_argument("--device", default="cpu", help="Torch device: cpu, cuda, cuda:N, mps.")
    parser.add_argument(
        "--batch-sizes",
        default=",".join(map(str, DEFAULT_BATCH_SIZES)),
        help="Comma-separated batch sizes (default: %(default)s).",
    )
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="Untimed batches per size.")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="Least timed batches per size.")
    parser.add_argument(
        "--min-time-s",
        type=float,
        default=DEFAULT_MIN_TIME_S,
        help="Least timed seconds per size: a slow energy counter needs time (default: %(default)s).",
    )
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (as served).")
    parser.add_argument(
        "--energy-source",
        choices=SOURCE_CHOICES,
        default="auto",
        help=(
            "Meter of the batches (auto: nvml on a GPU, else rapl, else estimate); the decode is priced "
            "by the CPU side (rapl, else estimate, or this source when it is a CPU one)."
        ),
    )
    parser.add_argument(
        "--allocator",
        choices=("reuse", "system"),
        default="reuse",
        help="C heap policy, as the server's --allocator (default: %(default)s).",
    )
    parser.add_argument(
        "--watts-per-core", type=float, default=None, help="Estimate and synthetic sources only."
    )
    parser.add_argument(
        "--idle-s",
        type=float,
        default=DEFAULT_IDLE_S,
        help="RAPL: seconds of idle power measured first, the decode priced above it (default: %(default)s).",
    )
    parser.add_argument(
        "--images",
        default=None,
        help="Inputs: a sample set (digits, photos) or a directory (default: what suits the model).",
    )
    parser.add_argument("--image-count", type=int, default=DEFAULT_IMAGES, help="Images to decode and cycle.")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Profile file, .csv or .json (default: results/profile-MODEL.csv).",
    )
    parser.set_defaults(handler=_run)
