"""The zoo's report: the markdown summary and the tables of :func:`studies.zoo.stats.zoo_stats`' result,
with the plots (:mod:`studies.zoo.plots`), all from ``zoo_measurements.csv`` alone.

``greenserve zoo report`` redraws a finished or half-finished study without measuring anything;
:func:`zoo_report` is what it calls (and what the run calls at its end).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from studies.kit.files import write_csv_atomic, write_json_atomic, write_text_atomic
from studies.zoo.errors import ZooError
from studies.zoo.plots import PLOT_BY_BATCH, PLOT_BY_YEAR, PLOT_PARETO, draw_plots
from studies.zoo.stats import EXCEPTION_MARGIN, SPLIT_YEAR, TREND_MIN_RHO, zoo_stats
from studies.zoo.table import WEIGHTS, read_zoo_table

logger = logging.getLogger(__name__)

SUMMARY_MD = "zoo_summary.md"
STATS_JSON = "zoo_stats.json"
MODELS_CSV = "zoo_models.csv"


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
    Raises ZooError for a missing or malformed table, or one without any cell.
    """
    rows = read_zoo_table(Path(table_csv))
    if not rows:
        raise ZooError(f"{table_csv} has no cells yet: nothing to report")
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
    paths += draw_plots(st, out_dir)
    logger.info("zoo report: %d files in %s", len(paths), out_dir)
    return paths


__all__ = ["MODELS_CSV", "STATS_JSON", "SUMMARY_MD", "render_zoo_summary", "zoo_report"]
