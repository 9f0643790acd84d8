"""GPU energy from NVIDIA's management library (NVML, via the ``pynvml`` module of nvidia-ml-py).

Two paths, chosen once when the meter starts:

- **counter** (Volta and newer): ``nvmlDeviceGetTotalEnergyConsumption`` is a cumulative counter in
  millijoules since the driver loaded. Exact for long intervals, but it is refreshed only every
  ~10-100 ms, which is why short intervals go through :class:`energy.sampler.EnergySampler`.
- **power polling** (older GPUs, where the counter raises ``NVMLError_NotSupported``):
  ``nvmlDeviceGetPowerUsage`` (milliwatts) is read on every :meth:`NvmlMeter.read_j` and integrated
  with the trapezoidal rule. The result is only as good as the read rate, so this path needs frequent
  reads, which the sampler's background thread provides.

``pynvml`` is imported inside the meter, so importing :mod:`energy` never needs a GPU or a driver.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from energy.base import EnergyError, EnergyMeter, EnergySettingError, EnergySourceUnavailable

logger = logging.getLogger(__name__)

_CUDA_DEVICE = re.compile(r"^cuda(?::(\d+))?$")


def cuda_index(device: str) -> int:
    """Index of a torch-style CUDA device string: ``"cuda"`` → 0, ``"cuda:1"`` → 1.

    Raises EnergySettingError (a ValueError) for anything else (``"cpu"``, ``"cuda:x"``).
    """
    match = _CUDA_DEVICE.match(device.strip())
    if match is None:
        raise EnergySettingError(f"not a CUDA device string: {device!r} (expected 'cuda' or 'cuda:N')")
    return int(match.group(1) or 0)


def nvml_index(cuda_idx: int, environ: Mapping[str, str] = os.environ) -> int:
    """Map a CUDA (torch) device index to the NVML index, which ignores ``CUDA_VISIBLE_DEVICES``.

    Only the simple form is honoured: a comma-separated list of integers, where CUDA device ``i`` is
    NVML device ``list[i]``. UUIDs, MIG identifiers and other forms are not resolved: we log a warning
    and use ``cuda_idx`` unchanged. Raises :class:`EnergySourceUnavailable` when the index is not
    visible at all.
    """
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return cuda_idx
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if not entries:
        raise EnergySourceUnavailable("CUDA_VISIBLE_DEVICES is empty: no GPU is visible to this process")
    if not all(entry.isdigit() for entry in entries):
        logger.warning(
            "CUDA_VISIBLE_DEVICES=%r is not a list of indices; measuring NVML device %d, "
            "which may not be the GPU torch uses",
            visible,
            cuda_idx,
        )
        return cuda_idx
    if cuda_idx >= len(entries):
        raise EnergySourceUnavailable(
            f"cuda:{cuda_idx} is not visible: CUDA_VISIBLE_DEVICES={visible!r} lists {len(entries)} GPU(s)"
        )
    return int(entries[cuda_idx])


class NvmlMeter(EnergyMeter):
    """Cumulative energy of one NVIDIA GPU, labelled with its UUID (``GPU-…``; else its PCI bus id,
    else ``gpu{N}`` with N the NVML / nvidia-smi index): several replicas on one GPU then report one
    device, which a dashboard adds once (energy.identity). :attr:`index` keeps the NVML index.

    Raises :class:`EnergySourceUnavailable` when NVML cannot start (no driver, no library, no such
    GPU) or the GPU reports neither an energy counter nor power. ``clock`` (seconds, monotonic) is
    injectable for tests; it only matters on the power-polling path.
    """

    source = "nvml"
    idle_included = True
    cpu_scope = None

    def __init__(self, device: str = "cuda", *, clock: Callable[[], float] = time.monotonic) -> None:
        try:
            index = nvml_index(cuda_index(device))
        except ValueError as exc:
            raise EnergySourceUnavailable(
                f"the 'nvml' energy source measures a CUDA device, but device is {device!r}; "
                "use device 'cuda[:N]' or the 'rapl' or 'estimate' source"
            ) from exc
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover -- nvidia-ml-py is a dependency
            raise EnergySourceUnavailable(f"pynvml is not importable ({exc}); install nvidia-ml-py") from exc

        self._nvml: Any = pynvml
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        self.index = index
        self._label = f"gpu{index}"
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise EnergySourceUnavailable(
                f"NVML failed to initialise ({exc}); is the NVIDIA driver installed and the GPU visible "
                "to this container? Otherwise choose the 'rapl' or 'estimate' source"
            ) from exc
        try:
            self._start(index)
        except BaseException:
            pynvml.nvmlShutdown()
            raise

    def _start(self, index: int) -> None:
        pynvml = self._nvml
        try:
            count = pynvml.nvmlDeviceGetCount()
            if index >= count:
                raise EnergySourceUnavailable(f"NVML sees {count} GPU(s); there is no GPU with index {index}")
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError as exc:
            raise EnergySourceUnavailable(f"cannot open GPU {index} through NVML: {exc}") from exc
        self._label = self._identity(index)

        self._total_j: float = 0.0
        try:
            self._last_mj: int = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self._polling = False
            logger.info("energy source 'nvml': %s, total-energy counter", self._label)
            return
        except pynvml.NVMLError_NotSupported:
            pass  # pre-Volta: fall back to integrating power
        except pynvml.NVMLError as exc:
            raise EnergySourceUnavailable(f"cannot read the energy counter of GPU {index}: {exc}") from exc

        try:
            self._last_power_w: float = pynvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        except pynvml.NVMLError as exc:
            raise EnergySourceUnavailable(
                f"GPU {index} reports neither total energy nor power through NVML: {exc}"
            ) from exc
        self._last_time_s: float = self._clock()
        self._polling = True
        logger.info(
            "energy source 'nvml': %s has no energy counter (pre-Volta); integrating polled power, "
            "which is accurate only when read often (the sampler does)",
            self._label,
        )

    def _identity(self, index: int) -> str:
        """The GPU's UUID, else its PCI bus id, else ``gpu{index}`` (each call may be unsupported)."""
        pynvml = self._nvml
        for read in (pynvml.nvmlDeviceGetUUID, lambda h: pynvml.nvmlDeviceGetPciInfo(h).busId):
            try:
                value = read(self._handle)
            except (pynvml.NVMLError, AttributeError):
                continue
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text.strip():
                return text.strip()
        return f"gpu{index}"

    @property
    def devices(self) -> list[str]:
        return [self._label]

    @property
    def is_polling(self) -> bool:
        """True when energy is integrated from polled power instead of read from the counter."""
        return self._polling

    def read_j(self) -> dict[str, float]:
        pynvml = self._nvml
        with self._lock:
            if self._closed:
                raise EnergyError(f"NVML meter for {self._label} is closed")
            try:
                if self._polling:
                    self._total_j += self._integrate_power()
                else:
                    current_mj: int = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
                    # The counter only goes back if the driver was reloaded; never report negative energy.
                    self._total_j += max(0, current_mj - self._last_mj) / 1000.0
                    self._last_mj = current_mj
            except pynvml.NVMLError as exc:
                raise EnergyError(f"cannot read energy of {self._label} through NVML: {exc}") from exc
            return {self._label: self._total_j}

    def _integrate_power(self) -> float:
        """Joules since the previous read: trapezoid between the previous and the current power."""
        power_w: float = self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        now_s = self._clock()
        energy_j = (self._last_power_w + power_w) / 2.0 * max(0.0, now_s - self._last_time_s)
        self._last_power_w, self._last_time_s = power_w, now_s
        return energy_j

    def close(self) -> None:
        """Shut NVML down (once); later reads raise :class:`EnergyError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
                logger.warning("nvmlShutdown failed: %s", exc)
