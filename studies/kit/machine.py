"""What else the machine is doing: CPU time of processes and of the whole machine (Linux ``/proc``).

A measurement shares its cores with the server it measures and, on shared hosts, with strangers.
These readings let every point say how busy the client, the server and everyone else were (the
serving benchmark's points, the energy-accounting benchmark's truth). Off Linux the functions
return None and the figures are left out.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # fields after "(comm)", starting at field 3
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_cpu_s() -> float | None:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in first[1:8])
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


def other_cpu_cores(sample_s: float = 1.0) -> float | None:
    """Cores kept busy by processes other than this one, measured over ``sample_s``."""
    machine0, own0 = machine_busy_cpu_s(), time.process_time()
    time.sleep(sample_s)
    machine_s = delta(machine0, machine_busy_cpu_s())
    if machine_s is None:
        return None
    return max(0.0, machine_s - (time.process_time() - own0)) / sample_s


def wait_for_quiet(max_wait_s: float, threshold_cores: float, say: Callable[[str], None]) -> None:
    """Wait (up to ``max_wait_s``) until other processes use less than ``threshold_cores``.

    The machine may be shared (CI runners, other sessions): a point measured while another
    process keeps a core busy says little about greenserve. Not waiting forever keeps the run's
    length bounded; a point that is still contended is flagged in the output instead.
    """
    if max_wait_s <= 0:
        return
    started = time.monotonic()
    waiting = False
    while True:
        cores = other_cpu_cores()
        if cores is None or cores < threshold_cores:
            if waiting:
                say(f"  quiet after {time.monotonic() - started:.0f} s")
            return
        if time.monotonic() - started >= max_wait_s:
            say(f"  [yellow]other processes still use {cores:.2f} cores; measuring anyway[/yellow]")
            return
        if not waiting:
            say(f"  [yellow]other processes use {cores:.2f} cores; waiting up to {max_wait_s:g} s[/yellow]")
            waiting = True


def machine_info(torch_threads: int) -> dict[str, Any]:
    import torch
    import torchvision

    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch_threads,
    }
