"""The generators by name, with what a command line needs to offer them (the torchvision registry
habit): ``greenserve trace generate KIND`` builds its flags from :data:`GENERATORS`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from loadgen.errors import TraceError
from loadgen.trace.arrivals import Trace
from loadgen.trace.generators import bursty, diurnal, poisson, ramp, step, uniform_jitter


@dataclass(frozen=True)
class Param:
    """One parameter of a generator: its keyword, command-line flag, help, type and default."""

    name: str
    help: str
    default: float | int | tuple[float, ...] | None = None  # None: required
    kind: Literal["float", "int", "floats"] = "float"
    flag: str = ""  # default: --name with dashes

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class TraceKind:
    """A generator by name, with what the CLI needs to offer it (the torchvision registry habit)."""

    name: str
    build: Callable[..., Trace]
    summary: str
    params: tuple[Param, ...]

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


def _duration(default: float = 60.0) -> Param:
    # --duration-s, the common name; --duration, its old spelling, stays an alias (studies.kit.flags).
    return Param("duration_s", "Length of the trace (s).", default)


_SEED = Param("seed", "Random seed: the same seed gives the same trace.", 0, "int")

#: Every generator by name (the names of ``greenserve trace generate KIND``).
GENERATORS: Mapping[str, TraceKind] = {
    kind.name: kind
    for kind in (
        TraceKind(
            "poisson",
            poisson,
            "Poisson arrivals (exponential inter-arrival times).",
            (Param("rate", "Mean arrival rate (req/s).", 16.0), _duration(), _SEED),
        ),
        TraceKind(
            "uniform-jitter",
            uniform_jitter,
            "Nearly periodic arrivals: each gap within ±jitter of 1/rate (the study: 16 req/s ±20 %).",
            (
                Param("rate", "Nominal arrival rate (req/s).", 16.0),
                Param("jitter", "Largest deviation of a gap, as a fraction of the period, in [0, 1).", 0.2),
                _duration(),
                _SEED,
            ),
        ),
        TraceKind(
            "bursty",
            bursty,
            "On/off bursts: a two-state Markov-modulated Poisson process.",
            (
                Param("rate_on", "Arrival rate while on (req/s).", 48.0),
                Param("rate_off", "Arrival rate while off (req/s; may be 0).", 4.0),
                Param("mean_on_s", "Mean length of an on period (s; exponential).", 2.0, flag="--mean-on"),
                Param("mean_off_s", "Mean length of an off period (s; exponential).", 6.0, flag="--mean-off"),
                _duration(),
                _SEED,
            ),
        ),
        TraceKind(
            "ramp",
            ramp,
            "Poisson arrivals with a rate changing linearly from start to end.",
            (
                Param("start_rate", "Rate at the start (req/s).", 1.0),
                Param("end_rate", "Rate at the end (req/s).", 32.0),
                _duration(),
                _SEED,
            ),
        ),
        TraceKind(
            "step",
            step,
            "Poisson arrivals at piecewise-constant rates, one per step.",
            (
                Param("rates", "Rate of each step (req/s), in order.", (4.0, 8.0, 16.0, 32.0), "floats"),
                Param("step_s", "Length of each step (s).", 15.0, flag="--step"),
                _SEED,
            ),
        ),
        TraceKind(
            "diurnal",
            diurnal,
            "A day compressed into one period: sinusoidal rate, trough at the start, peak mid-period.",
            (
                Param("mean_rate", "Mean rate over a period (req/s).", 16.0),
                Param("peak_to_trough", "Ratio of the peak rate to the trough rate (≥ 1).", 4.0),
                Param("period_s", "Length of one compressed day (s).", 60.0, flag="--period"),
                _duration(120.0),
                _SEED,
            ),
        ),
    )
}


def get_generator(name: str) -> TraceKind:
    try:
        return GENERATORS[name]
    except KeyError:
        raise TraceError(f"unknown trace kind {name!r}; choose from {', '.join(GENERATORS)}") from None


def generate(name: str, **params: Any) -> Trace:
    """The trace of generator ``name``; parameters not given take the registry's defaults."""
    kind = get_generator(name)
    unknown = set(params) - set(kind.param_names)
    if unknown:
        raise TraceError(
            f"unknown parameter(s) {', '.join(sorted(unknown))} for {name}; "
            f"expected {', '.join(kind.param_names)}"
        )
    values: dict[str, Any] = {}
    for param in kind.params:
        value = params.get(param.name, param.default)
        if value is None:
            raise TraceError(f"{name} needs {param.name} ({param.option})")
        values[param.name] = value
    return kind.build(**values)
