"""One training run with its energy: the unit every study (HPO, ablation) repeats.

Energy is read from an :class:`energy.EnergyMeter` at the start and end of the run (training runs
last seconds, so the counters' 10–100 ms update period does not matter) and is labelled with the
meter's source. Where a real sensor is present (``nvml``, ``rapl``), the device's idle power is
measured for ``idle_s`` before the run and ``energy_net_j`` subtracts idle power × duration, so
that what remains is the energy the training added; the ``estimate`` source counts only this
process's CPU time, which is already zero when idle, so net equals gross there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from energy import EnergyMeter
from trainer.data import Dataset
from trainer.errors import TrainerError

logger = logging.getLogger(__name__)

#: Called after each epoch with (epoch number from 1, held-out accuracy); False stops the run.
EpochCallback = Callable[[int, float], bool]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    idle_s: float = 1.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainerError(f"epochs and batch_size must be ≥ 1, got {self.epochs} and {self.batch_size}")
        if not (self.lr > 0 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.eps > 0):
            raise TrainerError(
                f"invalid Adam parameters: lr={self.lr}, beta1={self.beta1}, "
                f"beta2={self.beta2}, eps={self.eps}"
            )


@dataclass(frozen=True)
class TrainResult:
    accuracy: float  # held-out accuracy after the last epoch run
    accuracy_per_epoch: list[float]
    epochs_run: int
    stopped_early: bool
    seconds: float
    energy_j: float  # everything the meter's devices used during the run
    # energy_j minus idle power × seconds (equal to energy_j for estimate). Kept signed: a negative
    # value says the run was indistinguishable from idle, which clamping to 0 would hide.
    energy_net_j: float
    idle_power_w: float
    energy_source: str
    diverged: bool = False  # the loss became NaN or infinite; training stopped there
    params: dict[str, float] = field(default_factory=dict)


def _total_j(meter: EnergyMeter) -> float:
    return sum(meter.read_j().values())


def measure_idle_power_w(meter: EnergyMeter, seconds: float) -> float:
    """Mean power of the meter's devices while this process sleeps (0 for the estimate source)."""
    if meter.is_estimate or seconds <= 0:
        return 0.0
    start_j, start_t = _total_j(meter), time.monotonic()
    time.sleep(seconds)
    return (_total_j(meter) - start_j) / (time.monotonic() - start_t)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        predicted = model(x[start : start + batch_size]).argmax(dim=1)
        correct += int((predicted == y[start : start + batch_size]).sum())
    return correct / max(1, len(x))


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    *,
    meter: EnergyMeter,
    on_epoch: EpochCallback | None = None,
    idle_power_w: float | None = None,
) -> TrainResult:
    """Train with Adam and cross-entropy; measure held-out accuracy per epoch and the run's energy.

    ``idle_power_w``: the devices' idle power measured once by the caller (a study measures it once,
    not before each of its hundreds of runs); None measures it now for ``config.idle_s``.
    """
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = model.to(device)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    optimiser = torch.optim.Adam(
        model.parameters(),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    idle_w = measure_idle_power_w(meter, config.idle_s) if idle_power_w is None else idle_power_w
    accuracies: list[float] = []
    stopped = False
    diverged = False
    start_j, start_t = _total_j(meter), time.monotonic()
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator).to(device)
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            if not torch.isfinite(loss):
                diverged = True  # a bad learning rate: no point in more epochs
                break
            loss.backward()
            optimiser.step()
        accuracies.append(evaluate(model, x_test, y_test))
        if diverged:
            stopped = epoch < config.epochs
            break
        if on_epoch is not None and not on_epoch(epoch, accuracies[-1]):
            stopped = epoch < config.epochs
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.monotonic() - start_t
    energy_j = _total_j(meter) - start_j
    return TrainResult(
        accuracy=accuracies[-1],
        accuracy_per_epoch=accuracies,
        epochs_run=len(accuracies),
        stopped_early=stopped,
        seconds=seconds,
        energy_j=energy_j,
        energy_net_j=energy_j - idle_w * seconds,
        idle_power_w=idle_w,
        energy_source=meter.source,
        diverged=diverged,
    )
