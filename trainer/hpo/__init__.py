"""Hyperparameter search strategies compared by accuracy *and* energy (the Green AI study's HPO part).

The study is data plus a pure function, in four parts:

- :mod:`~trainer.hpo.settings` — :class:`HpoSettings`, the strategies and the search spaces;
- :mod:`~trainer.hpo.run` — :func:`run_hpo`: each (strategy, repeat) pair is one Optuna study
  (:mod:`~trainer.hpo.search`) in an RDB storage (SQLite by default) under a deterministic name, so a
  killed run resumes where it stopped; a table of trials out (``hpo_trials.csv``,
  :mod:`~trainer.hpo.table`);
- :mod:`~trainer.hpo.report` — a summary (:mod:`~trainer.hpo.summary`) and plots drawn from that
  table alone (:func:`write_hpo_report`), so any result can be re-plotted without re-running;
- :mod:`~trainer.hpo.shared` — several workers (processes or machines) sharing those studies' rounds in
  one storage (``--study-name``; PostgreSQL, or SQLite on one machine), and :func:`report_hpo`: the
  report from the storage alone (``--report-only``);
- :mod:`~trainer.hpo.cli` — ``greenserve train hpo``.

See ``docs/hpo.md`` for the strategies, ranges, resume rules and how to read the summary.
"""

from trainer.hpo.report import summary_markdown, write_hpo_report
from trainer.hpo.run import report_hpo, run_hpo
from trainer.hpo.search import grid_values, make_pruner, make_sampler, study_name
from trainer.hpo.settings import (
    DEFAULT_EPOCHS,
    DEFAULT_REPEATS,
    DEFAULT_ROUNDS,
    PARAM_RANGES,
    QUICK_LIMIT,
    SPACES,
    STRATEGIES,
    HpoSettings,
    parse_model_params,
)
from trainer.hpo.summary import SUMMARY_COLUMNS, best_so_far, curves, summarize_trials
from trainer.hpo.table import TRIAL_KEY_COLUMNS, TRIAL_RESULT_COLUMNS, TRIALS_CSV, read_trials_csv

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_REPEATS",
    "DEFAULT_ROUNDS",
    "PARAM_RANGES",
    "QUICK_LIMIT",
    "SPACES",
    "STRATEGIES",
    "SUMMARY_COLUMNS",
    "TRIALS_CSV",
    "TRIAL_KEY_COLUMNS",
    "TRIAL_RESULT_COLUMNS",
    "HpoSettings",
    "best_so_far",
    "curves",
    "grid_values",
    "make_pruner",
    "make_sampler",
    "parse_model_params",
    "read_trials_csv",
    "report_hpo",
    "run_hpo",
    "study_name",
    "summarize_trials",
    "summary_markdown",
    "write_hpo_report",
]
