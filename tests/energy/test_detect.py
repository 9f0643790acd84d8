"""create_meter: the auto fallback chain, explicit sources, and refusing bad configuration."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from energy import SOURCE_CHOICES, SOURCES, EnergySourceUnavailable, EstimateMeter, create_meter
from tests.energy.conftest import FakeNvml


def test_sources() -> None:
    assert SOURCES == ("nvml", "rapl", "estimate")
    assert SOURCE_CHOICES == ("auto", "nvml", "rapl", "estimate", "synthetic")


def test_auto_on_cpu_without_rapl_falls_back_to_estimate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="energy")
    meter = create_meter("auto", device="cpu", watts_per_core=7.0, powercap_root=tmp_path)

    assert meter.source == "estimate"
    assert meter.is_estimate
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'rapl' skipped" in warnings[0].getMessage()
    assert "no RAPL zones" in warnings[0].getMessage()


def test_auto_on_cpu_with_rapl(rapl_tree: dict[str, Path]) -> None:
    meter = create_meter(powercap_root=rapl_tree["root"])

    assert meter.source == "rapl"
    assert "host:package-0" in meter.devices


def test_auto_on_cuda_uses_nvml(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    with create_meter(device="cuda:0", powercap_root=tmp_path) as meter:
        assert meter.source == "nvml"
        assert meter.devices == ["GPU-fake-0"]


def test_auto_on_cuda_without_nvml_logs_each_skipped_source(
    fake_nvml: FakeNvml, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_nvml.init_error = True
    caplog.set_level(logging.WARNING, logger="energy")
    meter = create_meter(device="cuda", powercap_root=tmp_path)

    assert meter.source == "estimate"
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(messages) == 2
    assert "'nvml' skipped" in messages[0]
    assert "'rapl' skipped" in messages[1]


def test_explicit_source_that_cannot_start_raises(tmp_path: Path, fake_nvml: FakeNvml) -> None:
    with pytest.raises(EnergySourceUnavailable, match="no RAPL zones"):
        create_meter("rapl", powercap_root=tmp_path)
    fake_nvml.init_error = True
    with pytest.raises(EnergySourceUnavailable, match="NVML"):
        create_meter("nvml", device="cuda")


def test_explicit_estimate_uses_watts_per_core() -> None:
    meter = create_meter("estimate", watts_per_core=4.0)

    assert isinstance(meter, EstimateMeter)
    assert meter.watts_per_core == 4.0


def test_unknown_source_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown energy source 'gpu'") as excinfo:
        create_meter("gpu")
    for name in ("auto", "nvml", "rapl", "estimate"):
        assert repr(name) in str(excinfo.value)


def test_bad_watts_per_core_fails_even_when_unused(rapl_tree: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="-1"):
        create_meter(powercap_root=rapl_tree["root"], watts_per_core=-1.0)


def test_accountant_on_a_gpu_prices_cpu_work_with_a_cpu_meter(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    from energy import close_accountant, create_accountant

    accountant = create_accountant("auto", device="cuda:0", powercap_root=tmp_path)
    try:
        assert accountant.accelerator is not None and accountant.accelerator.source == "nvml"
        assert accountant.cpu.source == "estimate"  # no RAPL here: the CPU side falls back
        assert accountant.sources == ["nvml", "estimate"]
        assert accountant.accelerator.meter.cpu_scope is None and accountant.cpu.meter.cpu_scope == "process"
    finally:
        close_accountant(accountant)
    assert fake_nvml.shutdown_calls == 1


def test_accountant_on_rapl_counts_the_machines_cpu_and_has_no_idle_until_measured(
    rapl_tree: dict[str, Path],
) -> None:
    from energy import close_accountant, create_accountant

    accountant = create_accountant("rapl", powercap_root=rapl_tree["root"])
    try:
        assert accountant.accelerator is None and accountant.cpu.source == "rapl"
        assert accountant.cpu.meter.cpu_scope == "machine"  # every process on the package
        assert accountant.cpu.idle_power_w is None  # the server measures it at start-up
        idle = accountant.cpu.measure_idle(0.05)
        assert set(idle) == set(accountant.cpu.devices) and all(w == 0.0 for w in idle.values())
    finally:
        close_accountant(accountant)


def test_a_cpu_source_on_a_cuda_device_warns_that_the_gpu_is_not_measured(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from energy import close_accountant, create_accountant

    caplog.set_level(logging.WARNING, logger="energy")
    accountant = create_accountant("estimate", device="cuda")
    close_accountant(accountant)
    assert any("GPU's own energy is not in any figure" in r.getMessage() for r in caplog.records)
