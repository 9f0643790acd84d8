"""The serving benchmark's pure parts: plan, summary, flags, the plan's announcement and the report from
its file (the measurements themselves run in `make bench`)."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
from rich.console import Console

from loadgen.metrics import MetricKey
from studies.kit.progress import format_duration
from studies.serving.cli import build_parser, main, plan_line, settings_from_args
from studies.serving.client import LoadRun, Record, Snapshot
from studies.serving.points import OfflinePoint, ServedPoint
from studies.serving.report import render
from studies.serving.run import RunResult, result_document, write_result
from studies.serving.served import BARE_APP, bare_argv, served_point
from studies.serving.settings import (
    DEFAULT_MODELS,
    QUICK_DURATION_S,
    QUICK_MODELS,
    QUICK_WARMUP_S,
    BenchSettings,
    Step,
    default_torch_threads,
    estimate_s,
    plan,
)
from studies.serving.summary import summarize


def offline(model: str, batch_size: int, half: int, images_per_s: float, j_per_image: float) -> OfflinePoint:
    return OfflinePoint(
        model=model, batch_size=batch_size, half=half, batches=10, images=10 * batch_size,
        wall_s=10 * batch_size / images_per_s, images_per_s=images_per_s,
        energy_j=j_per_image * 10 * batch_size, energy_j_per_image=j_per_image, energy_source="estimate",
        cpu_cores=1.0, ms_per_batch=1000 * batch_size / images_per_s, other_cpu_cores=0.0,
    )  # fmt: skip


def served(
    server: str,
    model: str,
    batch_size: int,
    rps: float,
    j: float | None,
    half: int = 0,
    protocol: str = "raw",
) -> ServedPoint:
    return ServedPoint(
        protocol=protocol,
        server=server, model=model, max_batch_size=batch_size, concurrency=2 * batch_size + 2, half=half,  # type: ignore[arg-type]
        window_s=10.0, requests_ok=int(rps * 10), errors={}, requests_per_s=rps, latency_p50_ms=10.0,
        latency_p99_ms=20.0, latency_mean_ms=11.0, client_cpu_ms_per_request=2.0,
        server_cpu_ms_per_request=5.0, other_cpu_cores=0.0, energy_source="estimate" if j else None,
        energy_j_per_request=j, energy_j_per_request_metrics=j, mean_batch_size=float(batch_size),
    )  # fmt: skip


OFFLINE = [
    offline("resnet18", 1, 0, 10.0, 1.0), offline("resnet18", 1, 1, 10.0, 1.0),
    offline("resnet18", 16, 0, 20.0, 0.5), offline("resnet18", 16, 1, 20.0, 0.5),
]  # fmt: skip
SERVED = [
    served("greenserve", "resnet18", 1, 9.5, 1.05),  # 0.95 and 1.05: both targets met
    served("greenserve", "resnet18", 16, 16.0, 0.6),  # 0.80 and 1.20: both missed
    served("greenserve", "noop", 16, 80.0, 0.001),
    served("bare", "bare", 16, 100.0, None, half=0),
    served("bare", "bare", 16, 100.0, None, half=1),
]


def test_plan_covers_every_model_batch_size_and_the_overhead_pair() -> None:
    settings = BenchSettings(models=("resnet18",), batch_sizes=(1, 4))
    steps = plan(settings)
    kinds = [(s.kind, s.model, s.batch_size) for s in steps]
    for size in (1, 4):
        assert ("served", "resnet18", size) in kinds
        assert sum(1 for k in kinds if k == ("offline", "resnet18", size)) >= 1
    assert any(kind == "bare" for kind, _, _ in kinds)


def test_summary_ratios_gain_and_verdicts() -> None:
    settings = BenchSettings(models=("resnet18",), batch_sizes=(1, 16))
    summary = summarize(settings, OFFLINE, SERVED)
    rows = {row["batch_size"]: row for row in summary["models"]["resnet18"]["rows"]}
    assert rows[1]["throughput_ratio"] == 0.95 and rows[1]["throughput_target"] == "PASS"
    assert abs(rows[1]["energy_ratio"] - 1.05) < 1e-9 and rows[1]["energy_target"] == "PASS"
    assert rows[16]["throughput_ratio"] == 0.8 and rows[16]["throughput_target"] == "FAIL"
    assert abs(rows[16]["energy_ratio"] - 1.2) < 1e-9 and rows[16]["energy_target"] == "FAIL"
    gain = summary["models"]["resnet18"]["batching_gain"]
    assert gain["offline"] == 2.0 and gain["served"] == 16.0 / 9.5
    assert summary["overhead"]["ratio"] == 0.8
    assert summary["protocols"] is None  # not measured


def test_plan_and_summary_of_the_protocol_line() -> None:
    settings = BenchSettings(models=("resnet18", "shufflenet_v2_x0_5"), batch_sizes=(1, 16), overhead=False)
    steps = [(s.protocol, s.model, s.batch_size, s.half) for s in plan(settings) if s.protocol != "raw"]
    # The light model at the largest batch: v2 between two halves of /classify multipart.
    assert steps == [
        ("multipart", "shufflenet_v2_x0_5", 16, 1),
        ("v2", "shufflenet_v2_x0_5", 16, 0),
        ("multipart", "shufflenet_v2_x0_5", 16, 2),
    ]
    assert not [s for s in plan(BenchSettings(protocols=False)) if s.protocol != "raw"]
    points = [
        *SERVED,
        served("greenserve", "shufflenet_v2_x0_5", 16, 100.0, 0.02, half=1, protocol="multipart"),
        served("greenserve", "shufflenet_v2_x0_5", 16, 120.0, 0.018, protocol="v2"),
        served("greenserve", "shufflenet_v2_x0_5", 16, 100.0, 0.02, half=2, protocol="multipart"),
    ]
    summary = summarize(BenchSettings(models=("resnet18",), batch_sizes=(1, 16)), OFFLINE, points)
    protocols = summary["protocols"]
    assert protocols["ratio"] == pytest.approx(1.2) and protocols["multipart_requests_per_s"] == 100.0
    assert protocols["v2_binary_j_per_request"] == 0.018 and protocols["multipart_j_per_request"] == 0.02
    # The protocol points are not the raw /classify rows of their model.
    rows = {row["batch_size"]: row for row in summary["models"]["resnet18"]["rows"]}
    assert rows[16]["served_requests_per_s"] == 16.0


@pytest.mark.asyncio
async def test_each_protocols_requests_are_answered_and_read() -> None:
    from loadgen.images import make_jpegs
    from studies.serving.client import _answer, encode_requests
    from tests.conftest import make_settings, running_app
    from tests.fakes import FakeClassifier

    jpegs = make_jpegs(2, seed=0)
    async with running_app(make_settings(), FakeClassifier()) as (_, client):
        for protocol in ("raw", "multipart", "v2"):
            for request in encode_requests(protocol, jpegs, "fake"):
                response = await client.post(request.path, content=request.content, headers=request.headers)
                assert response.status_code == 200, (protocol, response.text)
                answer = _answer(response)
                assert answer["energy_source"] == "estimate" and answer["energy_j"] > 0, (protocol, answer)


# --- settings, flags, plan announcement, report from the file -------------------------------------


def test_quick_sets_the_smoke_run_but_explicit_flags_win() -> None:
    args = build_parser().parse_args(["--quick", "--batch-sizes", "2", "--threads", "3"])
    settings = settings_from_args(args)
    assert settings.quick and settings.models == QUICK_MODELS
    assert settings.batch_sizes == (2,)  # given explicitly: --quick leaves it
    assert (settings.duration_s, settings.warmup_s) == (QUICK_DURATION_S, QUICK_WARMUP_S)
    assert settings.torch_threads == 3  # --threads: the old spelling of --torch-threads
    plain = settings_from_args(build_parser().parse_args([]))
    assert plain == BenchSettings() and plain.models == DEFAULT_MODELS
    assert plain.torch_threads == default_torch_threads()


def test_duration_alias_and_overhead_flag() -> None:
    settings = settings_from_args(build_parser().parse_args(["--duration", "4", "--no-overhead"]))
    assert settings.duration_s == 4.0 and not settings.overhead
    assert all(step.kind != "bare" for step in plan(settings))


@pytest.mark.parametrize(
    "argv", [["--duration-s", "0"], ["--warmup-s", "-1"], ["--batch-sizes", "0,4"], ["--models", ""]]
)
def test_bad_settings_are_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m studies.serving: ") and "\n" not in err


def test_plan_line_says_how_many_points_and_how_long() -> None:
    settings = BenchSettings(models=("resnet18",), batch_sizes=(1, 4), duration_s=10.0, warmup_s=2.0)
    line = plan_line(settings)
    points = len(plan(settings))
    assert line.startswith(
        f"greenserve serving benchmark: {points} points (models resnet18; batch sizes 1, 4;"
    )
    assert line.endswith(f"about {format_duration(estimate_s(plan(settings), settings))} to go")
    assert "--quick" in line


def test_report_is_printed_again_from_the_result_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = BenchSettings(models=("resnet18",), batch_sizes=(1, 16))
    result = RunResult(offline=list(OFFLINE), served=list(SERVED), offline_energy_source="estimate")
    document = result_document(settings, result, started_at="2024-01-01T00:00:00+0000", elapsed_s=60.0)
    path = write_result(document, tmp_path / "bench-serving.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(document))
    assert main(["--report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "resnet18: offline predict vs served over HTTP" in out and "no-op overhead" in out
    (tmp_path / "other.json").write_text('{"benchmark": "zoo"}')
    assert main(["--report", str(tmp_path / "other.json")]) == 2


def test_the_bare_app_factory_is_where_the_benchmark_points_uvicorn() -> None:
    module, _, factory = BARE_APP.partition(":")
    assert bare_argv(8001)[bare_argv(8001).index("--factory") + 1] == BARE_APP
    app = getattr(importlib.import_module(module), factory)(decode_workers=1)
    assert any(getattr(route, "path", None) == "/classify" for route in app.routes)


# --- the offline pipeline (decode + preprocess + model) and the serving path's targets ------------


def test_the_pipeline_brackets_the_served_point_at_the_largest_batch_size() -> None:
    settings = BenchSettings(models=("resnet18", "shufflenet_v2_x0_5"), batch_sizes=(1, 16), protocols=False)
    steps = [(s.kind, s.model, s.batch_size, s.half) for s in plan(settings)]
    for model in ("resnet18", "shufflenet_v2_x0_5"):
        at = steps.index(("served", model, 16, 0))
        assert steps[at - 2 : at + 3] == [
            ("offline", model, 16, 1),
            ("pipeline", model, 16, 1),
            ("served", model, 16, 0),
            ("pipeline", model, 16, 2),
            ("offline", model, 16, 2),
        ]
        assert ("pipeline", model, 1, 1) not in steps
    assert not [s for s in plan(BenchSettings(pipeline=False)) if s.kind == "pipeline"]
    assert not [s for s in plan(BenchSettings(models=("noop",), batch_sizes=(16,))) if s.kind == "pipeline"]
    assert settings_from_args(build_parser().parse_args(["--no-pipeline"])).pipeline is False


def _pipeline(model: str, half: int, images_per_s: float, cpu_cores: float) -> OfflinePoint:
    point = offline(model, 16, half, images_per_s, 0.06)
    return dataclasses.replace(point, cpu_cores=cpu_cores, stage="pipeline")


def test_the_serving_path_is_judged_against_the_pipeline() -> None:
    model = "shufflenet_v2_x0_5"
    offline_points = [
        offline(model, 16, 1, 220.0, 0.05),
        offline(model, 16, 2, 220.0, 0.05),
        _pipeline(model, 1, 200.0, 1.2),  # 6.0 CPU ms per image
        _pipeline(model, 2, 200.0, 1.2),
    ]
    fast = dataclasses.replace(served("greenserve", model, 16, 184.0, 0.07), server_cpu_ms_per_request=6.6)
    summary = summarize(BenchSettings(models=(model,), batch_sizes=(16,)), offline_points, [fast])
    entry = summary["models"][model]
    # The model-only rows ignore the pipeline's points.
    assert entry["rows"][0]["offline_images_per_s"] == pytest.approx(220.0)
    pipe = entry["pipeline"]
    assert pipe["images_per_s"] == pytest.approx(200.0) and pipe["cpu_ms_per_image"] == pytest.approx(6.0)
    assert pipe["throughput_ratio"] == pytest.approx(0.92) and pipe["throughput_target"] == "PASS"
    assert pipe["cpu_ratio"] == pytest.approx(1.1) and pipe["cpu_target"] == "PASS"
    slow = dataclasses.replace(fast, requests_per_s=170.0, server_cpu_ms_per_request=7.2)
    pipe = summarize(BenchSettings(models=(model,), batch_sizes=(16,)), offline_points, [slow])["models"][
        model
    ]["pipeline"]
    assert pipe["throughput_target"] == "FAIL" and pipe["cpu_target"] == "FAIL"
    # A model without pipeline targets is reported without a verdict; none measured: None.
    other = summarize(
        BenchSettings(models=("resnet18",), batch_sizes=(16,)),
        [_pipeline("resnet18", 1, 30.0, 1.0)],
        [served("greenserve", "resnet18", 16, 29.0, 0.4)],
    )["models"]["resnet18"]["pipeline"]
    assert other["target"] is None and other["throughput_target"] is None
    assert (
        summarize(BenchSettings(models=("resnet18",), batch_sizes=(1, 16)), OFFLINE, SERVED)["models"][
            "resnet18"
        ]["pipeline"]
        is None
    )


def test_the_pipeline_decodes_and_computes_from_the_bytes() -> None:
    from service.config import Settings
    from service.model import load_classifier
    from studies.serving.offline import measure_pipeline
    from tests.conftest import gray_png

    class Sampler:
        source = "estimate"

        def energy_between(self, t0: float, t1: float, *, settle: bool = False) -> float:
            return 2.0

    classifier = load_classifier(Settings())
    bodies = [gray_png(i) for i in range(5)]
    point = measure_pipeline(
        classifier,
        bodies,
        4,
        Sampler(),
        decode_workers=1,
        duration_s=0.2,
        warmup_s=0.05,
        half=1,  # type: ignore[arg-type]
    )
    assert point.stage == "pipeline" and point.half == 1 and point.batch_size == 4
    assert point.images == 4 * point.batches and point.batches >= 3
    assert point.cpu_cores > 0 and point.energy_j_per_image == pytest.approx(2.0 / point.images)


def _samples(**series: float) -> dict[MetricKey, float]:
    """Metric samples from ``name__label_value__label_value=value`` keyword arguments."""
    out: dict[MetricKey, float] = {}
    for key, value in series.items():
        name, *labels = key.split("__")
        out[(name, frozenset(tuple(label.split("_is_")) for label in labels))] = value
    return out


def test_a_served_point_says_where_a_requests_joules_go_by_stage_and_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 100 answers in the window; the model's stage grew by 5 J, decode by 1 J, serving by 0.5 J
    # (estimate), and an nvml model stage appeared during the window (no sample before it).
    before = _samples(
        greenserve_requests_total__status_is_200=400.0,
        greenserve_stage_energy_joules_total__stage_is_model__source_is_estimate=20.0,
        greenserve_stage_energy_joules_total__stage_is_decode__source_is_estimate=4.0,
        greenserve_stage_energy_joules_total__stage_is_serving__source_is_estimate=2.0,
    )
    after = _samples(
        greenserve_requests_total__status_is_200=500.0,
        greenserve_stage_energy_joules_total__stage_is_model__source_is_estimate=25.0,
        greenserve_stage_energy_joules_total__stage_is_decode__source_is_estimate=5.0,
        greenserve_stage_energy_joules_total__stage_is_serving__source_is_estimate=2.5,
        greenserve_stage_energy_joules_total__stage_is_model__source_is_nvml=3.0,
    )
    run = LoadRun(
        records=[
            Record(1.0 + i / 100, 1.5 + i / 100, "200", 0.065, "estimate", 16, 80.0) for i in range(100)
        ],
        before=Snapshot(1.0, 0.0, 0.0, None, before),
        after=Snapshot(3.0, 0.1, 1.3, None, after),
    )
    point = served_point(Step("served", "shufflenet_v2_x0_5", 16), BenchSettings(), run)
    assert point.stage_j_per_request == {
        "estimate": pytest.approx({"model": 0.05, "decode": 0.01, "serving": 0.005}),
        "nvml": pytest.approx({"model": 0.03}),
    }
    assert point.requests_ok == 100 and point.server_cpu_ms_per_request == pytest.approx(13.0)
    # The report has a row per source, stages in the order model | decode | serving, and their sum
    # beside the responses' mean (the same source's only).
    settings = BenchSettings(models=("resnet18",), batch_sizes=(1, 16))
    result = RunResult(offline=list(OFFLINE), served=[*SERVED, point], offline_energy_source="estimate")
    report = result_document(settings, result, started_at="2024-01-01T00:00:00+0000", elapsed_s=60.0)
    render(report, Console(width=400))
    out = capsys.readouterr().out
    assert "where a request's joules go" in out
    rows = [line.split("│")[1:-1] for line in out.splitlines() if "shufflenet_v2_x0_5" in line]
    assert [[cell.strip() for cell in row] for row in rows[-2:]] == [
        ["shufflenet_v2_x0_5", "16", "raw", "estimate", "0.05", "0.01", "0.005", "0.065", "0.065", "23%"],
        ["shufflenet_v2_x0_5", "16", "raw", "nvml", "0.03", "—", "—", "0.03", "—", "0%"],
    ]
