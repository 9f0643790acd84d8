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
    request_items: int = 1,
) -> RequestEnergy:
    """One item's energy: an equal share of its batch's model energy (``batch_model``, measured
    over the whole batch of ``batch_size``), its own ``decode``, and its share of the event loop's
    CPU time per request it began over the last second (parsing, routing, batching and answering:
    one HTTP request's share, split equally among the ``request_items`` images that request
    carried), priced at the CPU meter's J per CPU-second like the decode."""
    model = batch_model.split(batch_size)
    serving_part = accountant.cpu_work("serving", serving.per_event_cpu_s() / request_items)
    gpu = accountant.accelerator
    # A GPU batch holds the device: its static draw during the batch is in the model part.
    idle_included = gpu is not None and gpu.meter.idle_included
    return RequestEnergy((model, decode, serving_part), idle_included=idle_included)


def total(energies: list[RequestEnergy]) -> RequestEnergy:
    """The energy of several items (an infer request's images): each stage summed by source; unknown
    when any item's is (the first reason)."""
    parts = []
    for stage in STAGES:
        of_stage = [part for energy in energies for part in energy.parts if part.stage == stage]
        by_source: dict[str, float] = {}
        for part in of_stage:
            for source, joules in part.by_source.items():
                by_source[source] = by_source.get(source, 0.0) + joules
        unknown = next((part.unknown for part in of_stage if part.unknown is not None), None)
        parts.append(StageEnergy(stage, by_source, unknown, sum(part.cpu_s for part in of_stage)))
    return RequestEnergy(tuple(parts), idle_included=any(e.idle_included for e in energies))
