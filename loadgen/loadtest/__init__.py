"""Load tests with Locust: run :mod:`loadgen.locustfile` headless, and what one run measured.

Two halves. The *pure* half is imported by the locustfile inside Locust's process and by the
tests: the load's shape (:mod:`.stages`), the records of one run (:mod:`.records`), the server's
``/metrics`` deltas (:mod:`.server_delta`), the summary (:mod:`.summary`) and its text
(:mod:`.report`). The *runner* half (:mod:`.run`: :func:`run_trace`, :func:`run_closed`; :mod:`.cli`:
:func:`main`) starts Locust as a subprocess: Locust monkey-patches the standard library with gevent
when it is imported, so it must never be imported by a caller such as the sweep, a test or this
package.

A run writes, in its output directory: ``summary.json`` (schema :data:`SCHEMA`, described in
``docs/loadtest.md``), ``requests.csv`` (one row per request), Locust's own CSVs
(``locust_stats.csv``, ``locust_failures.csv``, ``locust_exceptions.csv``) and ``locust.log``.
``python -m loadgen.loadtest`` is ``make loadtest``.
"""

from loadgen.loadtest.cli import build_parser, main, plan
from loadgen.loadtest.records import (
    LOST,
    NOT_SENT,
    REQUEST_LOG_COLUMNS,
    UNFINISHED,
    LagStats,
    RequestRecord,
    lag_stats,
    write_request_log,
)
from loadgen.loadtest.report import format_report
from loadgen.loadtest.run import locust_argv, run_closed, run_trace
from loadgen.loadtest.server_delta import ServerDelta, server_delta
from loadgen.loadtest.settings import (
    CSV_PREFIX_NAME,
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_LAG_THRESHOLD_MS,
    LOCUSTFILE,
    LOG_NAME,
    REPO_ROOT,
    REQUEST_LOG_NAME,
    SCHEMA,
    STARTUP_MARGIN_S,
    SUMMARY_NAME,
    TRACE_NAME,
    LoadtestSettings,
)
from loadgen.loadtest.stages import (
    MAX_SPAWN_RATE,
    STAGE_MODES,
    Stage,
    StageMode,
    parse_duration_s,
    parse_stages,
    stage_target,
)
from loadgen.loadtest.summary import LoadtestSummary, build_summary, run_figures, status_counts, write_summary

__all__ = [
    "CSV_PREFIX_NAME",
    "DEFAULT_DRAIN_TIMEOUT_S",
    "DEFAULT_LAG_THRESHOLD_MS",
    "LOCUSTFILE",
    "LOG_NAME",
    "LOST",
    "MAX_SPAWN_RATE",
    "NOT_SENT",
    "REPO_ROOT",
    "REQUEST_LOG_COLUMNS",
    "REQUEST_LOG_NAME",
    "SCHEMA",
    "STAGE_MODES",
    "STARTUP_MARGIN_S",
    "SUMMARY_NAME",
    "TRACE_NAME",
    "UNFINISHED",
    "LagStats",
    "LoadtestSettings",
    "LoadtestSummary",
    "RequestRecord",
    "ServerDelta",
    "Stage",
    "StageMode",
    "build_parser",
    "build_summary",
    "format_report",
    "lag_stats",
    "locust_argv",
    "main",
    "parse_duration_s",
    "parse_stages",
    "plan",
    "run_closed",
    "run_figures",
    "run_trace",
    "server_delta",
    "stage_target",
    "status_counts",
    "write_request_log",
    "write_summary",
]
