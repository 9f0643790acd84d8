"""``greenserve profile``: a model's offline latency and energy per batch size, saved as CSV or JSON.

``greenserve profile --model digits_cnn --batch-sizes 1,16,32,64,128 --out results/profile-digits_cnn.csv``

Says what it will measure and about how long it takes, shows a progress bar over the batch sizes,
prints a table and writes the profile that ``greenserve simulate --profile`` reads. The flags are
generated from :class:`~studies.profile.settings.ProfileSettings` (``--threads`` stays an alias of
``--torch-threads``). Bad input (an unknown model, bad batch sizes, an energy source that cannot
start) is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from energy import SOURCE_CHOICES
from energy.profile import DEFAULT_BATCH_SIZES
from studies.kit.commands import OneLineParser, run_handler
from studies.kit.flags import add_dataclass_flags, dataclass_from_args
from studies.profile.settings import ALLOCATORS, ProfileSettings, parse_batch_sizes

DESCRIPTION = "Offline model profile: latency and J/image per batch size (no HTTP)."


def build_parser(prog: str = "greenserve profile") -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description=DESCRIPTION)
    add_dataclass_flags(parser, ProfileSettings, skip=("batch_sizes", "energy_source", "allocator"))
    # By hand: batch sizes with their own messages, and the choices of the other two in --help.
    parser.add_argument(
        "--batch-sizes",
        default=",".join(map(str, DEFAULT_BATCH_SIZES)),
        help="comma-separated batch sizes (default: %(default)s)",
    )
    parser.add_argument(
        "--energy-source",
        choices=SOURCE_CHOICES,
        default=None,
        help=(
            "meter of the batches (auto: nvml on a GPU, else rapl, else estimate); the decode is priced "
            "by the CPU side (rapl, else estimate, or this source when it is a CPU one) (default: auto)"
        ),
    )
    parser.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default=None,
        help="C heap policy, as the server's --allocator (default: reuse)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def settings_from_args(args: argparse.Namespace) -> ProfileSettings:
    """The settings the flags give (a :class:`~loadgen.errors.ProfileError` for a bad value)."""
    sizes = parse_batch_sizes(args.batch_sizes)
    settings: ProfileSettings = dataclass_from_args(
        ProfileSettings, argparse.Namespace(**{**vars(args), "batch_sizes": sizes})
    )
    return settings


def handle(args: argparse.Namespace) -> int:
    from rich.console import Console

    from studies.profile.report import render
    from studies.profile.run import run_profile

    profile, out = run_profile(settings_from_args(args), progress=not args.no_progress)
    console = Console()
    render(profile, console)
    console.print(f"saved {out}")
    return 0


def run(name: str, argv: Sequence[str]) -> int:
    """The front door's entry: ``greenserve profile <argv…>``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser(f"greenserve {name}")
    return run_handler(parser.prog, handle, parser.parse_args(list(argv)))
