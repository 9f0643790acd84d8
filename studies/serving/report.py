"""The serving benchmark's report: the tables printed from a result file's content (as written to
JSON), so that a run's report can be printed again without re-running (``--report FILE``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from service.request_energy import STAGES

#: What a result file holds (``--report FILE`` checks for it).
RESULT_KEYS = ("benchmark", "settings", "machine", "offline", "served", "summary")
RESULT_FILE = "a serving benchmark's result file"
#: The columns of a model's table, after its batch size.
MODEL_COLUMNS = (
    "offline img/s",
    "offline J/img",
    "offline drift",
    "served req/s",
    "served J/req (resp | metrics)",
    "mean batch",
    "p50 | p99 ms",
    "errors",
    "other cores (off | srv)",
    "served/offline",
    "J ratio",
)
#: The columns of the diagnostics table, after the server.
DIAGNOSTIC_COLUMNS = (
    "max batch",
    "in flight",
    "req/s",
    "batch in flight",
    "computing",
    "batch ms",
    "compute ms",
    "queue ms",
    "server ms",
    "server CPU ms/req",
    "client CPU ms/req",
    "other cores",
    "device J/req",
)

#: The server's stages (model, decode, serving), as service.request_energy names and orders them.
STAGE_ORDER = STAGES

STAGE_COLUMNS = (
    "max batch",
    "protocol",
    "source",
    *(f"{stage} J/req" for stage in STAGE_ORDER),
    "Σ stages",
    "responses' J/req",
    "serving path share",
)


def _stage_rows(point: dict[str, Any]) -> list[list[str]]:
    """One row per energy source of a served point's J/request by stage (empty: no stage data)."""
    rows = []
    for source, stages in sorted((point.get("stage_j_per_request") or {}).items()):
        total = sum(stages.values())
        front = sum(j for stage, j in stages.items() if stage != "model")
        rows.append(
            [
                point["model"],
                str(point["max_batch_size"]),
                point.get("protocol", "raw"),
                source,
                *(_fmt(stages.get(stage)) for stage in STAGE_ORDER),
                _fmt(total),
                _fmt(point.get("energy_j_per_request")) if point.get("energy_source") == source else "—",
                _fmt(front / total if total > 0 else None, ".0%"),
            ]
        )
    return rows


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "—" if value is None else format(value, spec)


def _pair(left: float | None, right: float | None, spec: str = ".3g") -> str:
    return f"{_fmt(left, spec)} | {_fmt(right, spec)}"


def _styled(verdict: str | None, text: str, noisy: bool = False) -> str:
    if verdict is None:
        return text
    colour = "green" if verdict == "PASS" else "red"
    # "~": the target is within the measurement's noise, so this verdict is a coin toss.
    return f"{text} [{colour}]{verdict}{'~' if noisy else ''}[/{colour}]"


def _table(title: str, first: str, columns: Sequence[str], *, label_first: bool = False) -> Table:
    """A left-titled table of right-aligned figures under ``first`` and ``columns`` (``label_first``:
    the first column holds names, left-aligned and never wrapped)."""
    table = Table(title=title, title_justify="left")
    table.add_column(first, justify="left" if label_first else "right", no_wrap=label_first)
    for header in columns:
        table.add_column(header, justify="right")
    return table


def render(report: dict[str, Any], console: Console) -> None:
    """Print the figures of a report (as written to JSON): one table per model, then the overhead."""
    summary = report["summary"]
    machine = report["machine"]
    console.print(
        f"\nmachine: {machine['cpu_count']} CPUs ({machine['cpu_model']}), torch {machine['torch']}, "
        f"{report['settings']['torch_threads']} torch threads; energy source: {report['energy_source']}"
        + (
            f" (process CPU time × {report['watts_per_core']:g} W per core: an ESTIMATE)"
            if report["energy_source"] == "estimate" and report.get("watts_per_core")
            else ""
        )
    )
    settings = report["settings"]
    console.print(
        f"settings: max_wait_ms {settings['max_wait_ms']:g}, decode_workers "
        f"{settings['decode_workers'] or 'default'}, in flight "
        f"{settings['concurrency'] or '2 × max batch + 2'}, {settings['warmup_s']:g} s warm-up + "
        f"{settings['duration_s']:g} s measured per point (offline: two halves around the served point)"
    )
    for model, entry in summary["models"].items():
        target = entry["target"]
        title = f"{model}: offline predict vs served over HTTP"
        if target:
            title += (
                f"  (targets: served/offline ≥ {target['min_throughput_ratio']:.2f}, "
                f"J ratio ≤ {target['max_energy_ratio']:.2f})"
            )
        else:
            title += "  (no target: report only)"
        table = _table(title, "batch", MODEL_COLUMNS)
        for row in entry["rows"]:
            table.add_row(
                str(row["batch_size"]),
                _fmt(row["offline_images_per_s"], ".1f"),
                _fmt(row["offline_j_per_image"]),
                _fmt(row["offline_drift"], "+.0%"),
                _fmt(row["served_requests_per_s"], ".1f"),
                _pair(row["served_j_per_request"], row["served_j_per_request_metrics"]),
                _fmt(row["served_mean_batch_size"], ".1f"),
                _pair(row["served_latency_p50_ms"], row["served_latency_p99_ms"], ".0f"),
                _fmt(row["served_errors"], "d"),
                _pair(row["offline_other_cpu_cores"], row["served_other_cpu_cores"], ".2f"),
                _styled(
                    row["throughput_target"],
                    _fmt(row["throughput_ratio"], ".2f"),
                    row["throughput_within_noise"],
                ),
                _styled(row["energy_target"], _fmt(row["energy_ratio"], ".2f"), row["energy_within_noise"]),
            )
        console.print(table)
        gain = entry["batching_gain"]
        console.print(
            f"  batching gain (batch {gain['to_batch_size']} ÷ batch {gain['from_batch_size']}): "
            f"offline {_fmt(gain['offline'], '.2f')}×, served {_fmt(gain['served'], '.2f')}×"
        )
        pipe = entry.get("pipeline")
        if pipe:
            target = pipe["target"]
            wanted = (
                f" (targets ≥ {target['min_throughput_ratio']:.2f}, ≤ {target['max_cpu_ratio']:.2f})"
                if target
                else " (no target: report only)"
            )
            console.print(
                f"  serving path (max batch {pipe['batch_size']}): served "
                f"{_fmt(pipe['served_requests_per_s'], '.1f')} req/s ÷ offline pipeline "
                f"(decode + preprocess + model) {pipe['images_per_s']:.1f} img/s "
                f"(drift {_fmt(pipe['drift'], '+.0%')}) = "
                + _styled(
                    pipe["throughput_target"],
                    _fmt(pipe["throughput_ratio"], ".2f"),
                    pipe["throughput_within_noise"],
                )
                + f"; server CPU {_fmt(pipe['served_cpu_ms_per_request'], '.2f')} ms/request ÷ pipeline "
                f"{pipe['cpu_ms_per_image']:.2f} ms/image = "
                + _styled(pipe["cpu_target"], _fmt(pipe["cpu_ratio"], ".2f"), False)
                + wanted
            )
    protocols = summary.get("protocols")
    if protocols:
        console.print(
            f"\nprotocols ({protocols['model']}, max batch {protocols['max_batch_size']}, "
            f"{protocols['concurrency']} in flight): Open Inference Protocol v2 binary "
            f"{protocols['v2_binary_requests_per_s']:.0f} req/s ÷ /classify multipart "
            f"{protocols['multipart_requests_per_s']:.0f} req/s "
            f"(drift {_fmt(protocols['multipart_drift'], '+.0%')}) = {protocols['ratio']:.2f}; "
            f"J/request v2 {_fmt(protocols['v2_binary_j_per_request'])}, multipart "
            f"{_fmt(protocols['multipart_j_per_request'])} ({protocols['energy_source']})"
        )
    overhead = summary["overhead"]
    if overhead:
        console.print(
            f"\nno-op overhead (max batch {overhead['max_batch_size']}, "
            f"{overhead['concurrency']} in flight): "
            f"greenserve noop {overhead['greenserve_noop_requests_per_s']:.0f} req/s ÷ bare FastAPI "
            f"{overhead['bare_fastapi_requests_per_s']:.0f} req/s "
            f"(drift {_fmt(overhead['bare_fastapi_drift'], '+.0%')}) = "
            + _styled(overhead["target"], f"{overhead['ratio']:.2f}", overhead["within_noise"])
            + f" (target ≥ {overhead['min_ratio']:.2f})"
        )
    diagnostics = _table(
        "\nwhere the time goes (served points)", "model", DIAGNOSTIC_COLUMNS, label_first=True
    )
    for point in report["served"]:
        diagnostics.add_row(
            point["model"] if point["server"] == "greenserve" else f"bare FastAPI ({point['half'] or 1}/2)",
            str(point["max_batch_size"]),
            str(point["concurrency"]),
            _fmt(point["requests_per_s"], ".1f"),
            _fmt(point["model_busy_fraction"], ".0%"),
            _fmt(point["compute_busy_fraction"], ".0%"),
            _fmt(point["mean_batch_ms"], ".1f"),
            _fmt(point["mean_compute_ms"], ".1f"),
            _fmt(point["queue_wait_mean_ms"], ".1f"),
            _fmt(point["server_latency_mean_ms"], ".1f"),
            _fmt(point["server_cpu_ms_per_request"], ".2f"),
            _fmt(point["client_cpu_ms_per_request"], ".2f"),
            _fmt(point["other_cpu_cores"], ".2f"),
            _fmt(point["device_energy_j_per_request"]),
        )
    console.print(diagnostics)
    stage_rows = [row for point in report["served"] for row in _stage_rows(point)]
    if stage_rows:
        stages = _table(
            "\nwhere a request's joules go (served points; J/request by stage, idle excluded)",
            "model",
            STAGE_COLUMNS,
            label_first=True,
        )
        for row in stage_rows:
            stages.add_row(*row)
        console.print(stages)
    noisy = any(
        row["throughput_within_noise"] or row["energy_within_noise"]
        for entry in summary["models"].values()
        for row in entry["rows"]
    ) or bool(overhead and overhead["within_noise"])
    if noisy:
        console.print(
            "PASS~ / FAIL~: the target lies within the drift of the offline (or bare) figures measured "
            "before and after the point: that verdict is within this machine's noise."
        )
    if summary["errors_total"]:
        console.print(
            f"[red]{summary['errors_total']} requests failed: see 'errors' in the served points[/red]"
        )
