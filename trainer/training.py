"""One training run with its energy: the unit every study (HPO, ablation) repeats.

Energy comes from a :class:`StudyEnergy`: one meter and one :class:`energy.EnergySampler` for a whole
study, started once, whose background thread reads the meter every few tens of milliseconds
throughout every run. A run's energy is the sampler's curve between the run's start and end
(``energy_between(t0, t1, settle=True)``: it waits until the curve covers the end, so the figure is
an interpolation between readings). Reading throughout is what makes a long run right: a RAPL
counter wraps after ``max_energy_range_uj`` (minutes at a high load), and a meter read only at the
start and the end of a run loses every wrap but one; the sampler's reads never let it wrap twice
unseen. A run longer than the curve's history is summed in stretches (:class:`EnergyTally`).

Figures are labelled with the meter's source and whether they include the devices' idle draw
(:meth:`StudyEnergy.label`). Where a real sensor is present (``nvml``, ``rapl``: idle included), the
devices' idle power is measured for ``idle_s`` before the first run and ``energy_net_j`` subtracts
idle power × duration ("idle subtracted"), so that what remains is the energy the training added;
the ``estimate`` source counts only this process's CPU time, which is already zero when idle ("idle
not included"), so net equals gross there.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import torch
from torch import nn

from energy import EnergyError, EnergyMeter, EnergySampler, create_meter
from energy.profile import energy_label, idle_phrase
from trainer.data import Dataset
from trainer.errors import TrainerError

logger = logging.getLogger(__name__)

#: How much of its curve a study's sampler keeps (s): more than a checkpoint of :class:`EnergyTally`.
HISTORY_S = 600.0
#: A run's energy is summed in stretches of about this long (s), each well inside the history.
CHECKPOINT_S = 60.0
#: How long to wait for the sampler to detect its counter's period when it starts (s).
READY_TIMEOUT_S = 5.0
#: A study's warm-up trains on this many training samples (and a quarter as many held out).
WARMUP_SAMPLES = 256


class StudyEnergy:
    """A study's energy meter and the running sampler that reads it throughout (module docstring).

    ``meter`` is closed by :meth:`close` when ``owns_meter``. ``period_s`` is the sampler's (None:
    detected from the counter). Use as a context manager, or :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        meter: EnergyMeter,
        *,
        period_s: float | None = None,
        history_s: float = HISTORY_S,
        owns_meter: bool = True,
    ) -> None:
        self.meter = meter
        self.sampler = EnergySampler(meter, period_s=period_s, history_s=history_s)
        self._owns_meter = owns_meter

    @classmethod
    def open(
        cls, source: str, *, device: str, watts_per_core: float | None, period_s: float | None = None
    ) -> StudyEnergy:
        """The meter of ``source`` for ``device`` (:func:`energy.create_meter`), not yet started; a
        source that cannot start is a :class:`TrainerError`."""
        try:
            meter = create_meter(source, device=device, watts_per_core=watts_per_core)
        except (EnergyError, ValueError) as exc:
            raise TrainerError(f"energy source {source!r}: {exc}") from exc
        return cls(meter, period_s=period_s)

    @property
    def source(self) -> str:
        return self.meter.source

    @property
    def idle_included(self) -> bool:
        """Whether the meter's joules include the devices' idle draw (not for ``estimate``)."""
        return self.meter.idle_included

    @property
    def describe(self) -> str:
        """``rapl, idle included``: the source and its idle draw, for logs."""
        return f"{self.source}, {idle_phrase(self.source, idle_included=self.idle_included)}"

    def label(self, what: str, *, net: bool = False, unit: str = "J") -> str:
        """``energy per run (J, rapl, idle included)``; ``net``: ``idle subtracted``."""
        return energy_label(what, self.source, unit=unit, net=net, idle_included=self.idle_included)

    def start(self) -> StudyEnergy:
        """Start the sampler's thread (idempotent) and wait until it knows the counter's period."""
        self.sampler.start()
        self.sampler.wait_ready(READY_TIMEOUT_S)
        return self

    def close(self) -> None:
        """Stop the sampler and, if this study owns it, close the meter (idempotent)."""
        self.sampler.stop()
        if self._owns_meter:
            self.meter.close()

    def __enter__(self) -> StudyEnergy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def energy_between(self, t0: float, t1: float) -> float:
        """Joules (all devices) between two ``time.monotonic()`` stamps, once the curve covers ``t1``."""
        return self.sampler.energy_between(t0, t1, settle=True)

    def tally(self) -> EnergyTally:
        """Start measuring a run now."""
        return EnergyTally(self)

    def measure_idle_w(self, seconds: float) -> float:
        """Mean power of the meter's devices while this process sleeps for ``seconds``, from the
        curve (0 for the estimate, which is zero when idle)."""
        if not self.idle_included or seconds <= 0:
            return 0.0
        start = time.monotonic()
        time.sleep(seconds)
        end = time.monotonic()
        return self.energy_between(start, end) / (end - start)


class EnergyTally:
    """The energy of one run from a :class:`StudyEnergy`'s curve, summed in stretches.

    :meth:`poll` (cheap: one clock read, mostly) closes a stretch every :data:`CHECKPOINT_S` at a
    moment the curve already covers, so a run of any length never asks the curve about a moment
    older than its history; the stretches add up exactly (the curve is one function).
    :meth:`finish` closes the last stretch once the curve covers the end.
    """

    def __init__(self, study: StudyEnergy) -> None:
        self._study = study
        self.start_s = self._anchor_s = time.monotonic()
        self._joules = 0.0

    def poll(self) -> None:
        now = time.monotonic()
        if now - self._anchor_s < CHECKPOINT_S:
            return
        sampler = self._study.sampler
        # A moment a little behind: the curve has a point after it unless the meter is late.
        mark = now - 2 * ((sampler.counter_period_s or 0.0) + sampler.period_s)
        if mark > self._anchor_s and sampler.wait_settled(mark, 0.0):
            self._joules += sampler.energy_between(self._anchor_s, mark)
            self._anchor_s = mark

    def finish(self) -> tuple[float, float]:
        """``(seconds, joules)`` from the start to now."""
        end = time.monotonic()
        self._joules += self._study.energy_between(self._anchor_s, end)
        problem = self._study.sampler.status()
        if problem is not None:
            logger.warning("energy of the run read through a failing meter (%s)", problem)
        return end - self.start_s, self._joules


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
    energy_idle_included: bool | None = None  # whether energy_j includes the devices' idle draw


def measure_idle_power_w(meter: EnergyMeter | StudyEnergy, seconds: float) -> float:
    """Mean power of the meter's devices while this process sleeps (0 for the estimate source),
    read through a sampler's curve (a running study's, or one started for the measurement)."""
    if isinstance(meter, StudyEnergy):
        return meter.measure_idle_w(seconds)
    if not meter.idle_included or seconds <= 0:
        return 0.0
    with StudyEnergy(meter, owns_meter=False) as study:
        return study.measure_idle_w(seconds)


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
    meter: EnergyMeter | StudyEnergy,
    on_epoch: EpochCallback | None = None,
    idle_power_w: float | None = None,
) -> TrainResult:
    """Train with Adam and cross-entropy; measure held-out accuracy per epoch and the run's energy.

    ``meter``: a study's running :class:`StudyEnergy` (a study starts one and passes it to every
    run), or a bare meter, which gets a sampler for this run alone. ``idle_power_w``: the devices'
    idle power measured once by the caller (a study measures it once, not before each of its
    hundreds of runs); None measures it now for ``config.idle_s``.
    """
    if not isinstance(meter, StudyEnergy):
        with StudyEnergy(meter, owns_meter=False) as study:
            return train(model, data, config, meter=study, on_epoch=on_epoch, idle_power_w=idle_power_w)
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
    idle_w = meter.measure_idle_w(config.idle_s) if idle_power_w is None else idle_power_w
    accuracies: list[float] = []
    stopped = False
    diverged = False
    tally = meter.tally()
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
            tally.poll()
        accuracies.append(evaluate(model, x_test, y_test))
        tally.poll()
        if diverged:
            stopped = epoch < config.epochs
            break
        if on_epoch is not None and not on_epoch(epoch, accuracies[-1]):
            stopped = epoch < config.epochs
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, energy_j = tally.finish()
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
        energy_idle_included=meter.idle_included,
    )


def warm_up(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    *,
    meter: StudyEnergy,
    train_fn: Callable[..., TrainResult] | None = None,
) -> float:
    """Train ``model`` for three epochs on a small slice of ``data`` and discard it; return the
    seconds one epoch over the whole of ``data`` should take (for a study's estimate of its length).

    The first training in a process pays for thread-pool start-up and lazy initialisation (about
    1 s here), which would otherwise land on a study's first recorded run; the warm-up pays it
    instead. Its later epochs, past that cost, give the steady pace (two of them: one epoch of a
    slice this small is a few batches, easily upset by another process), scaled by the number of
    samples. ``train_fn`` is the study's own :func:`train` (tests replace it there).
    """
    small = dataclasses.replace(
        data,
        x_train=data.x_train[:WARMUP_SAMPLES],
        y_train=data.y_train[:WARMUP_SAMPLES],
        x_test=data.x_test[: WARMUP_SAMPLES // 4],
        y_test=data.y_test[: WARMUP_SAMPLES // 4],
    )
    marks = [time.monotonic()]

    def on_epoch(epoch: int, accuracy: float) -> bool:
        marks.append(time.monotonic())
        return True

    (train_fn or train)(
        model, small, dataclasses.replace(config, epochs=3, idle_s=0.0), meter=meter, on_epoch=on_epoch
    )
    # Stopped before its second epoch (a diverging loss): the whole warm-up is the best figure left.
    epoch_s = (marks[-1] - marks[1]) / (len(marks) - 2) if len(marks) >= 3 else time.monotonic() - marks[0]
    small_samples = len(small.x_train) + len(small.x_test)
    return epoch_s * (len(data.x_train) + len(data.x_test)) / max(1, small_samples)
