"""CPU affinity: the model's threads on cores of their own, everything else on the rest.

Measured on the development VM (2 cores, shufflenet_v2_x0_5, 1 torch thread, batches of 16 at
saturation): the model thread's CPU time per batch was the offline figure (73.7 ms), but a batch
took 81.4 ms of wall time: whenever the event loop, two decode threads and the load client were
runnable at once (each batch's answers and the next requests come together), the scheduler
shared the model's core among them, and the model, the server's bottleneck, waited. Pinned (the
model thread on one core, every other thread of the process on the other), a batch took 75.6 ms.

The plan (:func:`plan_cores`) gives the model the last ``model_threads`` CPUs the process may run
on (``os.sched_getaffinity``, so a container's cpuset is respected) and the front end (event loop,
decode threads, the energy sampler) the others; it pins nothing when no CPU would be left to the
front end. A thread created later inherits its creator's affinity: the decode pool's threads,
started by the event loop, land on the front end's cores; the model thread's intra-op (OpenMP)
workers, started by the model thread after it pinned itself, on the model's.

Linux only (``os.sched_setaffinity``); elsewhere :func:`plan_cores` returns ``None``. Under a CPU
*quota* smaller than the CPUs the process may run on (a Kubernetes CPU limit without the static CPU
manager: every node CPU allowed, a share of their time granted), particular CPUs are not the
process's to claim, so :func:`allowed_cpus` reports ``None`` there and nothing is pinned; with the
static CPU manager the cpuset is the pod's own and the quota matches it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CorePlan", "allowed_cpus", "cpu_quota", "pin_other_threads", "pin_this_thread", "plan_cores"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorePlan:
    model: frozenset[int]
    front: frozenset[int]

    def describe(self) -> str:
        return f"model thread(s) on CPU {_cpus(self.model)}, the front end on CPU {_cpus(self.front)}"


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_quota(path: Path = CGROUP_CPU_MAX) -> float | None:
    """The cgroup v2 CPU quota in CPUs (``cpu.max``: quota and period in µs), None when unlimited or
    unknown."""
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        return int(fields[0]) / int(fields[1])
    except ValueError:
        return None


def allowed_cpus(quota_path: Path = CGROUP_CPU_MAX) -> frozenset[int] | None:
    """The CPUs this process may run on and has the time of, or ``None`` where affinity is not
    supported or a CPU quota grants less than those CPUs (see the module docstring)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = frozenset(os.sched_getaffinity(0))
    quota = cpu_quota(quota_path)
    if quota is not None and quota < len(cpus):
        return None
    return cpus


def plan_cores(allowed: Iterable[int] | None, model_threads: int) -> CorePlan | None:
    """The model's ``model_threads`` CPUs (the highest numbered) and the front end's (the rest), or
    ``None`` when fewer than ``model_threads + 1`` CPUs are allowed."""
    if allowed is None:
        return None
    cpus = sorted(allowed)
    if model_threads < 1 or len(cpus) <= model_threads:
        return None
    return CorePlan(model=frozenset(cpus[-model_threads:]), front=frozenset(cpus[:-model_threads]))


def pin_this_thread(cpus: frozenset[int]) -> None:
    """The calling thread (Linux: pid 0 is the calling thread) runs on ``cpus`` only."""
    os.sched_setaffinity(0, cpus)


def pin_other_threads(cpus: frozenset[int], *, except_ids: Iterable[int] = ()) -> int:
    """Every thread of this process but ``except_ids`` (native ids) runs on ``cpus`` only; the
    number of threads moved. A thread that ended meanwhile is skipped."""
    skip = set(except_ids)
    moved = 0
    try:
        tids = [int(entry.name) for entry in Path("/proc/self/task").iterdir()]
    except OSError:
        return 0
    for tid in tids:
        if tid in skip:
            continue
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # ended between the listing and the call
            continue
        moved += 1
    return moved


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))
