"""Model profiles: the generic timing core, a real (tiny) profile of the embedded model, the
interpolation, the files, and ``greenserve profile``."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from energy import EnergyAccountant, EnergyMeter, EnergySampler, create_meter
from energy.cpuclock import process_cpu_s
from energy.profile import (
    BatchProfileError,
    ProfilePoint,
    energy_label,
    idle_phrase,
    is_out_of_memory,
    profile_batches,
    profile_calls,
    profile_thread_calls,
    source_idle_included,
)
from loadgen.errors import ProfileError
from studies.profile.cli import build_parser, settings_from_args
from studies.profile.cli import run as profile_cli
from studies.profile.format import ModelProfile, interpolate, read_profile, write_profile
from studies.profile.run import _SizeSteps, plan, profile_model
from studies.profile.settings import ProfileSettings


@pytest.fixture
def sampler() -> Iterator[EnergySampler]:
    with create_meter("estimate") as meter, EnergySampler(meter, period_s=0.01) as running:
        yield running


def _spin(seconds: float) -> None:
    """Burn CPU (not sleep): the estimate meter counts CPU time, so a sleeping batch costs 0 J."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def point(size: int, latency_ms: float, energy_j: float, source: str = "estimate") -> ProfilePoint:
    return ProfilePoint(
        batch_size=size,
        batches=5,
        latency_mean_ms=latency_ms,
        latency_p50_ms=latency_ms,
        latency_p99_ms=latency_ms * 1.5,
        latency_std_ms=0.1,
        energy_j_per_batch=energy_j,
        energy_j_per_image=energy_j / size,
        images_per_s=size / (latency_ms / 1000),
        energy_source=source,
    )


def make_profile(*points: ProfilePoint, **fields: Any) -> ModelProfile:
    base: dict[str, Any] = {"model": "m", "device": "cpu", "energy_source": "estimate", "points": points}
    base.update(fields)
    return ModelProfile(**base)


# --- the generic core -------------------------------------------------------------------------


def test_profile_batches_orders_latencies_and_measures_energy(sampler: EnergySampler) -> None:
    calls: list[int] = []

    def run_batch(size: int) -> None:
        calls.append(size)
        _spin(0.0005 * size)

    run = profile_batches(run_batch, [4, 1], warmup=2, repeats=5, sampler=sampler, min_time_s=0)
    assert run.skipped == ()
    one, four = run.points
    assert (one.batch_size, four.batch_size) == (1, 4)
    assert calls == [1] * 7 + [4] * 7  # smallest size first; warm-up batches, then timed ones
    assert one.batches == four.batches == 5
    assert 0.5 <= one.latency_mean_ms < four.latency_mean_ms
    assert four.latency_mean_ms >= 2.0
    assert one.latency_p50_ms <= one.latency_p99_ms
    for p in run.points:
        assert p.energy_source == "estimate"
        assert p.energy_j_per_batch > 0
        assert p.energy_j_per_image == pytest.approx(p.energy_j_per_batch / p.batch_size)
        assert p.images_per_s == pytest.approx(p.batch_size / (p.latency_mean_ms / 1000), rel=0.3)
    assert four.energy_j_per_batch > one.energy_j_per_batch


def test_min_time_keeps_timing_past_the_repeats(sampler: EnergySampler) -> None:
    run = profile_batches(lambda size: None, [1], warmup=0, repeats=2, sampler=sampler, min_time_s=0.02)
    assert run.points[0].batches > 2


def test_synchronize_is_called_inside_the_timing(sampler: EnergySampler) -> None:
    synced: list[int] = []
    run = profile_batches(
        lambda size: None,
        [1, 2],
        warmup=1,
        repeats=3,
        sampler=sampler,
        min_time_s=0,
        synchronize=lambda: synced.append(1),
    )
    assert len(run.points) == 2
    assert len(synced) == 2 * (1 + 3)  # once after the warm-up, once per timed batch


def test_out_of_memory_skips_that_size_and_larger(sampler: EnergySampler) -> None:
    def run_batch(size: int) -> None:
        if size >= 8:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    run = profile_batches(run_batch, [1, 8, 4, 16], warmup=1, repeats=2, sampler=sampler, min_time_s=0)
    assert [p.batch_size for p in run.points] == [1, 4]
    assert [size for size, _ in run.skipped] == [8, 16]
    assert "out of memory" in run.skipped[0][1]
    assert "8" in run.skipped[1][1]


def test_other_failures_propagate(sampler: EnergySampler) -> None:
    def run_batch(size: int) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        profile_batches(run_batch, [1], warmup=0, repeats=1, sampler=sampler, min_time_s=0)


def test_is_out_of_memory() -> None:
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))
    assert not is_out_of_memory(ValueError("out of memory"))


@pytest.mark.parametrize(
    ("sizes", "warmup", "repeats", "message"),
    [
        ([], 0, 1, "no batch sizes"),
        ([0], 0, 1, "batch sizes"),
        ([1], -1, 1, "warmup"),
        ([1], 0, 0, "repeats"),
    ],
)
def test_bad_arguments(
    sampler: EnergySampler, sizes: list[int], warmup: int, repeats: int, message: str
) -> None:
    with pytest.raises(BatchProfileError, match=message):
        profile_batches(lambda size: None, sizes, warmup=warmup, repeats=repeats, sampler=sampler)


def test_profile_calls(sampler: EnergySampler) -> None:
    cost = profile_calls(lambda: _spin(0.001), warmup=1, repeats=4, sampler=sampler)
    assert cost.calls == 4
    assert cost.mean_ms >= 1.0
    assert cost.energy_j is not None and cost.energy_j > 0
    assert (cost.energy_source, cost.energy_idle_included) == ("estimate", False)
    run = profile_batches(lambda size: None, [1], warmup=0, repeats=1, sampler=sampler, min_time_s=0)
    assert run.points[0].energy_idle_included is False


def test_profile_batches_reads_a_slow_counter_settled_on_its_curve() -> None:
    """A counter that advances every 100 ms (the synthetic source, NVML-like, 200 W idle): the loop's
    energy is read once the curve covers the loop's end, an interpolation, close to the truth."""
    from energy import SyntheticMeter

    with (
        SyntheticMeter(watts_per_core=10.0, idle_w=200.0, counter_period_ms=100.0, read_ms=0.0) as meter,
        EnergySampler(meter) as running,
    ):
        running.wait_ready(5.0)
        run = profile_batches(
            lambda size: time.sleep(0.01), [1], warmup=0, repeats=1, sampler=running, min_time_s=0.3
        )
    (only,) = run.points
    assert only.energy_source == "synthetic" and only.energy_idle_included is True
    wall_s = only.batches / only.images_per_s
    assert only.energy_j_per_batch * only.batches == pytest.approx(200.0 * wall_s, rel=0.15)


class FakeGpuMeter(EnergyMeter):
    """An accelerator's meter (like nvml: idle included, no CPU scope) drawing ``watts`` always."""

    source = "nvml"
    idle_included = True
    cpu_scope = None

    def __init__(self, watts: float) -> None:
        self.watts = watts
        self._start = time.monotonic()

    @property
    def devices(self) -> list[str]:
        return ["GPU-fake"]

    def read_j(self) -> dict[str, float]:
        return {"GPU-fake": self.watts * (time.monotonic() - self._start)}


@pytest.fixture
def gpu_accountant() -> Iterator[EnergyAccountant]:
    """A "GPU" of 500 W (all of it idle draw) beside the estimate's CPU side at 10 W per core."""
    with create_meter("estimate", watts_per_core=10.0) as cpu_meter:
        accountant = EnergyAccountant(
            EnergySampler(cpu_meter, period_s=0.01, cpu_clock=process_cpu_s),
            EnergySampler(FakeGpuMeter(500.0), period_s=0.01),
        )
        try:
            yield accountant
        finally:
            for running in accountant.samplers:
                running.stop()


def test_profile_thread_calls_prices_the_threads_cpu_time_by_the_cpu_meter(
    gpu_accountant: EnergyAccountant,
) -> None:
    for running in gpu_accountant.samplers:
        running.start()
    _spin(0.2)  # a second of the CPU curve gives the price per CPU-second
    cost = profile_thread_calls(lambda: _spin(0.002), warmup=1, repeats=10, accountant=gpu_accountant)
    assert (cost.energy_source, cost.energy_idle_included, cost.unknown) == ("estimate", False, None)
    # 2 ms of CPU at 10 W per core: 20 mJ; the GPU's 500 W meanwhile (1 J) is not in it.
    assert cost.energy_j == pytest.approx(0.02, rel=0.3)


def test_labels_say_the_source_and_idle() -> None:
    assert [source_idle_included(s) for s in ("nvml", "rapl", "synthetic", "estimate")] == [
        True,
        True,
        True,
        False,
    ]
    assert source_idle_included("nvml+rapl") is True
    assert source_idle_included("nvml+estimate") is None
    assert source_idle_included("sundial") is None
    assert energy_label("energy per run", "rapl") == "energy per run (J, rapl, idle included)"
    assert energy_label("energy per run", "estimate") == "energy per run (J, estimate, idle not included)"
    assert energy_label("net energy", "rapl", net=True) == "net energy (J, rapl, idle subtracted)"
    assert energy_label("net energy", "estimate", net=True) == "net energy (J, estimate, idle not included)"
    assert idle_phrase("nvml+estimate") == "idle included for nvml, not for estimate"


# --- a served model ---------------------------------------------------------------------------


def test_profile_model_digits_cnn() -> None:
    profile = profile_model(
        "digits_cnn",
        batch_sizes=(1, 4),
        warmup=1,
        repeats=2,
        min_time_s=0,
        torch_threads=1,
        energy_source="estimate",
        images=8,
    )
    assert profile.model == "digits_cnn"
    assert profile.weights == "embedded"
    assert profile.device == "cpu"
    assert profile.torch_threads == 1
    assert profile.energy_source == "estimate"
    assert profile.batch_sizes == (1, 4)
    assert all(p.latency_mean_ms > 0 and p.energy_j_per_batch > 0 for p in profile.points)
    assert profile.preprocess_ms_per_image is not None and profile.preprocess_ms_per_image > 0
    assert profile.preprocess_j_per_image is not None and profile.preprocess_j_per_image > 0
    assert profile.notes == ()
    assert profile.energy_idle_included is False
    assert (profile.preprocess_energy_source, profile.preprocess_idle_included) == ("estimate", False)
    assert profile.energy_label == "estimate, idle not included"


def test_profile_model_on_a_gpu_prices_the_decode_by_the_cpu_meter_not_the_gpu(
    gpu_accountant: EnergyAccountant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The batches on the GPU's meter (idle included), the decode by the CPU side's price per
    CPU-second: never the GPU's idle draw while the CPU decodes (0.3-0.6 J an image on an H200)."""
    profile = profile_model(
        "digits_cnn",
        batch_sizes=(1, 4),
        warmup=1,
        repeats=2,
        min_time_s=0.05,
        torch_threads=1,
        images=8,
        accountant=gpu_accountant,
    )
    assert profile.energy_source == "nvml" and profile.energy_idle_included is True
    assert all(p.energy_source == "nvml" and p.energy_idle_included for p in profile.points)
    # The "GPU" draws 500 W: every batch costs at least its time at that power.
    assert all(p.energy_j_per_batch >= 0.4 * p.latency_mean_ms / 1000 * 500 for p in profile.points)
    assert (profile.preprocess_energy_source, profile.preprocess_idle_included) == ("estimate", False)
    assert profile.preprocess_ms_per_image is not None and profile.preprocess_j_per_image is not None
    gpu_idle_j = 500.0 * profile.preprocess_ms_per_image / 1000
    assert 0 < profile.preprocess_j_per_image < 0.1 * gpu_idle_j
    assert profile.served_energy_source == "estimate+nvml"
    # The samplers stopped; the caller's accountant is left to the caller.
    assert all(s._thread is None for s in gpu_accountant.samplers)
    # Both labels are in the files and in the printed table.
    for name in ("p.csv", "p.json"):
        again = read_profile(write_profile(profile, tmp_path / name))
        assert again == profile
    header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
    assert {
        "energy_source",
        "energy_idle_included",
        "preprocess_energy_source",
        "preprocess_idle_included",
    } <= set(header)
    from rich.console import Console

    from studies.profile.report import render

    render(profile, Console(width=200))
    printed = " ".join(capsys.readouterr().out.split())  # the title may wrap
    assert "batch energy: nvml, idle included" in printed
    assert "(estimate, idle not included)" in printed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "gpu"}, "device"),
        ({"energy_source": "sundial"}, "sundial"),
        ({"image_source": "/nonexistent/images"}, "does not exist"),
        ({"batch_sizes": (0,)}, "batch sizes"),
    ],
)
def test_profile_model_bad_input(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        profile_model("digits_cnn", warmup=0, repeats=1, min_time_s=0, images=2, **kwargs)


# --- interpolation ----------------------------------------------------------------------------


def test_interpolation_inside_and_beyond_the_range() -> None:
    profile = make_profile(point(1, 10.0, 1.0), point(4, 16.0, 2.0), point(8, 20.0, 3.0))
    # Profiled sizes exactly.
    assert profile.latency_s(4) == pytest.approx(0.016)
    assert profile.energy_j(8) == pytest.approx(3.0)
    # Linear between neighbours: 10 + (16 - 10) × (2 - 1) / (4 - 1) = 12 ms; 16 + 4 × 2 / 4 = 18 ms.
    assert profile.latency_s(2) == pytest.approx(0.012)
    assert profile.latency_s(6) == pytest.approx(0.018)
    assert profile.energy_j(6) == pytest.approx(2.5)
    # Beyond: the last two points' slope, 1 ms per image: 20 + 8 = 28 ms; 3 + 8 × 0.25 = 5 J.
    assert profile.latency_s(16) == pytest.approx(0.028)
    assert profile.energy_j(16) == pytest.approx(5.0)


def test_extrapolation_is_bounded() -> None:
    # A noisy profile: 8 measured faster than 4. Beyond 8 the cost stays at cost(8), never falls.
    noisy = [(4, 16.0), (8, 14.0)]
    assert interpolate(noisy, 16) == pytest.approx(14.0)
    # A steep slope (+10 per image) is capped at proportional scaling: 14 × 16 / 8 = 28, not 94.
    steep = [(4, 4.0), (8, 14.0)]
    assert interpolate(steep, 16) == pytest.approx(28.0)
    # Below the range: linear from the first two (16 - 3 × 1 = 13), within [16 × 1/4, 16].
    assert interpolate([(4, 16.0), (8, 20.0)], 1) == pytest.approx(13.0)
    # ... but never below proportional scaling (16 - 3 × 10 < 0 → 16 × 1 / 4 = 4).
    assert interpolate([(4, 16.0), (8, 56.0)], 1) == pytest.approx(4.0)
    # ... and never above the smallest size's cost.
    assert interpolate([(4, 16.0), (8, 10.0)], 1) == pytest.approx(16.0)


def test_single_point_scales_proportionally() -> None:
    profile = make_profile(point(8, 20.0, 4.0))
    assert profile.latency_s(16) == pytest.approx(0.040)
    assert profile.latency_s(2) == pytest.approx(0.005)
    assert profile.energy_j(4) == pytest.approx(2.0)


def test_interpolate_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="batch size"):
        interpolate([(1, 1.0)], 0)
    with pytest.raises(ValueError, match="empty"):
        interpolate([], 1)


# --- files ------------------------------------------------------------------------------------


def _measured_like() -> ModelProfile:
    return make_profile(
        point(1, 0.3220424271847704, 0.0032279975577916517),
        point(32, 1.626888837312051, 0.015955622082569072),
        weights="embedded",
        torch_threads=1,
        preprocess_ms_per_image=0.21294482903222062,
        preprocess_j_per_image=0.0020955574883742673,
    )


def test_csv_round_trip(tmp_path: Path) -> None:
    profile = _measured_like()
    path = write_profile(profile, tmp_path / "sub" / "p.csv")
    lines = path.read_text().splitlines()
    assert len(lines) == 3  # header and one row per batch size
    assert lines[0].startswith("model,device,")
    assert read_profile(path) == profile


def test_json_round_trip_keeps_the_notes(tmp_path: Path) -> None:
    profile = dataclasses.replace(_measured_like(), notes=("batch size 64 skipped: out of memory",))
    path = write_profile(profile, tmp_path / "p.json")
    assert read_profile(path) == profile


def test_a_profile_written_before_the_labels_reads_as_it_was_measured(tmp_path: Path) -> None:
    """Old files have no idle or decode-source columns: everything was read from the profile's meter."""
    path = tmp_path / "old.csv"
    path.write_text(
        "model,device,weights,torch_threads,preprocess_ms_per_image,preprocess_j_per_image,batch_size,"
        "batches,latency_mean_ms,energy_j_per_batch,energy_source\n"
        "m,cuda,random,1,2.0,0.4,8,5,3.0,1.5,nvml\n"
    )
    profile = read_profile(path)
    assert profile.energy_idle_included is True
    assert (profile.preprocess_energy_source, profile.preprocess_idle_included) == ("nvml", True)
    assert profile.preprocess_energy_label == "nvml, idle included"
    as_json = tmp_path / "old.json"
    data = dataclasses.asdict(profile)
    for name in ("preprocess_energy_source", "preprocess_idle_included"):
        del data[name]
    for p in data["points"]:
        del p["energy_idle_included"]
    as_json.write_text(json.dumps(data))
    assert read_profile(as_json) == profile


def test_a_minimal_csv_is_enough(tmp_path: Path) -> None:
    path = tmp_path / "hand.csv"
    path.write_text(
        "model,device,energy_source,batch_size,latency_mean_ms,energy_j_per_batch\nm,cpu,rapl,2,4,1\n"
    )
    profile = read_profile(path)
    assert profile.energy_source == "rapl"
    assert profile.points[0].energy_j_per_image == 0.5
    assert profile.latency_s(4) == pytest.approx(0.008)
    assert profile.weights is None and profile.preprocess_ms_per_image is None


HEADER = "model,device,energy_source,batch_size,latency_mean_ms,energy_j_per_batch\n"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.csv", None, "no such profile"),
        ("p.txt", "x", "unknown profile format"),
        ("empty.csv", "", "empty"),
        ("header.csv", HEADER, "no rows"),
        ("foreign.csv", "t,image_id\n0.1,a\n", "missing column"),
        ("word.csv", HEADER + "m,cpu,estimate,1,fast,1\n", "line 2: latency_mean_ms must be a number"),
        ("float-size.csv", HEADER + "m,cpu,estimate,1.5,1,1\n", "batch_size must be an integer"),
        ("zero-size.csv", HEADER + "m,cpu,estimate,0,1,1\n", "batch_size must be >= 1"),
        ("nan.csv", HEADER + "m,cpu,estimate,1,nan,1\n", "must be finite"),
        ("zero-latency.csv", HEADER + "m,cpu,estimate,1,0,1\n", "latency"),
        ("negative-energy.csv", HEADER + "m,cpu,estimate,1,1,-1\n", "energy"),
        ("short.csv", HEADER + "m,cpu,estimate,1,1\n", "line 2: 6 columns expected"),
        ("twice.csv", HEADER + "m,cpu,estimate,1,1,1\nm,cpu,estimate,1,2,2\n", "more than once"),
        ("sources.csv", HEADER + "m,cpu,estimate,1,1,1\nm,cpu,rapl,2,2,2\n", "energy source"),
        ("models.csv", HEADER + "m,cpu,estimate,1,1,1\nn,cpu,estimate,2,2,2\n", "line 3: model differ"),
        ("bad.json", "{not json", "not JSON"),
        ("list.json", "[1, 2]", "points"),
        ("no-points.json", json.dumps({"model": "m", "device": "cpu", "points": []}), "no batch sizes"),
    ],
)
def test_bad_profiles_are_profile_errors(tmp_path: Path, name: str, text: str | None, message: str) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ProfileError, match=message) as caught:
        read_profile(path)
    assert str(path) in str(caught.value)


def test_profile_needs_points_and_one_source() -> None:
    with pytest.raises(ProfileError, match="no batch sizes"):
        make_profile()
    with pytest.raises(ProfileError, match="measured with 'rapl'"):
        make_profile(point(1, 1.0, 1.0, source="rapl"))
    with pytest.raises(ProfileError, match="sorted"):
        make_profile(point(2, 1.0, 1.0), point(1, 1.0, 1.0))
    with pytest.raises(ProfileError, match="preprocess_ms_per_image"):
        make_profile(point(1, 1.0, 1.0), preprocess_ms_per_image=-1.0)
    assert math.isclose(make_profile(point(1, 1.0, 1.0)).latency_s(1), 0.001)


# --- greenserve profile -----------------------------------------------------------------------


def test_cli_profiles_prints_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile-digits.csv"
    args = ["--model", "digits_cnn", "--batch-sizes", "1,2", "--repeats", "2", "--warmup", "1"]
    args += ["--min-time-s", "0", "--torch-threads", "1", "--energy-source", "estimate", "--image-count", "4"]
    assert profile_cli("profile", [*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "digits_cnn" in printed and "estimate" in printed and "J/img" in printed
    assert "idle not included" in printed
    profile = read_profile(out)
    assert profile.batch_sizes == (1, 2)
    assert profile.preprocess_energy_source == "estimate"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "1,x"], "'x' is not an integer"),
        (["--batch-sizes", "0,4"], "0 is not >= 1"),
        (["--batch-sizes", ","], "no batch size"),
        (["--model", "no_such_model_xyz"], "unknown model"),
        (["--out", "profile.txt"], ".csv or .json"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = ["--repeats", "1", "--warmup", "0", "--min-time-s", "0", "--energy-source", "estimate"]
    if "--out" not in args:
        base += ["--out", str(tmp_path / "p.csv")]
    assert profile_cli("profile", [*base, *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("greenserve profile: ")]
    assert len(lines) == 1 and message in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


def test_cli_announces_its_plan_and_takes_the_old_threads_flag(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.json"
    args = ["--batch-sizes", "4,1", "--repeats", "1", "--warmup", "0", "--min-time-s", "0.1"]
    args += ["--threads", "1", "--energy-source", "estimate", "--image-count", "2", "--no-progress"]
    with caplog.at_level(logging.INFO, logger="studies.kit.progress"):
        assert profile_cli("profile", [*args, "--out", str(out)]) == 0
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("profile:")]
    assert "digits_cnn on cpu: 2 batch sizes (1, 4) × ≥1 batches and ≥0.1 s each" in line
    assert "then the decode of 2 images, about 0 s to go" in line
    assert read_profile(out).torch_threads == 1  # --threads is --torch-threads
    assert "saved" in capsys.readouterr().out


def test_settings_from_flags_and_their_checks() -> None:
    parser = build_parser()
    assert settings_from_args(parser.parse_args([])) == ProfileSettings()
    assert ProfileSettings().out_path == Path("results/profile-digits_cnn.csv")
    assert ProfileSettings(model="pkg.mod:make").out_path == Path("results/profile-pkg.mod_make.csv")
    assert "[alias: --threads]" in " ".join(parser.format_help().split())
    with pytest.raises(ProfileError, match=r"\.csv or \.json"):
        ProfileSettings(out=Path("p.txt"))
    with pytest.raises(ProfileError, match="repeats"):
        ProfileSettings(repeats=0)
    with pytest.raises(ProfileError, match="allocator"):
        ProfileSettings(allocator="pooled")  # type: ignore[arg-type]
    assert plan(ProfileSettings(batch_sizes=(1, 8, 8), min_time_s=2.0))[1] == pytest.approx(2 * 2.0 + 0.5)


def test_the_progress_counts_every_size_once_even_past_out_of_memory() -> None:
    steps: list[tuple[str, bool]] = []
    sizes = (1, 4, 8, 16)
    counter = _SizeSteps(lambda what, advance: steps.append((what, advance)), sizes)
    for size in (1, 1, 1, 4, 4, 8):  # warm-up and timed batches; 8 runs out of memory, 16 never runs
        counter.enter(size)
    counter.finish()
    assert sum(advance for _, advance in steps) == len(sizes)
    assert [what for what, _ in steps[:3]] == ["batch size 1", "batch size 4", "batch size 8"]


def test_the_front_door_runs_the_profile(tmp_path: Path) -> None:
    from greenserve.cli import BY_NAME
    from greenserve.cli import main as greenserve

    assert BY_NAME["profile"].module == "studies.profile.cli"
    out = tmp_path / "p.csv"
    args = ["profile", "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--min-time-s", "0"]
    args += ["--energy-source", "estimate", "--image-count", "2", "--no-progress", "--out", str(out)]
    assert greenserve(args) == 0
    assert read_profile(out).batch_sizes == (1,)
