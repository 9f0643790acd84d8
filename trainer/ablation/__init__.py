"""The layer ablation: a full factorial over a simple CNN's layers, with the energy of every run.

A study is data plus a pure function (docs/ablation.md), in four parts:

- :mod:`~trainer.ablation.settings` — :class:`AblationSettings`, and :func:`designs`, which turns
  them into the table of runs: every combination of the conv-layer, linear-layer and activation
  levels, times ``repeats``;
- :mod:`~trainer.ablation.run` — :func:`run_ablation` trains each run once and appends its result
  to ``ablation_runs.csv`` (:mod:`~trainer.ablation.table`) as soon as it finishes;
- :mod:`~trainer.ablation.report` — the summary, statistics (:mod:`~trainer.ablation.stats`) and
  plots, drawn from that table alone (:func:`ablation_report`);
- :mod:`~trainer.ablation.cli` — ``greenserve train ablation``.

Run order is randomised in blocks: each repeat is one random permutation of the designs, drawn
from ``seed``. Drift over the study (thermal throttling, other load on the machine, a warming page
cache) then falls on every design alike instead of on whichever designs happened to run last,
and a study stopped after r complete blocks still holds r runs of every design. Repeat r of every
design uses the same seed (initial weights and batch order), so designs are compared on common
random numbers.

A killed study is resumed by running it again with the same settings: runs already in the table are
skipped. The settings are fingerprinted in ``ablation_settings.json`` next to the table, and a
rerun with different settings is refused instead of mixing two studies in one table.
"""

from trainer.ablation.report import ablation_report
from trainer.ablation.run import run_ablation
from trainer.ablation.settings import AblationSettings, DesignRow, design_id, designs, run_seed
from trainer.ablation.stats import ABLATION_FACTORS, ablation_stats
from trainer.ablation.table import ABLATION_COLUMNS, RUNS_CSV, SETTINGS_JSON, read_ablation_runs

__all__ = [
    "ABLATION_COLUMNS",
    "ABLATION_FACTORS",
    "RUNS_CSV",
    "SETTINGS_JSON",
    "AblationSettings",
    "DesignRow",
    "ablation_report",
    "ablation_stats",
    "design_id",
    "designs",
    "read_ablation_runs",
    "run_ablation",
    "run_seed",
]
