"""greenserve: energy-aware image-classification serving.

This package is only the front door (:mod:`greenserve.cli`). The server is :mod:`service`, energy
measurement :mod:`energy`; the lab is :mod:`loadgen`, :mod:`trainer` and :mod:`studies`
(docs/architecture.md).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("greenserve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
