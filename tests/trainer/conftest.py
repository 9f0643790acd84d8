"""Shared fixtures of the trainer's tests: one torch thread, digits (offline, loaded once), meters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import torch

from energy import EnergyMeter, create_meter
from energy.rapl import wrapped_delta_uj
from trainer.data import Dataset, load_dataset


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: the models here are tiny, and on a small machine shared with other
    processes, intra-op threads contend for the cores (OpenMP spins) and slow training down ~10×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    """scikit-learn's digits, split with seed 0; shared by every test, so never modify its tensors."""
    return load_dataset("digits", seed=0)


@pytest.fixture
def estimate_meter() -> Iterator[EnergyMeter]:
    with create_meter("estimate") as meter:
        yield meter


class WrappingRapl(EnergyMeter):
    """A RAPL-like package counter: a constant ``watts``, counted in µJ that wrap to 0 after
    ``range_s`` seconds' worth. Like :class:`energy.RaplMeter` it adds each read's wrap-corrected
    delta to its total, so a counter that wraps more than once between two reads loses energy:
    read only at a run's start and end, a run longer than ``range_s`` comes out too low."""

    source = "rapl"
    idle_included = True
    cpu_scope = "machine"

    def __init__(self, watts: float = 100.0, range_s: float = 0.25) -> None:
        self.watts = watts
        self.max_range_uj = int(watts * range_s * 1e6)
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._last_uj = self._raw_uj()
        self._total_uj = 0

    def _raw_uj(self) -> int:
        return int(self.watts * (time.monotonic() - self._t0) * 1e6) % self.max_range_uj

    @property
    def devices(self) -> list[str]:
        return ["host:package-0"]

    def read_j(self) -> dict[str, float]:
        with self._lock:
            current = self._raw_uj()
            self._total_uj += wrapped_delta_uj(self._last_uj, current, self.max_range_uj)
            self._last_uj = current
            return {"host:package-0": self._total_uj / 1e6}


@pytest.fixture
def wrapping_rapl(monkeypatch: pytest.MonkeyPatch) -> Iterator[WrappingRapl]:
    """Studies asking for ``rapl`` get a :class:`WrappingRapl` (100 W, wrapping every 0.25 s)."""
    meter = WrappingRapl()
    monkeypatch.setattr("trainer.training.create_meter", lambda source, **_: meter)
    yield meter
