"""Device identities for the ``device`` label of energy series.

Several replicas of the server can share one physical device; a dashboard must add that device's
energy once, not once per replica (``max by (device)``, then a sum over devices). So the label names
the physical device where there is one, and is distinct per process where the "device" is a model
of this process alone:

- ``nvml``: the GPU's UUID (``GPU-…``), else its PCI bus id, else ``gpuN``;
- ``rapl``: ``<host>:package-0`` / ``<host>:dram-0``, where ``<host>`` is the first 8 hex digits of
  the running kernel's boot id, which every container on one machine shares (hostnames and
  machine-ids differ per container, so they cannot identify the CPU package);
- ``estimate`` and ``synthetic``: ``<source>:<host>:<pid>``, since each process counts only its own
  CPU time (two replicas' estimates are two different energies, to be summed).
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def host_id() -> str:
    """A short id of the running kernel (the physical or virtual machine); the hostname where unknown."""
    try:
        return _BOOT_ID.read_text().strip().replace("-", "")[:8] or socket.gethostname()
    except OSError:
        return socket.gethostname()


def process_device_id(source: str) -> str:
    """The device label of a per-process energy model (estimate, synthetic)."""
    return f"{source}:{host_id()}:{os.getpid()}"
