"""A request's energy: its share of its batch's model compute, its own decode, its share of serving.

The parts come from :class:`energy.EnergyAccountant` (docs/energy.md, the attribution model);
:func:`compose` is the one place where work shared by several requests is split among them (a
batch's model energy in equal shares, the event loop's serving work per request it began) and a
request's figure is put together, for the response, the access log and the metrics alike.
:class:`RequestEnergy` adds the parts up and says, in one string, where the joules come from or why
they are not known.
"""

from __future__ import annotations

from dataclasses import dataclass

from energy import CpuSpread, EnergyAccountant, StageEnergy

#: The stages of a request, in the order they happen; every one is always reported.
STAGES = ("model", "decode", "serving")


@dataclass(frozen=True)
class RequestEnergy:
    parts: tuple[StageEnergy, ...]
    #: Whether any part includes a device's idle (static) draw (a GPU batch holds the GPU: its
    #: static draw during the batch is in the model part; CPU parts are above idle).
    idle_included: bool = False

    @property
    def unknown(self) -> str | None:
        """Why the energy is unknown (a failing or stalled meter), else None."""
        return next((part.unknown for part in self.parts if part.unknown is not None), None)

    @property
    def joules(self) -> float | None:
        if self.unknown is not None:
            return None
        return sum(sum(part.by_source.values()) for part in self.parts)

    def parts_j(self) -> dict[str, float] | None:
        """Joules by stage (None when unknown)."""
        if self.unknown is not None:
            return None
        return {part.stage: sum(part.by_source.values()) for part in self.parts}

    def by_source(self) -> dict[str, float]:
        """Joules by meter source (accelerator first), summed over stages."""
        totals: dict[str, float] = {}
        for part in self.parts:
            for source, joules in part.by_source.items():
                totals[source] = totals.get(source, 0.0) + joules
        return totals

    def source(self, sources: list[str]) -> str:
        """``nvml+rapl``-style: the meters the joules come from; ``unknown: <why>`` when unknown."""
        unknown = self.unknown
        if unknown is not None:
            return f"unknown: {unknown}"
        return "+".join(sources)


def compose(
    accountant: EnergyAccountant,
    *,
    batch_model: StageEnergy,
    batch_size: int,
    decode: StageEnergy,
    serving: CpuSpread,
) -> RequestEnergy:
    """One request's energy: an equal share of its batch's model energy (``batch_model``, measured
    over the whole batch of ``batch_size``), its own ``decode``, and the event loop's CPU time per
    request it began over the last second (its share of parsing, routing, batching and answering),
    priced at the CPU meter's J per CPU-second like the decode."""
    model = batch_model.split(batch_size)
    serving_part = accountant.cpu_work("serving", serving.per_event_cpu_s())
    gpu = accountant.accelerator
    # A GPU batch holds the device: its static draw during the batch is in the model part.
    idle_included = gpu is not None and gpu.meter.idle_included
    return RequestEnergy((model, decode, serving_part), idle_included=idle_included)
