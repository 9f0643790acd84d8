"""The benchmark's pure parts: plan and summary (the measurements themselves run in `make bench`)."""

from __future__ import annotations

from bench.serving import BenchSettings, OfflinePoint, ServedPoint, plan, summarize


def offline(model: str, batch_size: int, half: int, images_per_s: float, j_per_image: float) -> OfflinePoint:
    return OfflinePoint(
        model=model, batch_size=batch_size, half=half, batches=10, images=10 * batch_size,
        wall_s=10 * batch_size / images_per_s, images_per_s=images_per_s,
        energy_j=j_per_image * 10 * batch_size, energy_j_per_image=j_per_image, energy_source="estimate",
        cpu_cores=1.0, ms_per_batch=1000 * batch_size / images_per_s, other_cpu_cores=0.0,
    )  # fmt: skip


def served(
    server: str, model: str, batch_size: int, rps: float, j: float | None, half: int = 0
) -> ServedPoint:
    return ServedPoint(
        server=server, model=model, max_batch_size=batch_size, concurrency=2 * batch_size + 2, half=half,  # type: ignore[arg-type]
        window_s=10.0, requests_ok=int(rps * 10), errors={}, requests_per_s=rps, latency_p50_ms=10.0,
        latency_p99_ms=20.0, latency_mean_ms=11.0, client_cpu_ms_per_request=2.0,
        server_cpu_ms_per_request=5.0, other_cpu_cores=0.0, energy_source="estimate" if j else None,
        energy_j_per_request=j, energy_j_per_request_metrics=j, mean_batch_size=float(batch_size),
    )  # fmt: skip


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
    points = [
        offline("resnet18", 1, 0, 10.0, 1.0), offline("resnet18", 1, 1, 10.0, 1.0),
        offline("resnet18", 16, 0, 20.0, 0.5), offline("resnet18", 16, 1, 20.0, 0.5),
    ]  # fmt: skip
    results = [
        served("greenserve", "resnet18", 1, 9.5, 1.05),  # 0.95 and 1.05: both targets met
        served("greenserve", "resnet18", 16, 16.0, 0.6),  # 0.80 and 1.20: both missed
        served("greenserve", "noop", 16, 80.0, 0.001),
        served("bare", "bare", 16, 100.0, None, half=0),
        served("bare", "bare", 16, 100.0, None, half=1),
    ]
    summary = summarize(settings, points, results)
    rows = {row["batch_size"]: row for row in summary["models"]["resnet18"]["rows"]}
    assert rows[1]["throughput_ratio"] == 0.95 and rows[1]["throughput_target"] == "PASS"
    assert abs(rows[1]["energy_ratio"] - 1.05) < 1e-9 and rows[1]["energy_target"] == "PASS"
    assert rows[16]["throughput_ratio"] == 0.8 and rows[16]["throughput_target"] == "FAIL"
    assert abs(rows[16]["energy_ratio"] - 1.2) < 1e-9 and rows[16]["energy_target"] == "FAIL"
    gain = summary["models"]["resnet18"]["batching_gain"]
    assert gain["offline"] == 2.0 and gain["served"] == 16.0 / 9.5
    assert summary["overhead"]["ratio"] == 0.8
