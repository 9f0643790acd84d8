"""The zoo's verdicts: every claim of the summary, computed from ``zoo_measurements.csv``'s rows alone.

:func:`zoo_stats` is a pure function of the table's rows (:mod:`studies.zoo.report` writes what it
finds). Every claim — the trend, the exception, the slowing of accuracy gains, the Pareto front — is
computed here by the rules below, and the rules are printed next to the verdicts (docs/zoo.md,
*Verdicts*):

* **Energy kept rising**: Spearman's ρ between year and J/image (at the reference batch size:
  1, or the smallest size measured), over the set's models other than ShuffleNetV2, is at least
  :data:`TREND_MIN_RHO`.
* **ShuffleNetV2 is the exception**: its J/image is at least :data:`EXCEPTION_MARGIN` times below
  the log-linear trend (least squares of log10 J/image on year) of the set's other models, *and*
  it is the lowest J/image of the set's models from :data:`SPLIT_YEAR` on.
* **Accuracy gains slowed**: the best acc@1 reached so far (the frontier) rose fewer percentage
  points per year from ``SPLIT_YEAR − 1`` to the last year than from the first year to
  ``SPLIT_YEAR − 1``.

Each is decided twice: on the study's five networks (its claim) and on every network in the table
(whether the claim generalises). Accuracy is torchvision's metadata for its DEFAULT weights, carried
in the table's columns; the networks were measured with random weights, which cost the same.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from energy.profile import idle_phrase
from studies.kit.stats import pareto_front
from studies.zoo.catalog import EXCEPTION_MODEL, STUDY_MODELS
from studies.zoo.errors import ZooError
from studies.zoo.table import STATUS_MEASURED

#: The energy figure the verdicts use: all the meter counted, or net of the device's idle power.
ENERGY_COLUMNS = {"gross": "energy_j_per_image", "net": "energy_net_j_per_image"}

#: "Energy kept rising": Spearman's ρ(year, J/image) at least this (a clear positive rank
#: correlation; with the study's four networks it allows one pair out of order, ρ = 0.8).
TREND_MIN_RHO = 0.5
#: Up to this many networks the p-value of Spearman's ρ is exact (all n! pairings; 8! = 40 320).
EXACT_P_MAX_N = 8
#: "ShuffleNetV2 is the exception": its J/image at least this factor below its year's trend.
EXCEPTION_MARGIN = 2.0
#: Accuracy gains are compared before and after this year (~2017: after ResNet and DenseNet).
SPLIT_YEAR = 2017


def _finite_positive(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> dict[str, Any]:
    """Spearman's ρ and its p-value (scipy), or None with the reason when it is undefined."""
    n = len(xs)
    if n < 3:
        return {
            "rho": None,
            "p_value": None,
            "p_method": None,
            "n": n,
            "reason": f"needs at least 3 models, got {n}",
        }
    if min(xs) == max(xs) or min(ys) == max(ys):
        return {"rho": None, "p_value": None, "p_method": None, "n": n, "reason": "all values identical"}
    from scipy import stats as scipy_stats

    rho = float(scipy_stats.spearmanr(xs, ys).statistic)
    if n <= EXACT_P_MAX_N:
        p_value, method = _exact_spearman_p(xs, ys, rho), "exact"
    else:
        p_value, method = float(scipy_stats.spearmanr(xs, ys).pvalue), "t approximation"
    return {"rho": rho, "p_value": p_value, "p_method": method, "n": n, "reason": None}


def _exact_spearman_p(xs: Sequence[float], ys: Sequence[float], rho: float) -> float:
    """Two-sided permutation p-value of Spearman's ρ: the share of all n! pairings of the ranks
    with |ρ| at least the observed one. scipy's t approximation says p = 0 for a perfect ρ with
    four points, where the exact answer is 2/24."""
    from scipy import stats as scipy_stats

    rx = scipy_stats.rankdata(xs)
    rx = rx - rx.mean()
    perms = np.array(list(itertools.permutations(scipy_stats.rankdata(ys))))
    perms = perms - perms.mean(axis=1, keepdims=True)
    rhos = (perms @ rx) / (np.sqrt((perms**2).sum(axis=1)) * np.sqrt((rx**2).sum()))
    return float(np.mean(np.abs(rhos) >= abs(rho) - 1e-9))


def pareto_models(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names whose (J/image, accuracy) no other point beats (:func:`studies.kit.stats.pareto_front`:
    none has lower-or-equal energy and higher-or-equal accuracy with one of them strictly better;
    ties kept). Sorted by energy."""
    front = pareto_front(list(points), lambda name: (points[name][0], -points[name][1]))
    return sorted(front, key=lambda name: points[name][0])


def _model_stats(rows: Sequence[Mapping[str, Any]], column: str) -> list[dict[str, Any]]:
    """Per model: its metadata, its usable J/image per measured size, the best size, the skips."""
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    models = []
    for name, model_rows in by_model.items():
        first = model_rows[0]
        ordered = sorted(model_rows, key=lambda r: r["batch_size"])
        usable = [r for r in ordered if r["status"] == STATUS_MEASURED and _finite_positive(r[column])]
        unusable = [r["batch_size"] for r in ordered if r["status"] == STATUS_MEASURED and r not in usable]
        best = min(usable, key=lambda r: r[column]) if usable else None
        models.append(
            {
                "model": name,
                "year": first["year"],
                "acc1_pct": first["acc1_pct"],
                "acc_weights": first["acc_weights"],
                "acc_resolution": first["acc_resolution"],
                "gflops": first["gflops"],
                "params": first["params"],
                "resolution": first["resolution"],
                "j_per_image": {r["batch_size"]: r[column] for r in usable},
                "images_per_s": {r["batch_size"]: r["images_per_s"] for r in usable},
                "latency_mean_ms": {r["batch_size"]: r["latency_mean_ms"] for r in usable},
                "best_batch": best["batch_size"] if best else None,
                "best_j_per_image": best[column] if best else None,
                "best_images_per_s": best["images_per_s"] if best else None,
                "unusable_sizes": unusable,
                "skipped": [
                    {"batch_size": r["batch_size"], "status": r["status"], "reason": r["reason"]}
                    for r in ordered
                    if r["status"] != STATUS_MEASURED
                ],
            }
        )
    return sorted(models, key=lambda m: m["year"])  # stable: table order within a year


def _trend(models: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    """The "energy kept rising" rule on ``models`` (the exception left out) by ``key``'s J/image."""
    used = [m for m in models if m["model"] != EXCEPTION_MODEL and m[key] is not None]
    result = _spearman([m["year"] for m in used], [m[key] for m in used])
    result["models"] = [m["model"] for m in used]
    result["holds"] = None if result["rho"] is None else result["rho"] >= TREND_MIN_RHO
    return result


def _exception(models: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The "ShuffleNetV2 is the exception" rule on ``models`` (J/image at the reference batch)."""
    out: dict[str, Any] = {
        "j_per_image": None,
        "trend_j_per_image": None,
        "below_trend_factor": None,
        "below_trend": None,
        "lowest_since_split": None,
        "lowest_since_split_model": None,
        "holds": None,
        "reason": None,
    }
    exc = next((m for m in models if m["model"] == EXCEPTION_MODEL and m["ref_j"] is not None), None)
    if exc is None:
        out["reason"] = f"{EXCEPTION_MODEL} has no J/image at the reference batch size"
        return out
    out["j_per_image"] = exc["ref_j"]
    others = [m for m in models if m["model"] != EXCEPTION_MODEL and m["ref_j"] is not None]
    if len(others) >= 2 and len({m["year"] for m in others}) >= 2:
        slope, intercept = np.polyfit(
            [float(m["year"]) for m in others], [math.log10(m["ref_j"]) for m in others], 1
        )
        trend_j = 10 ** float(intercept + slope * exc["year"])
        out["trend_j_per_image"] = trend_j
        out["below_trend_factor"] = trend_j / exc["ref_j"]
        out["below_trend"] = out["below_trend_factor"] >= EXCEPTION_MARGIN
    else:
        out["reason"] = "the trend needs at least 2 other models from 2 different years"
    recent = [m for m in models if m["year"] >= SPLIT_YEAR and m["ref_j"] is not None]
    if exc not in recent:
        out["reason"] = f"{EXCEPTION_MODEL}'s year in the table is before {SPLIT_YEAR}"
        return out
    lowest = min(recent, key=lambda m: m["ref_j"])
    out["lowest_since_split_model"] = lowest["model"]
    out["lowest_since_split"] = lowest["model"] == EXCEPTION_MODEL
    if out["below_trend"] is not None:
        out["holds"] = bool(out["below_trend"] and out["lowest_since_split"])
    return out


def _frontier(models: Sequence[Mapping[str, Any]], year: int) -> float:
    return max(float(m["acc1_pct"]) for m in models if m["year"] <= year)


def _accuracy(models: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The "accuracy gains slowed" rule: the frontier's gain per year before vs after the split."""
    out: dict[str, Any] = {
        "first_year": None,
        "last_year": None,
        "frontier_pct": {},
        "gain_before_pp_per_year": None,
        "gain_after_pp_per_year": None,
        "holds": None,
        "reason": None,
    }
    if not models:
        out["reason"] = "no models"
        return out
    pivot = SPLIT_YEAR - 1
    first, last = min(m["year"] for m in models), max(m["year"] for m in models)
    out["first_year"], out["last_year"] = first, last
    out["frontier_pct"] = {y: _frontier(models, y) for y in sorted({m["year"] for m in models})}
    if first >= pivot or last <= pivot:
        out["reason"] = f"needs models from before {pivot} and after it (years {first}–{last})"
        return out
    at_pivot = _frontier(models, pivot)
    out["gain_before_pp_per_year"] = (at_pivot - _frontier(models, first)) / (pivot - first)
    out["gain_after_pp_per_year"] = (_frontier(models, last) - at_pivot) / (last - pivot)
    out["holds"] = out["gain_after_pp_per_year"] < out["gain_before_pp_per_year"]
    return out


def _analyse(
    label: str, models: Sequence[Mapping[str, Any]], expected: Sequence[str] | None
) -> dict[str, Any]:
    present = {m["model"] for m in models}
    missing = [name for name in expected if name not in present] if expected else []
    no_energy = [m["model"] for m in models if m["ref_j"] is None]
    trend = _trend(models, "ref_j")
    verdicts = [trend["holds"], (exc := _exception(models))["holds"], (acc := _accuracy(models))["holds"]]
    finding = False if False in verdicts else (None if None in verdicts else True)
    return {
        "label": label,
        "models": [m["model"] for m in models],
        "missing": missing,
        "no_energy_at_ref": no_energy,
        "trend": trend,
        "trend_best": _trend(models, "best_j_per_image"),
        "exception": exc,
        "accuracy": acc,
        "finding_holds": finding,
    }


def _energy_unit(rows: Sequence[Mapping[str, Any]], energy: str) -> str:
    """The J/image figures' unit, source and idle: ``J, rapl, idle included`` (``net``: subtracted).

    The gross figure is everything the meter's devices used while the batches ran, so it includes
    their idle (static) draw for the hardware counters and synthetic, not for the estimate."""
    source = "/".join(sorted({str(r["energy_source"]) for r in rows if r["energy_source"]})) or "no source"
    return f"J, {source}, {idle_phrase(source.replace('/', '+'), net=energy == 'net')}"


def zoo_stats(rows: Sequence[Mapping[str, Any]], *, energy: str = "gross") -> dict[str, Any]:
    """Everything the summary says, computed from the table's rows (JSON-ready).

    ``energy`` picks the J/image the verdicts use: ``gross`` (all the meter counted while the
    batches ran, as the server attributes it) or ``net`` (the device's idle power subtracted; equal
    for ``estimate``). The reference batch size is 1 when any model was measured at 1, else the
    smallest size measured.
    """
    if energy not in ENERGY_COLUMNS:
        raise ZooError(f"unknown energy figure {energy!r}; choose one of {', '.join(ENERGY_COLUMNS)}")
    column = ENERGY_COLUMNS[energy]
    models = _model_stats(rows, column)
    sizes = sorted({b for m in models for b in m["j_per_image"]})
    ref = 1 if 1 in sizes else (sizes[0] if sizes else None)
    for m in models:
        m["ref_j"] = m["j_per_image"].get(ref) if ref is not None else None
    measured = [r for r in rows if r["status"] == STATUS_MEASURED]
    study = [m for m in models if m["model"] in STUDY_MODELS]
    with_ref = {m["model"]: (m["ref_j"], m["acc1_pct"]) for m in models if m["ref_j"] is not None}
    with_best = {
        m["model"]: (m["best_j_per_image"], m["acc1_pct"])
        for m in models
        if m["best_j_per_image"] is not None
    }
    return {
        "energy": energy,
        "energy_column": column,
        "energy_sources": sorted({str(r["energy_source"]) for r in rows if r["energy_source"]}),
        "energy_label": _energy_unit(rows, energy),
        "devices": sorted({str(r["device"]) for r in rows}),
        "threads": sorted({int(r["threads"]) for r in rows}),
        "weights": sorted({str(r["weights"]) for r in rows}),
        "resolutions": sorted({int(r["resolution"]) for r in rows}),
        "batch_sizes": sorted({int(r["batch_size"]) for r in rows}),
        "ref_batch": ref,
        "cells": len(rows),
        "cells_measured": len(measured),
        "cells_skipped": len(rows) - len(measured),
        "measure_seconds": sum(r["seconds"] for r in measured if r["seconds"] is not None),
        "models": models,
        "pareto_ref": pareto_models(with_ref),
        "pareto_best": pareto_models(with_best),
        "study": _analyse("the study's five networks", study, STUDY_MODELS),
        "catalogue": _analyse(f"all {len(models)} networks in the table", models, None),
        "rules": {
            "trend_min_rho": TREND_MIN_RHO,
            "exception_margin": EXCEPTION_MARGIN,
            "split_year": SPLIT_YEAR,
        },
    }


__all__ = [
    "ENERGY_COLUMNS",
    "EXCEPTION_MARGIN",
    "SPLIT_YEAR",
    "TREND_MIN_RHO",
    "pareto_models",
    "zoo_stats",
]
