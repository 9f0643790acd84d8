"""The model zoo's report: verdicts, tables and plots computed from ``zoo_measurements.csv`` alone.

:func:`zoo_stats` is a pure function of the table's rows; :func:`zoo_report` writes what it finds
(``greenserve zoo report`` redraws a finished or half-finished study without measuring anything).
Every claim of the summary — the trend, the exception, the slowing of accuracy gains, the Pareto
front — is computed here by the rules below, and the rules are printed next to the verdicts
(docs/zoo.md, *Verdicts*):

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

import csv
import io
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import NullFormatter, NullLocator

from energy.profile import idle_phrase
from studies.kit.files import write_csv_atomic, write_json_atomic, write_text_atomic
from studies.kit.plots import new_figure, save_figure_atomic
from trainer.errors import TrainerError
from trainer.zoo_catalog import EXCEPTION_MODEL, STUDY_MODELS

logger = logging.getLogger(__name__)

MEASUREMENTS_CSV = "zoo_measurements.csv"
SUMMARY_MD = "zoo_summary.md"
STATS_JSON = "zoo_stats.json"
MODELS_CSV = "zoo_models.csv"
PLOT_BY_YEAR = "zoo_energy_by_year.png"
PLOT_PARETO = "zoo_accuracy_vs_energy.png"
PLOT_BY_BATCH = "zoo_energy_by_batch.png"

#: Every row says so: the networks are measured with randomly initialised weights.
WEIGHTS = "random"

STATUS_MEASURED = "measured"
STATUS_OVER_BUDGET = "over_budget"
STATUS_OUT_OF_MEMORY = "out_of_memory"
STATUS_FAILED = "failed"
STATUSES = (STATUS_MEASURED, STATUS_OVER_BUDGET, STATUS_OUT_OF_MEMORY, STATUS_FAILED)
#: Cells a rerun does not measure again (an over-budget cell is decided again: the budget may differ).
DONE_STATUSES = frozenset({STATUS_MEASURED, STATUS_OUT_OF_MEMORY, STATUS_FAILED})

#: Columns of ``zoo_measurements.csv``: one row per model × batch size, skipped cells included.
ZOO_COLUMNS: tuple[str, ...] = (
    "model",
    "year",
    "acc1_pct",
    "gflops",
    "params",
    "acc_resolution",
    "acc_weights",
    "resolution",
    "device",
    "threads",
    "batch_size",
    "status",
    "reason",
    "batches",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_std_ms",
    "energy_j_per_batch",
    "energy_j_per_image",
    "energy_net_j_per_image",
    "idle_power_w",
    "images_per_s",
    "energy_source",
    "weights",
    "seconds",
)
_INT_COLUMNS = ("year", "params", "acc_resolution", "resolution", "threads", "batch_size")
_REQUIRED_FLOATS = ("acc1_pct", "gflops")
_MEASURED_FLOATS = (
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_std_ms",
    "energy_j_per_batch",
    "energy_j_per_image",
    "energy_net_j_per_image",
    "idle_power_w",
    "images_per_s",
    "seconds",
)

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


# ---------------------------------------------------------------------------------------------
# Reading the table
# ---------------------------------------------------------------------------------------------


def _parse(raw: str | None, column: str, line: int, kind: type, *, optional: bool) -> Any:
    text = (raw or "").strip()
    if not text:
        if optional:
            return None
        raise TrainerError(f"line {line}: column {column} is empty")
    try:
        value = kind(text)
    except ValueError:
        raise TrainerError(f"line {line}: column {column} is not a number: {text!r}") from None
    return value


def read_zoo_table(path: Path, *, text: str | None = None) -> list[dict[str, Any]]:
    """The rows of a zoo table, typed; one per (model, batch size), the last one winning.

    ``text`` is the table's content when the caller has read it already. A last line without its
    newline (a study killed mid-write) is dropped. Raises TrainerError, naming the file and line,
    for a table without the zoo's columns or with a malformed value.
    """
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TrainerError(f"cannot read {path}: {exc.strerror or exc}") from None
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ZOO_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise TrainerError(f"{path} is not a zoo table (missing columns: {', '.join(missing)})")
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        for line, raw in enumerate(reader, start=2):
            row: dict[str, Any] = {c: (raw.get(c) or "").strip() for c in ZOO_COLUMNS}
            if not row["model"]:
                raise TrainerError(f"line {line}: no model")
            if row["status"] not in STATUSES:
                raise TrainerError(f"line {line}: unknown status {row['status']!r}")
            measured = row["status"] == STATUS_MEASURED
            for c in _INT_COLUMNS:
                row[c] = _parse(raw[c], c, line, int, optional=False)
            row["batches"] = _parse(raw["batches"], "batches", line, int, optional=not measured)
            for c in _REQUIRED_FLOATS:
                row[c] = _parse(raw[c], c, line, float, optional=False)
            for c in _MEASURED_FLOATS:
                row[c] = _parse(raw[c], c, line, float, optional=not measured)
            rows[(row["model"], row["batch_size"])] = row
    except TrainerError as exc:
        raise TrainerError(f"{path}, {exc}") from None
    return list(rows.values())


# ---------------------------------------------------------------------------------------------
# Statistics (pure)
# ---------------------------------------------------------------------------------------------


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


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names whose (J/image, accuracy) no other point beats: none has lower-or-equal energy and
    higher-or-equal accuracy with one of them strictly better. Sorted by energy."""
    front = [
        name
        for name, (j, acc) in points.items()
        if not any(
            (j2 <= j and a2 >= acc) and (j2 < j or a2 > acc)
            for other, (j2, a2) in points.items()
            if other != name
        )
    ]
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
        raise TrainerError(f"unknown energy figure {energy!r}; choose one of {', '.join(ENERGY_COLUMNS)}")
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
        "pareto_ref": pareto_front(with_ref),
        "pareto_best": pareto_front(with_best),
        "study": _analyse("the study's five networks", study, STUDY_MODELS),
        "catalogue": _analyse(f"all {len(models)} networks in the table", models, None),
        "rules": {
            "trend_min_rho": TREND_MIN_RHO,
            "exception_margin": EXCEPTION_MARGIN,
            "split_year": SPLIT_YEAR,
        },
    }


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def _verdict(holds: bool | None) -> str:
    return {True: "**holds**", False: "**does not hold**", None: "**n/a**"}[holds]


def _banner(st: Mapping[str, Any]) -> list[str]:
    sources = st["energy_sources"]
    if not sources:
        energy_line = "> **Energy source: none** — the table has no cells."
    elif len(sources) > 1:
        energy_line = (
            f"> **Energy sources: {', '.join(sources)} — mixed.** Cells measured by different sources cannot "
            "be compared; re-run the study with one source."
        )
    elif sources[0] == "estimate":
        energy_line = (
            "> **Energy source: estimate.** No energy sensor was readable, so every joule here is an "
            "*estimate*: this process's CPU time × an assumed power per core. It ranks networks by the "
            "CPU work they cause; it is not a measurement of the machine's consumption."
        )
    elif sources[0] == "synthetic":
        energy_line = "> **Energy source: synthetic.** A known-truth test source, not a measurement."
    else:
        energy_line = f"> **Energy source: {sources[0]}** (a hardware counter)."
    if sources:
        what = (
            "the devices' idle power × the batches' time subtracted"
            if st["energy"] == "net"
            else "everything the meter read while the batches ran"
        )
        energy_line += f" J/image ({st['energy_label']}): {what}."
    return [
        energy_line,
        ">",
        f"> **Weights: {'/'.join(st['weights']) or WEIGHTS}.** Every network ran with randomly initialised "
        "weights — a forward pass costs the same whatever the weights — so the energy and latency are "
        "those of the architecture; the accuracy is torchvision's ImageNet-1K acc@1 of its DEFAULT "
        "weights (metadata, not measured here).",
    ]


def _trend_cell(t: Mapping[str, Any]) -> str:
    if t["rho"] is None:
        return f"n/a ({t['reason']})"
    p = f"p = {t['p_value']:.2g}" + (", exact" if t["p_method"] == "exact" else "")
    return f"ρ = {t['rho']:.2f} ({p}, n = {t['n']}): {_verdict(t['holds'])}"


def _exception_cell(e: Mapping[str, Any]) -> str:
    if e["j_per_image"] is None:
        return f"n/a ({e['reason']})"
    factor = e["below_trend_factor"]
    below = f"{factor:.1f}× below the trend" if factor is not None else f"trend n/a ({e['reason']})"
    lowest = (
        f"lowest since {SPLIT_YEAR}"
        if e["lowest_since_split"]
        else f"not the lowest since {SPLIT_YEAR} ({e['lowest_since_split_model']} is)"
    )
    return f"{below}; {lowest}: {_verdict(e['holds'])}"


def _accuracy_cell(a: Mapping[str, Any]) -> str:
    if a["holds"] is None:
        return f"n/a ({a['reason']})"
    return (
        f"{a['gain_before_pp_per_year']:.2f} pp/year ({a['first_year']}–{SPLIT_YEAR - 1}) → "
        f"{a['gain_after_pp_per_year']:.2f} pp/year ({SPLIT_YEAR - 1}–{a['last_year']}): "
        f"{_verdict(a['holds'])}"
    )


def _finding_sentence(label: str, analysis: Mapping[str, Any]) -> str:
    holds = analysis["finding_holds"]
    if holds is None:
        return f"On {label}, the finding cannot be decided from this table (a verdict is n/a)."
    return f"On {label}, the study's finding {'holds' if holds else 'does not hold'} on this machine."


def render_zoo_summary(st: Mapping[str, Any]) -> str:
    """The markdown summary of :func:`zoo_stats`' result."""
    ref = st["ref_batch"]
    study, cat = st["study"], st["catalogue"]
    threads = "/".join(map(str, st["threads"])) or "—"
    lines = [
        "# Model zoo: a decade of vision networks, energy per image vs accuracy",
        "",
        *_banner(st),
        "",
        f"Device {', '.join(st['devices']) or '—'} · {threads} torch thread(s) · input "
        f"{', '.join(f'{r}×{r}' for r in st['resolutions']) or '—'} · batch sizes "
        f"{', '.join(map(str, st['batch_sizes'])) or '—'} · {len(st['models'])} networks · "
        f"{st['cells_measured']} cells measured, {st['cells_skipped']} skipped · "
        f"{st['measure_seconds'] / 60:.1f} min of measurement · verdicts on `{st['energy_column']}` "
        f"at batch size {ref if ref is not None else 'n/a'}.",
        "",
        "## Verdict",
        "",
        f"The study: from AlexNet (2012) on, energy per inference kept rising while accuracy gains slowed, "
        f"with ShuffleNetV2 (2018) as the exception. {_finding_sentence(study['label'], study)} "
        f"{_finding_sentence(cat['label'], cat)}",
        "",
        f"| claim | {study['label']} | {cat['label']} |",
        "|---|---|---|",
        f"| energy kept rising (batch {ref}) | {_trend_cell(study['trend'])} | {_trend_cell(cat['trend'])} |",
        f"| … at each network's best batch size | {_trend_cell(study['trend_best'])} | "
        f"{_trend_cell(cat['trend_best'])} |",
        f"| ShuffleNetV2 is the exception | {_exception_cell(study['exception'])} | "
        f"{_exception_cell(cat['exception'])} |",
        f"| accuracy gains slowed | {_accuracy_cell(study['accuracy'])} | "
        f"{_accuracy_cell(cat['accuracy'])} |",
        "",
    ]
    if study["missing"]:
        lines += [f"Study networks missing from the table: {', '.join(study['missing'])}.", ""]
    for analysis in (study, cat):
        if analysis["no_energy_at_ref"]:
            lines += [
                f"Without J/image at batch {ref} in {analysis['label']}: "
                f"{', '.join(analysis['no_energy_at_ref'])}.",
                "",
            ]
    lines += [
        "The rules, computed from the table alone (docs/zoo.md, *Verdicts*):",
        "",
        "- **Energy kept rising**: Spearman's ρ between year and J/image, over the set's networks other "
        f"than ShuffleNetV2, is ≥ {TREND_MIN_RHO}. The best-batch row is shown for context; the verdict "
        f"is the batch-{ref} row's.",
        f"- **ShuffleNetV2 is the exception**: its J/image is ≥ {EXCEPTION_MARGIN:g}× below the log-linear "
        "trend (least squares of log10 J/image on year over the set's other networks) at its year, and it "
        f"has the lowest J/image of the set's networks from {SPLIT_YEAR} on.",
        "- **Accuracy gains slowed**: the best acc@1 reached by any of the set's networks up to a year rose "
        f"fewer percentage points per year from {SPLIT_YEAR - 1} to the last year than from the first "
        f"year to {SPLIT_YEAR - 1}.",
        "- The finding holds when all three hold.",
        "",
        "## Pareto front",
        "",
        f"Networks no other beats on both J/image and accuracy — at batch {ref}: "
        f"**{', '.join(st['pareto_ref']) or 'none'}**; at each network's best batch size: "
        f"**{', '.join(st['pareto_best']) or 'none'}**.",
        "",
        "## Networks",
        "",
        f"| network | year | acc@1 (%) | weights for acc | GFLOPS | params (M) | input "
        f"| J/image @ {ref} ({st['energy_label']}) | ms/batch @ {ref} | best batch "
        f"| J/image @ best ({st['energy_label']}) | images/s @ best | skipped sizes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in st["models"]:
        skipped = ", ".join(f"{s['batch_size']} ({s['status']})" for s in m["skipped"]) or "—"
        lines.append(
            f"| {m['model']} | {m['year']} | {m['acc1_pct']:.1f} | {m['acc_weights']} | {m['gflops']:.3g} | "
            f"{m['params'] / 1e6:.1f} | {m['resolution']} | {_fmt(m['ref_j'], '.4g')} | "
            f"{_fmt(m['latency_mean_ms'].get(ref), '.1f')} | {_fmt(m['best_batch'], 'd')} | "
            f"{_fmt(m['best_j_per_image'], '.4g')} | {_fmt(m['best_images_per_s'], '.1f')} | {skipped} |"
        )
    skipped_rows = [(m["model"], s) for m in st["models"] for s in m["skipped"]]
    if skipped_rows:
        lines += ["", "## Skipped cells", "", "| network | batch | status | reason |", "|---|---|---|---|"]
        lines += [
            f"| {name} | {s['batch_size']} | {s['status']} | {s['reason']} |" for name, s in skipped_rows
        ]
    lines += [
        "",
        "## Plots",
        "",
        f"![J/image and accuracy by year]({PLOT_BY_YEAR})",
        "",
        f"![accuracy vs J/image, Pareto front]({PLOT_PARETO})",
        "",
        f"![J/image by batch size]({PLOT_BY_BATCH})",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _subtitle(st: Mapping[str, Any]) -> str:
    source = "/".join(st["energy_sources"]) or "none"
    threads = "/".join(map(str, st["threads"]))
    return f"{'/'.join(st['devices'])}, {threads} thread(s) · energy source: {source} · random weights"


def _spread_years(models: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each network's x position: its year, offset within ±0.3 among the networks of that year."""
    by_year: dict[int, list[str]] = {}
    for m in models:
        by_year.setdefault(m["year"], []).append(m["model"])
    x = {}
    for year, names in by_year.items():
        for i, name in enumerate(names):
            x[name] = year + (0.0 if len(names) == 1 else -0.3 + 0.6 * i / (len(names) - 1))
    return x


def _plots(st: Mapping[str, Any], out_dir: Path) -> list[Path]:
    ref = st["ref_batch"]
    energy_label = f"J/image ({st['energy_label'].removeprefix('J, ')})"
    with_ref = [m for m in st["models"] if m["ref_j"] is not None]
    paths = []

    # 1. J/image by year, accuracy on a second axis. Networks of the same year are spread a little
    # along x so that their points and names do not sit on each other.
    fig, (ax,) = new_figure(10.0, 6.0)
    acc_ax = ax.twinx()
    x = _spread_years(st["models"])
    for m in with_ref:
        study = m["model"] in STUDY_MODELS
        ax.scatter(x[m["model"]], m["ref_j"], s=40, color="tab:red" if study else "tab:blue", zorder=3)
        ax.annotate(
            m["model"], (x[m["model"]], m["ref_j"]), fontsize=7, xytext=(4, 2), textcoords="offset points"
        )
    trend = [m for m in with_ref if m["model"] in STUDY_MODELS and m["model"] != EXCEPTION_MODEL]
    if len({m["year"] for m in trend}) >= 2:
        slope, intercept = np.polyfit([m["year"] for m in trend], [math.log10(m["ref_j"]) for m in trend], 1)
        years = np.linspace(min(m["year"] for m in st["models"]), max(m["year"] for m in st["models"]), 50)
        ax.plot(
            years,
            10 ** (intercept + slope * years),
            "--",
            color="tab:red",
            alpha=0.6,
            label="log-linear trend of the study's networks (ShuffleNetV2 left out)",
        )
    ax.scatter([], [], color="tab:red", label="J/image, the study's networks")
    ax.scatter([], [], color="tab:blue", label="J/image, other networks")
    acc_ax.scatter(
        [x[m["model"]] for m in st["models"]],
        [m["acc1_pct"] for m in st["models"]],
        marker="^",
        color="tab:green",
        alpha=0.5,
        label="acc@1 (right axis)",
    )
    frontier = st["catalogue"]["accuracy"]["frontier_pct"]
    if frontier:
        acc_ax.step(
            list(frontier),
            list(frontier.values()),
            where="post",
            color="tab:green",
            alpha=0.7,
            label="best acc@1 so far (right axis)",
        )
    acc_ax.set_ylabel("ImageNet-1K acc@1 (%, torchvision metadata)", color="tab:green")
    ax.set_yscale("log")
    ax.set_xlabel("year of the paper")
    ax.set_ylabel(f"{energy_label} at batch {ref}")
    ax.set_title(f"Energy per image and accuracy by year\n{_subtitle(st)}", fontsize=10)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    acc_handles, acc_labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles + acc_handles, labels + acc_labels, loc="outside lower center", ncol=3, fontsize=7)
    paths.append(save_figure_atomic(fig, out_dir / PLOT_BY_YEAR))

    # 2. Accuracy vs J/image, log x, the Pareto front highlighted.
    fig, (ax,) = new_figure(8.5, 5.5)
    front = set(st["pareto_ref"])
    for m in with_ref:
        on_front = m["model"] in front
        ax.scatter(
            m["ref_j"],
            m["acc1_pct"],
            s=50 if on_front else 30,
            color="tab:red" if on_front else "tab:gray",
            zorder=3,
        )
        ax.annotate(
            m["model"], (m["ref_j"], m["acc1_pct"]), fontsize=7, xytext=(4, 2), textcoords="offset points"
        )
    front_models = [m for m in with_ref if m["model"] in front]
    front_models.sort(key=lambda m: m["ref_j"])
    if front_models:
        ax.step(
            [m["ref_j"] for m in front_models],
            [m["acc1_pct"] for m in front_models],
            where="post",
            color="tab:red",
            alpha=0.7,
            label="Pareto front",
        )
        ax.legend(fontsize=8, loc="lower right")
    if with_ref:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labels on the decades only: they overlap
    ax.set_xlabel(f"{energy_label} at batch {ref} (log)")
    ax.set_ylabel("ImageNet-1K acc@1 (%, torchvision metadata)")
    ax.set_title(f"Accuracy vs energy per image\n{_subtitle(st)}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    paths.append(save_figure_atomic(fig, out_dir / PLOT_PARETO))

    # 3. J/image by batch size, one line per model.
    fig, (ax,) = new_figure(10.5, 5.5)
    colours = [f"C{i % 10}" for i in range(len(st["models"]))]
    styles = ["-", "--", ":"]
    drawn = False
    for i, m in enumerate(st["models"]):
        sizes = sorted(m["j_per_image"])
        if sizes:
            ax.plot(
                sizes,
                [m["j_per_image"][b] for b in sizes],
                marker="o",
                markersize=3,
                linestyle=styles[(i // 10) % 3],
                color=colours[i],
                label=m["model"],
            )
            drawn = True
    if drawn:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(st["batch_sizes"], [str(b) for b in st["batch_sizes"]])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel("batch size (log)")
    ax.set_ylabel(energy_label)
    ax.set_title(f"Energy per image by batch size\n{_subtitle(st)}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    paths.append(save_figure_atomic(fig, out_dir / PLOT_BY_BATCH))
    return paths


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

_MODELS_COLUMNS = (
    "model",
    "year",
    "acc1_pct",
    "acc_weights",
    "gflops",
    "params",
    "resolution",
    "ref_batch",
    "ref_j_per_image",
    "best_batch",
    "best_j_per_image",
    "best_images_per_s",
    "on_pareto_front",
)


def _json_ready(value: Any) -> Any:
    """Non-finite floats as None (JSON has no NaN/inf) and int keys as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def zoo_report(table_csv: Path, out_dir: Path, *, energy: str = "gross") -> list[Path]:
    """Verdicts, tables and plots of a zoo table, from the CSV alone; returns the files written.

    Writes (atomically) ``zoo_summary.md``, ``zoo_stats.json`` (everything :func:`zoo_stats`
    computed), ``zoo_models.csv`` (one row per network) and three PNG plots into ``out_dir``.
    Raises TrainerError for a missing or malformed table, or one without any cell.
    """
    rows = read_zoo_table(Path(table_csv))
    if not rows:
        raise TrainerError(f"{table_csv} has no cells yet: nothing to report")
    st = zoo_stats(rows, energy=energy)
    out_dir = Path(out_dir)
    front = set(st["pareto_ref"])
    model_rows = [
        {
            **m,
            "ref_batch": st["ref_batch"],
            "ref_j_per_image": m["ref_j"],
            "on_pareto_front": str(m["model"] in front).lower(),
        }
        for m in st["models"]
    ]
    paths = [
        write_text_atomic(out_dir / SUMMARY_MD, render_zoo_summary(st)),
        write_json_atomic(out_dir / STATS_JSON, _json_ready(st)),
        write_csv_atomic(out_dir / MODELS_CSV, _MODELS_COLUMNS, model_rows),
    ]
    paths += _plots(st, out_dir)
    logger.info("zoo report: %d files in %s", len(paths), out_dir)
    return paths


__all__ = [
    "ENERGY_COLUMNS",
    "EXCEPTION_MARGIN",
    "MEASUREMENTS_CSV",
    "SPLIT_YEAR",
    "SUMMARY_MD",
    "TREND_MIN_RHO",
    "ZOO_COLUMNS",
    "pareto_front",
    "read_zoo_table",
    "render_zoo_summary",
    "zoo_report",
    "zoo_stats",
]
