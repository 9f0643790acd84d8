"""Keep the C heap's freed memory for reuse, so that each batch does not fault its buffers back in.

It lives in ``energy/`` because it changes what a batch costs: the server (setting ``allocator``),
the load generator's profile and the trainer's studies apply the same policy, so that their
figures are comparable.

Measured here (2 vCPUs, shufflenet_v2_x0_5, 1 torch thread, in a worker thread as the server runs
it): with glibc's defaults a batch of 16 took 120 ms and 12 700 minor page faults, a batch of 128
1 275 ms and 217 000 faults — a third of the time in the kernel, zeroing pages. glibc serves
allocations above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with fresh
``mmap`` calls and gives them back to the kernel on ``free``; activations of a CNN batch are that
size, so every batch re-faults them. With ``reuse`` as it first was (one heap, no ``mmap``, no trim)
the same batches took about 100 ms and 760 ms with no faults (tests/energy/test_allocator.py shows
the page faults disappear).

``reuse`` (the default) sets, through ``mallopt``:

* ``M_MMAP_MAX = 0`` — large blocks come from the heap, not from ``mmap``;
* ``M_TRIM_THRESHOLD`` = its maximum — freed memory is kept, not returned to the kernel;
* ``M_TOP_PAD`` = 64 MiB — a thread's heap is never shrunk or unmapped (glibc gives a worker
  thread heaps of at most 64 MiB each and unmaps one whose memory is all free, whatever the trim
  threshold, unless the heap before it has less room left than this pad: with it, three 40 MiB
  blocks allocated and freed in a worker thread fault 0 pages a round instead of 15 360).

and, with ``thread_heaps`` (the server: when a model computes on the CPU), nothing more: each
thread keeps a heap of its own (glibc's default, up to 8 per core); without it,

* ``M_ARENA_MAX = 1`` — one heap for every thread.

Why both (docs/performance.md, "resnet18 at batch 1"). A model computing on the CPU is faster with
a heap of its own: sharing one with the event loop and the decode threads, its buffers are
interleaved with theirs, and resnet18 at batch 1 computed ~4 % slower in the server than offline
(served ÷ offline 0.91–0.97 in 13 quick runs on two days, 0.96–1.00 in 12 with its own heap;
shufflenet_v2_x0_5 at batch 64 in a worker thread: 280 against 303 ms a batch). The front end is
faster on one shared heap: a no-op server (where the front end is all the work) answered 1 066–1 079
requests/s with it against 935–1 013 with a heap per thread (three alternating pairs). So the heap
policy follows where the work is: a heap per thread where a model computes on the CPU, one heap
where nothing does (no-op) or the model's buffers live on a GPU. glibc cannot give the model thread
alone a heap of its own: a thread is attached to a heap at its first allocation, and once the
limit of heaps is reached new threads take turns on the existing ones.

Big blocks in a worker thread's heap: glibc's per-thread heaps are at most 64 MiB, and a bigger
block is ``mmap``-ed whatever the settings. Measured on torch's own allocation pattern that does not
fault batches in again: in a worker thread with a heap of its own, resnet18 at batch 32, 64 and 128
(a first activation of 103, 206 and 411 MB) and shufflenet_v2_x0_5 at batch 128 ran without page
faults after the first batches, as fast as with one shared heap (4 045–4 104 against
4 090–4 163 ms a batch of 128 for resnet18).

The price: the process keeps its peak heap (the largest batch's working set) for its lifetime,
which a server that runs the same batches again and again reuses anyway. ``system`` leaves the
allocator alone. Other C libraries (musl, macOS) and other allocators (jemalloc, tcmalloc through
``LD_PRELOAD``) are left alone too, with a debug log line: they have their own reuse policies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from typing import Literal

logger = logging.getLogger(__name__)

AllocatorMode = Literal["reuse", "system"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1
#: ``M_TOP_PAD``: glibc's per-thread heaps are at most 64 MiB (HEAP_MAX_SIZE on 64-bit).
TOP_PAD_BYTES = 64 << 20

_applied: AllocatorMode | None = None


def configure_allocator(mode: AllocatorMode, *, thread_heaps: bool = False) -> bool:
    """Apply ``mode`` to this process (once; later calls with the same mode do nothing).

    ``thread_heaps``: each thread keeps a heap of its own (for a model computing on the CPU);
    otherwise every thread shares one. Returns whether glibc's settings were changed. Call it
    before any thread but the main one allocates anything.
    """
    global _applied
    if mode == "system" or _applied == mode:
        return False
    libc_version = platform.libc_ver()[0]
    if libc_version != "glibc":
        logger.debug("allocator=reuse: not glibc (%r); left as it is", libc_version or "unknown")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        results = [
            libc.mallopt(_M_MMAP_MAX, 0),
            libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX),
            libc.mallopt(_M_TOP_PAD, TOP_PAD_BYTES),
        ]
        if not thread_heaps:
            results.append(libc.mallopt(_M_ARENA_MAX, 1))
    except (OSError, AttributeError) as exc:
        logger.warning("allocator=reuse: cannot call mallopt (%s); left as it is", exc)
        return False
    if not all(results):
        logger.warning("allocator=reuse: glibc refused a mallopt setting (%s)", results)
        return False
    _applied = mode
    logger.info(
        "allocator=reuse: glibc keeps freed memory for reuse (no mmap per batch, no trim; %s)",
        "a heap per thread" if thread_heaps else "one heap for all threads",
    )
    return True
