"""CPU clocks: of this process, of the whole machine, and of single threads (by native id).

These are the denominators and numerators of the CPU-time ratio by which a CPU package's energy is
shared among consumers (the Kepler and Scaphandre model, docs/energy.md): a stage's energy is the
package's energy per CPU-second times the CPU time the stage used. Every function here reads a
clock (a system call of well under a microsecond, or one small /proc file), never an energy meter,
so they may be called on a request's path.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

#: Clock of this process's CPU seconds (user + system, every thread).
process_cpu_s: Callable[[], float] = time.process_time

#: Clock of the calling thread's CPU seconds.
current_thread_cpu_s: Callable[[], float] = time.thread_time

_PROC_STAT = Path("/proc/stat")
# Linux's per-thread CPU-time clock id for a thread id (glibc's MAKE_THREAD_CPUCLOCK(tid,
# CPUCLOCK_SCHED)): it lets any thread read another thread's CPU time with nanosecond resolution,
# including threads Python did not create (torch's OpenMP workers), which pthread_getcpuclockid
# cannot name.
_CPUCLOCK_SCHED = 2
_CPUCLOCK_PERTHREAD = 4


def _thread_clock_id(native_id: int) -> int:
    return ((~native_id) << 3) | _CPUCLOCK_SCHED | _CPUCLOCK_PERTHREAD


def thread_cpu_s(native_id: int) -> float:
    """CPU seconds used so far by the thread ``native_id`` of this process (Linux only).

    Raises OSError when the thread has exited (or on a system without per-thread CPU clocks).
    """
    return time.clock_gettime(_thread_clock_id(native_id))


def thread_cpu_clocks_supported() -> bool:
    """Whether :func:`thread_cpu_s` works here (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        thread_cpu_s(threading.get_native_id())
    except OSError:
        return False
    return True


class ThreadGroupClock:
    """The summed CPU seconds of a set of threads, counted from when each joined the set.

    Threads are added by native id. A thread that has exited keeps the CPU time it had when last
    read, so the sum never decreases. Thread-safe.
    """

    def __init__(self, native_ids: Iterable[int] = ()) -> None:
        self._lock = threading.Lock()
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._gone_s = 0.0
        for native_id in native_ids:
            self.add(native_id)

    def add(self, native_id: int) -> None:
        """Count ``native_id`` from now on; a thread already counted or already gone is ignored."""
        with self._lock:
            if native_id in self._base:
                return
            try:
                now = thread_cpu_s(native_id)
            except OSError:
                return
            self._base[native_id] = self._last[native_id] = now

    @property
    def native_ids(self) -> list[int]:
        with self._lock:
            return list(self._base)

    def read(self) -> float:
        """CPU seconds the group's threads used since each joined it."""
        with self._lock:
            for native_id in list(self._base):
                try:
                    self._last[native_id] = thread_cpu_s(native_id)
                except OSError:  # exited: keep what it had used, and stop reading it
                    self._gone_s += self._last.pop(native_id) - self._base.pop(native_id)
            return self._gone_s + sum(self._last[i] - self._base[i] for i in self._base)


def process_thread_ids() -> list[int]:
    """Native ids of every thread of this process (Linux: /proc/self/task), [] where unknown."""
    try:
        return sorted(int(entry.name) for entry in Path("/proc/self/task").iterdir())
    except (OSError, ValueError):
        return []


def thread_name(native_id: int) -> str:
    """The kernel's name of a thread of this process (``comm``), "" where unknown."""
    try:
        return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()
    except OSError:
        return ""


def unnamed_foreign_threads() -> list[int]:
    """Threads of this process that Python did not start and nobody named: torch's intra-op
    (OpenMP) pool, whose threads inherit the process's name. Named ones are someone else's
    (uvloop's ``libuv-worker``, CUDA's ``cuda-EvtHandlr``) and are left out."""
    python_threads = {thread.native_id for thread in threading.enumerate()}
    process_name = thread_name(os.getpid())
    return [
        tid for tid in process_thread_ids() if tid not in python_threads and thread_name(tid) == process_name
    ]


def machine_busy_cpu_s(stat_path: Path = _PROC_STAT) -> float:
    """CPU seconds every process of the machine has used since boot (all cores; /proc/stat).

    Busy = user + nice + system + irq + softirq + steal (not idle or iowait). The kernel counts in
    USER_HZ ticks (10 ms), which is fine for the ≥ 1 s windows it is used over. Raises OSError
    where /proc/stat is unreadable.
    """
    with stat_path.open() as handle:
        fields = handle.readline().split()
    if not fields or fields[0] != "cpu":
        raise OSError(f"{stat_path}: unexpected first line")
    values = [int(v) for v in fields[1:9]] + [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (user + nice + system + irq + softirq + steal) / ticks
