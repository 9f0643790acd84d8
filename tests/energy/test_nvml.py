"""NVML meter against a fake pynvml: counter path, power-polling fallback, start-up failures."""

from __future__ import annotations

import pytest

from energy import EnergyError, EnergySourceUnavailable, NvmlMeter
from energy.nvml import cuda_index, nvml_index
from tests.energy.conftest import FakeClock, FakeNvml


def test_counter_path_reads_millijoules_since_creation(fake_nvml: FakeNvml) -> None:
    meter = NvmlMeter("cuda:1")

    assert meter.source == "nvml"
    assert meter.devices == ["GPU-fake-1"]
    assert fake_nvml.opened == [1]
    assert not meter.is_polling
    assert meter.read_j() == {"GPU-fake-1": 0.0}
    fake_nvml.energy_mj += 1_500
    assert meter.read_j() == {"GPU-fake-1": pytest.approx(1.5)}


def test_counter_going_back_never_decreases_energy(fake_nvml: FakeNvml) -> None:
    meter = NvmlMeter("cuda")
    fake_nvml.energy_mj += 2_000
    assert meter.read_j() == {"GPU-fake-0": pytest.approx(2.0)}
    fake_nvml.energy_mj = 10  # driver reloaded
    assert meter.read_j() == {"GPU-fake-0": pytest.approx(2.0)}
    fake_nvml.energy_mj += 1_000
    assert meter.read_j() == {"GPU-fake-0": pytest.approx(3.0)}


def test_power_polling_integrates_trapezoids(fake_nvml: FakeNvml, clock: FakeClock) -> None:
    fake_nvml.energy_supported = False  # pre-Volta
    fake_nvml.power_mw = 100_000
    meter = NvmlMeter("cuda", clock=clock)
    assert meter.is_polling

    clock.advance(0.5)
    assert meter.read_j() == {"GPU-fake-0": pytest.approx(50.0)}  # 100 W for 0.5 s
    fake_nvml.power_mw = 300_000
    clock.advance(1.0)
    assert meter.read_j() == {"GPU-fake-0": pytest.approx(50.0 + 200.0)}  # ramp 100 → 300 W over 1 s


def test_init_failure_is_unavailable(fake_nvml: FakeNvml) -> None:
    fake_nvml.init_error = True

    with pytest.raises(EnergySourceUnavailable, match="NVML failed to initialise"):
        NvmlMeter("cuda")


def test_missing_gpu_is_unavailable_and_shuts_nvml_down(fake_nvml: FakeNvml) -> None:
    with pytest.raises(EnergySourceUnavailable, match="no GPU with index 5"):
        NvmlMeter("cuda:5")
    assert fake_nvml.shutdown_calls == fake_nvml.init_calls == 1


def test_non_cuda_device_is_unavailable(fake_nvml: FakeNvml) -> None:
    with pytest.raises(EnergySourceUnavailable, match="measures a CUDA device"):
        NvmlMeter("cpu")
    assert fake_nvml.init_calls == 0


def test_close_is_idempotent_and_later_reads_fail(fake_nvml: FakeNvml) -> None:
    with NvmlMeter("cuda") as meter:
        pass
    meter.close()

    assert fake_nvml.shutdown_calls == 1
    with pytest.raises(EnergyError, match="closed"):
        meter.read_j()


def test_cuda_visible_devices_maps_simple_lists(fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")

    assert NvmlMeter("cuda:0").devices == ["GPU-fake-1"]  # the GPU that NVML index 1 is


@pytest.mark.parametrize(
    ("device", "index"),
    [("cuda", 0), ("cuda:0", 0), ("cuda:3", 3)],
)
def test_cuda_index(device: str, index: int) -> None:
    assert cuda_index(device) == index


@pytest.mark.parametrize("device", ["cpu", "cuda:x", "mps", "cuda:"])
def test_cuda_index_rejects_other_devices(device: str) -> None:
    with pytest.raises(ValueError, match="not a CUDA device"):
        cuda_index(device)


def test_nvml_index() -> None:
    assert nvml_index(1, {}) == 1
    assert nvml_index(1, {"CUDA_VISIBLE_DEVICES": "3, 2"}) == 2
    assert nvml_index(0, {"CUDA_VISIBLE_DEVICES": "GPU-8d5d3c1e"}) == 0  # not resolved; warned
    with pytest.raises(EnergySourceUnavailable, match="not visible"):
        nvml_index(2, {"CUDA_VISIBLE_DEVICES": "0,1"})
    with pytest.raises(EnergySourceUnavailable, match="empty"):
        nvml_index(0, {"CUDA_VISIBLE_DEVICES": ""})


def test_device_label_is_the_gpus_identity_else_its_index(fake_nvml: FakeNvml) -> None:
    with NvmlMeter("cuda:1") as meter:
        assert meter.devices == ["GPU-fake-1"]  # the same label in every replica on this GPU
        assert meter.index == 1
    fake_nvml.uuid_supported = False
    with NvmlMeter("cuda:1") as meter:
        assert meter.devices == ["gpu1"]  # neither UUID nor PCI bus id: the NVML index
