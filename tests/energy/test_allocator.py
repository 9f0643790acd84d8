"""allocator=reuse: big blocks freed by one batch are reused by the next, without page faults."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from service.config import Settings

# 20 rounds of allocating, touching and freeing 64 MiB, as a batch's activations are: the minor
# page faults of the last 19 rounds (the first one may fault, the heap grows once).
_SCRIPT = """
import resource, sys
from energy.allocator import configure_allocator
print(configure_allocator(sys.argv[1]))
block = bytearray(64 << 20); del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(19):
    block = bytearray(64 << 20)
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True, timeout=60
    )
    changed, faults = done.stdout.split()
    return changed, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_reuse_stops_the_page_faults_of_repeated_big_blocks() -> None:
    changed, system_faults = _faults("system")
    assert changed == "False"
    assert system_faults > 19 * 10_000  # 64 MiB is 16 384 pages, faulted in every round
    changed, reuse_faults = _faults("reuse")
    assert changed == "True"
    assert reuse_faults < system_faults / 20


# In a worker thread, as the server's model runs: rounds of three 40 MiB blocks alive at once
# (more than one of glibc's 64 MiB per-thread heaps holds), then freed. Without M_TOP_PAD, glibc
# unmaps the emptied heap and the next round faults a third of it back in (10 243 faults a round).
_THREAD_SCRIPT = """
import ctypes, resource, sys, threading
from energy.allocator import configure_allocator
print(configure_allocator(sys.argv[1], thread_heaps=sys.argv[2] == "threads"))
faults = []
def rounds():
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        blocks = [bytearray(40 << 20) for _ in range(3)]
        del blocks
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
worker = threading.Thread(target=rounds)
worker.start()
worker.join()
print(sum(faults[2:]))
sys.stdout.flush()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per heap, on stderr
"""


def _thread_rounds(mode: str, heaps: str) -> tuple[str, int, int]:
    """(whether the settings changed, the worker's page faults in rounds 3-8, glibc's heaps)."""
    done = subprocess.run(
        [sys.executable, "-c", _THREAD_SCRIPT, mode, heaps],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    changed, faults = done.stdout.split()
    return changed, int(faults), done.stderr.count("Arena ")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_reuse_keeps_a_worker_threads_memory_with_its_own_heap_or_a_shared_one() -> None:
    changed, faults, _ = _thread_rounds("system", "threads")
    assert changed == "False"
    assert faults > 6 * 10_000  # 120 MiB faulted in every round
    changed, faults, arenas = _thread_rounds("reuse", "threads")
    assert (changed, faults) == ("True", 0)
    # The worker thread had a heap of its own, not the main thread's (where a model computes on
    # the CPU: its buffers apart from the front end's).
    assert arenas >= 2
    changed, faults, arenas = _thread_rounds("reuse", "shared")
    assert (changed, faults, arenas) == ("True", 0, 1)  # one heap for every thread


def test_threads_get_heaps_of_their_own_where_a_model_computes_on_the_cpu() -> None:
    assert Settings(model="resnet18", device="cpu").thread_heaps()
    assert Settings(device="cpu").thread_heaps()  # the embedded digits model
    assert not Settings(model="noop", device="cpu").thread_heaps()
    assert not Settings(model="resnet18", device="cuda").thread_heaps()


def test_the_setting_defaults_to_reuse_and_is_validated() -> None:
    assert Settings().allocator == "reuse"
    assert Settings(allocator="system").allocator == "system"
    with pytest.raises(ValueError, match="allocator"):
        Settings(allocator="jemalloc")  # type: ignore[arg-type]
