"""The ablation's statistics, a pure function of its table's rows (:func:`ablation_stats`): per
design, mean and spread of energy and accuracy; per factor, the relative energy increase from its
lowest to its highest level and a Kruskal–Wallis test with η² (from :mod:`studies.kit.stats`)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from energy.profile import energy_label, source_idle_included
from studies.kit.stats import kruskal_eta_squared, mean_std
from trainer.errors import TrainerError

#: The ablation's factors: CSV column → label used in tables and plots.
ABLATION_FACTORS: dict[str, str] = {
    "conv_layers": "conv layers",
    "linear_layers": "linear layers",
    "activation": "ReLU",
}

ENERGY_COLUMNS = ("energy_j", "energy_net_j")

Level = int | bool


def design_order(row: Mapping[str, Any]) -> tuple[int, int, bool]:
    """The order designs are listed in: by conv layers, then linear layers, then ReLU."""
    return int(row["conv_layers"]), int(row["linear_layers"]), bool(row["activation"])


def _design_stats(rows: Sequence[Mapping[str, Any]], energy_column: str) -> list[dict[str, Any]]:
    by_design: dict[str, list[Mapping[str, Any]]] = {}
    for row in sorted(rows, key=design_order):
        by_design.setdefault(str(row["design_id"]), []).append(row)
    out = []
    for design_id, runs in by_design.items():
        e_mean, e_std = mean_std([float(r[energy_column]) for r in runs])
        a_mean, a_std = mean_std([float(r["accuracy"]) for r in runs])
        s_mean, _ = mean_std([float(r["seconds"]) for r in runs])
        out.append(
            {
                "design_id": design_id,
                "conv_layers": runs[0]["conv_layers"],
                "linear_layers": runs[0]["linear_layers"],
                "activation": runs[0]["activation"],
                "runs": len(runs),
                "params": runs[0]["params"],
                "energy_mean_j": e_mean,
                "energy_std_j": e_std,
                "accuracy_mean": a_mean,
                "accuracy_std": a_std,
                "seconds_mean": s_mean,
            }
        )
    return out


def _factor_stats(rows: Sequence[Mapping[str, Any]], factor: str, energy_column: str) -> dict[str, Any]:
    """One factor's effect: low → high level, stratified over the other factors' level combinations."""
    levels: list[Level] = sorted({row[factor] for row in rows})
    others = [f for f in ABLATION_FACTORS if f != factor]
    kw = kruskal_eta_squared([[float(r[energy_column]) for r in rows if r[factor] == lv] for lv in levels])
    out: dict[str, Any] = {
        "factor": factor,
        "levels": levels,
        "low": levels[0] if levels else None,
        "high": levels[-1] if levels else None,
        "n": kw.n,
        "k": kw.k,
        "kruskal_h": kw.h,
        "p_value": kw.p_value,
        "eta_squared": kw.eta_squared,
        "energy_low_mean_j": None,
        "energy_high_mean_j": None,
        "energy_increase": None,
        "energy_increase_marginal": None,
        "strata": 0,
        "accuracy_low_mean": None,
        "accuracy_high_mean": None,
        "accuracy_diff": None,
        "note": kw.reason,
    }
    if len(levels) < 2:
        out["note"] = f"the factor has {len(levels)} level(s) in the table: no effect to measure"
        return out
    low, high = levels[0], levels[-1]

    def mean_of(column: str, level: Level, stratum: tuple[Any, ...] | None = None) -> float | None:
        vals = [
            float(r[column])
            for r in rows
            if r[factor] == level and (stratum is None or tuple(r[o] for o in others) == stratum)
        ]
        return statistics.fmean(vals) if vals else None

    e_low, e_high = mean_of(energy_column, low), mean_of(energy_column, high)
    a_low, a_high = mean_of("accuracy", low), mean_of("accuracy", high)
    out.update(energy_low_mean_j=e_low, energy_high_mean_j=e_high, accuracy_low_mean=a_low)
    out["accuracy_high_mean"] = a_high
    if e_low is not None and e_high is not None and e_low > 0:
        out["energy_increase_marginal"] = e_high / e_low - 1
    # The headline figure: in each combination of the other factors' levels (a stratum), the mean
    # energy at the high level over the mean at the low level, minus one; then the plain mean over
    # strata, so each combination of the other factors counts once, whatever its energy scale.
    ratios, acc_diffs = [], []
    strata = sorted({tuple(r[o] for o in others) for r in rows})
    for stratum in strata:
        sl, sh = mean_of(energy_column, low, stratum), mean_of(energy_column, high, stratum)
        if sl is not None and sh is not None and sl > 0:
            ratios.append(sh / sl - 1)
        al, ah = mean_of("accuracy", low, stratum), mean_of("accuracy", high, stratum)
        if al is not None and ah is not None:
            acc_diffs.append(ah - al)
    out["strata"] = len(ratios)
    if ratios:
        out["energy_increase"] = statistics.fmean(ratios)
    if acc_diffs:
        out["accuracy_diff"] = statistics.fmean(acc_diffs)
    if len(ratios) < len(strata):
        gap = f"{len(strata) - len(ratios)} of {len(strata)} strata lack a level or have zero energy"
        out["note"] = f"{out['note']}; {gap}" if out["note"] else gap
    return out


def ablation_stats(rows: Sequence[Mapping[str, Any]], *, energy_column: str = "energy_j") -> dict[str, Any]:
    """The ablation's statistics from its table's rows (a pure function; JSON-ready).

    Per design: runs, mean/std of energy and accuracy. Per factor: the relative energy increase
    from its lowest to its highest level (stratified; see :func:`_factor_stats`), the same from the
    marginal means, the accuracy difference, and a Kruskal–Wallis test of the energy grouped by the
    factor's levels with its η²_H. ``largest_energy_effect`` is the factor with the largest
    absolute relative increase; ``largest_eta_squared`` the one with the largest η².
    """
    if energy_column not in ENERGY_COLUMNS:
        raise TrainerError(f"energy column must be one of {', '.join(ENERGY_COLUMNS)}, got {energy_column!r}")
    designs = _design_stats(rows, energy_column)
    factors = [_factor_stats(rows, f, energy_column) for f in ABLATION_FACTORS]
    # A factor whose increase is exactly 0 has no effect to rank (e.g. every energy identical).
    with_increase = [f for f in factors if f["energy_increase"]]
    with_eta = [f for f in factors if f["eta_squared"]]  # None or 0: nothing to rank
    run_counts = sorted({d["runs"] for d in designs})
    sources = sorted({str(r["energy_source"]) for r in rows})
    return {
        "energy_column": energy_column,
        "energy_sources": sources,
        "energy_label": energy_axis_label(sources, energy_column),
        "datasets": sorted({str(r["dataset"]) for r in rows}),
        "models": sorted({str(r["model"]) for r in rows}),
        "epochs": sorted({int(r["epochs"]) for r in rows}),
        "runs": len(rows),
        "designs_count": len(designs),
        "runs_per_design": run_counts,
        "balanced": len(run_counts) <= 1,
        "designs": designs,
        "factors": factors,
        "largest_energy_effect": (
            max(with_increase, key=lambda f: abs(f["energy_increase"]))["factor"] if with_increase else None
        ),
        "largest_eta_squared": max(with_eta, key=lambda f: f["eta_squared"])["factor"] if with_eta else None,
    }


def energy_axis_label(sources: Sequence[str], energy_column: str, what: str = "energy per run") -> str:
    """``energy per run (J, rapl, idle included)``; for ``energy_net_j``, ``net energy per run (J,
    rapl, idle subtracted)`` (the estimate has no idle to include or subtract: "idle not included")."""
    net = energy_column == "energy_net_j"
    return energy_label(
        f"net {what}" if net else what,
        "/".join(sources) or None,
        net=net,
        idle_included=source_idle_included("+".join(sources)) if sources else None,
    )
