"""The HPO study's summary, a pure function of its trials table: per strategy, the best accuracy,
rounds and energy to a target accuracy, energy per study, and the energy pruning saved
(:func:`summarize_trials`); and the curves the plots draw (:func:`curves`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from energy.profile import idle_phrase
from studies.kit.stats import mean_std
from trainer.errors import TrainerError
from trainer.hpo.settings import DEFAULT_TARGET_FRACTION, PRUNING_BASELINES
from trainer.hpo.table import REQUIRED_COLUMNS, is_pruned, to_float

SUMMARY_COLUMNS: tuple[str, ...] = (
    "strategy",
    "repeats",
    "rounds",
    "energy_source",
    "energy_idle",
    "target_accuracy",
    "best_accuracy_mean",
    "best_accuracy_std",
    "reached",
    "rounds_to_target_mean",
    "rounds_to_target_std",
    "energy_to_target_j_mean",
    "energy_to_target_j_std",
    "energy_per_round_j_mean",
    "epochs_per_round_mean",
    "pruned_rounds",
    "study_energy_j_mean",
    "study_energy_j_std",
    "total_energy_j",
    "sampler_energy_per_round_j_mean",
    "pruning_baseline",
    "pruning_energy_saved_pct",
)


def _mean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN; NaN when there are none."""
    mean, _ = mean_std([v for v in values if not math.isnan(v)])
    return math.nan if mean is None else mean


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (n − 1) of the values that are not NaN; NaN for fewer than two."""
    _, std = mean_std([v for v in values if not math.isnan(v)])
    return math.nan if std is None else std


def resolve_target(
    rows: Sequence[Mapping[str, Any]], explicit: float | None, fraction: float | None
) -> float:
    """``explicit``; else ``fraction`` × the best completed accuracy; else the table's recorded target;
    else the default fraction × the best completed accuracy (NaN when no trial completed)."""
    if explicit is not None:
        return float(explicit)
    if fraction is None:
        recorded = {to_float(r["target_accuracy"]) for r in rows if "target_accuracy" in r}
        recorded = {t for t in recorded if not math.isnan(t)}
        if len(recorded) > 1:
            raise TrainerError(f"the table records several target accuracies: {sorted(recorded)}")
        if recorded:
            return recorded.pop()
        fraction = DEFAULT_TARGET_FRACTION
    complete = [to_float(r["accuracy"]) for r in rows if not is_pruned(r)]
    complete = [a for a in complete if not math.isnan(a)]
    return fraction * max(complete) if complete else math.nan


def by_strategy(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[int, list[Mapping[str, Any]]]]:
    """rows grouped by strategy (first-appearance order), then by repeat, each sorted by round."""
    groups: dict[str, dict[int, list[Mapping[str, Any]]]] = {}
    for row in rows:
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise TrainerError(f"trials table lacks column(s) {', '.join(missing)}")
        groups.setdefault(str(row["strategy"]), {}).setdefault(int(row["repeat"]), []).append(row)
    for repeats in groups.values():
        for repeat_rows in repeats.values():
            repeat_rows.sort(key=lambda r: int(r["round"]))
    return groups


def best_so_far(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Best accuracy of the *completed* trials up to each round (NaN before the first one).

    ``rows`` are one study's rounds in order. Like Optuna's ``best_value``, a pruned trial's partial
    accuracy is not a result: the search stopped that model before it finished.
    """
    best, out = math.nan, []
    for row in rows:
        accuracy = to_float(row["accuracy"])
        if not is_pruned(row) and not math.isnan(accuracy):
            best = accuracy if math.isnan(best) else max(best, accuracy)
        out.append(best)
    return out


def summarize_trials(
    rows: Sequence[Mapping[str, Any]],
    *,
    target_accuracy: float | None = None,
    target_fraction: float | None = None,
) -> list[dict[str, Any]]:
    """One summary row per strategy (in the table's order) from the trials table; pure.

    The target accuracy is ``target_accuracy`` if given, else ``target_fraction`` × the best completed
    accuracy in the table if that is given, else the table's ``target_accuracy`` column (what the run
    recorded), else 0.99 × the best completed accuracy. A repeat reaches the target
    at the first round whose best-so-far accuracy is ≥ it; its energy to target is the summed
    ``energy_j`` of rounds 1 to that one (pruned rounds included: they spent it). Means and sample
    standard deviations of rounds and energy to target are over the repeats that reached it
    (``reached`` says how many); NaN where none did. Values may be numbers or CSV strings.
    """
    target = resolve_target(rows, target_accuracy, target_fraction)
    groups = by_strategy(rows)
    summary: list[dict[str, Any]] = []
    for strategy, repeats in groups.items():
        best, to_target_rounds, to_target_j, study_j = [], [], [], []
        all_rows = [r for repeat_rows in repeats.values() for r in repeat_rows]
        for repeat_rows in repeats.values():
            curve = best_so_far(repeat_rows)
            energies = [to_float(r["energy_j"]) for r in repeat_rows]
            best.append(curve[-1] if curve else math.nan)
            study_j.append(float(np.sum(energies)))
            hit = next((i for i, b in enumerate(curve) if not math.isnan(b) and b >= target), None)
            if hit is not None:
                to_target_rounds.append(float(int(repeat_rows[hit]["round"])))
                to_target_j.append(float(np.sum(energies[: hit + 1])))
        sources = sorted({str(r["energy_source"]) for r in all_rows})
        sampler_j = [to_float(r.get("sampler_energy_j")) for r in all_rows]
        epochs = [to_float(r.get("epochs_run")) for r in all_rows]
        summary.append(
            {
                "strategy": strategy,
                "repeats": len(repeats),
                "rounds": max(len(v) for v in repeats.values()),
                "energy_source": "+".join(sources),
                "energy_idle": idle_phrase("+".join(sources)),
                "target_accuracy": target,
                "best_accuracy_mean": _mean(best),
                "best_accuracy_std": _std(best),
                "reached": len(to_target_rounds),
                "rounds_to_target_mean": _mean(to_target_rounds),
                "rounds_to_target_std": _std(to_target_rounds),
                "energy_to_target_j_mean": _mean(to_target_j),
                "energy_to_target_j_std": _std(to_target_j),
                "energy_per_round_j_mean": _mean([to_float(r["energy_j"]) for r in all_rows]),
                "epochs_per_round_mean": _mean(epochs),
                "pruned_rounds": sum(is_pruned(r) for r in all_rows),
                "study_energy_j_mean": _mean(study_j),
                "study_energy_j_std": _std(study_j),
                "total_energy_j": float(np.nansum(study_j)),
                "sampler_energy_per_round_j_mean": _mean(sampler_j),
                "pruning_baseline": "",
                "pruning_energy_saved_pct": math.nan,
            }
        )
    by_name = {s["strategy"]: s for s in summary}
    for s in summary:
        base = PRUNING_BASELINES.get(s["strategy"])
        if base in by_name and by_name[base]["study_energy_j_mean"] > 0:
            s["pruning_baseline"] = base
            s["pruning_energy_saved_pct"] = 100.0 * (
                1.0 - s["study_energy_j_mean"] / by_name[base]["study_energy_j_mean"]
            )
    return summary


def curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """Per strategy, repeats × rounds arrays of best-so-far accuracy and cumulative energy (J); NaN-padded."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for strategy, repeats in by_strategy(rows).items():
        n_rounds = max(len(v) for v in repeats.values())
        best = np.full((len(repeats), n_rounds), np.nan)
        cumulative = np.full((len(repeats), n_rounds), np.nan)
        for i, repeat_rows in enumerate(repeats.values()):
            best[i, : len(repeat_rows)] = best_so_far(repeat_rows)
            cumulative[i, : len(repeat_rows)] = np.cumsum([to_float(r["energy_j"]) for r in repeat_rows])
        out[strategy] = {"best_so_far": best, "cumulative_energy_j": cumulative}
    return out
