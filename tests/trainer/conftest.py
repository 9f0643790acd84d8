"""Shared fixtures of the trainer's tests: one torch thread, digits (offline, loaded once), a meter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from energy import EnergyMeter, create_meter
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
