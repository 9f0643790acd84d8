"""Arrival traces: when each request starts, in seconds from the start of the run.

A trace is a file, one arrival per line, in time order:

* **JSON Lines** (``.jsonl``, ``.ndjson``): ``{"t": 0.0625}`` or ``{"t": 0.0625, "image_id": "cat.jpg"}``;
* **CSV** (``.csv``): a header ``t`` or ``t,image_id``, then one row per arrival.

``t`` is a finite number ≥ 0, never smaller than the previous line's (equal times are simultaneous
arrivals). ``image_id`` (optional) names the image to send: a file name of the image directory, or
a sample id (``digits-3``, ``photo-17``); without it, images are taken round-robin. Blank lines
are ignored. Anything else is a :class:`TraceError` naming the file and line.

Traces come from three places: a file written by hand or by another tool (:mod:`.files`); a
**generator** (:mod:`.generators`: :func:`poisson`, :func:`uniform_jitter`, :func:`bursty`,
:func:`ramp`, :func:`step`, :func:`diurnal`; by name through :data:`GENERATORS` and
:func:`generate`, :mod:`.registry`), each a pure function of its parameters and a seed; or a
server's **recording** of real traffic (``greenserve serve --record-trace FILE``,
:mod:`service.recording`), written in the same JSON Lines format so that it replays as is.
:func:`trace_stats` (:mod:`.stats`) summarises any of them. The formulas are in ``docs/traces.md``.
"""

from loadgen.trace.arrivals import MAX_ARRIVALS, Times, Trace
from loadgen.trace.files import CSV_SUFFIXES, JSONL_SUFFIXES, read_trace, write_trace
from loadgen.trace.generators import bursty, bursty_mean_rate, diurnal, poisson, ramp, step, uniform_jitter
from loadgen.trace.registry import GENERATORS, Param, TraceKind, generate, get_generator
from loadgen.trace.stats import TraceStats, trace_stats, window_rates

__all__ = [
    "CSV_SUFFIXES",
    "GENERATORS",
    "JSONL_SUFFIXES",
    "MAX_ARRIVALS",
    "Param",
    "Times",
    "Trace",
    "TraceKind",
    "TraceStats",
    "bursty",
    "bursty_mean_rate",
    "diurnal",
    "generate",
    "get_generator",
    "poisson",
    "ramp",
    "read_trace",
    "step",
    "trace_stats",
    "uniform_jitter",
    "window_rates",
    "write_trace",
]
