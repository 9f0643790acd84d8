"""Fakes at the hardware seam: a powercap sysfs tree in tmp_path and a stand-in ``pynvml`` module."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@pytest.fixture(autouse=True)
def fixed_host_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """Device labels carry the kernel's boot id (energy.identity); "host" in these tests."""
    monkeypatch.setattr("energy.rapl.host_id", lambda: "host")
    monkeypatch.setattr("energy.identity.host_id", lambda: "host")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def write_zone(
    root: Path, dir_name: str, name: str, energy_uj: int, max_range_uj: int = 262143328850
) -> Path:
    """Create one powercap zone directory (flat layout, as in /sys/class/powercap)."""
    zone = root / dir_name
    zone.mkdir(parents=True)
    (zone / "name").write_text(f"{name}\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return zone


def set_energy(zone: Path, energy_uj: int) -> None:
    (zone / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def rapl_tree(tmp_path: Path) -> dict[str, Path]:
    """Two sockets: package-0 with core/uncore/dram subzones, package-1 with dram, and a psys zone."""
    root = tmp_path / "powercap"
    root.mkdir()
    zones = {
        "package-0": write_zone(root, "intel-rapl:0", "package-0", 1_000_000),
        "core-0": write_zone(root, "intel-rapl:0:0", "core", 500_000),
        "uncore-0": write_zone(root, "intel-rapl:0:1", "uncore", 100_000),
        "dram-0": write_zone(root, "intel-rapl:0:2", "dram", 200_000),
        "package-1": write_zone(root, "intel-rapl:1", "package-1", 3_000_000),
        "dram-1": write_zone(root, "intel-rapl:1:0", "dram", 400_000),
        "psys": write_zone(root, "intel-rapl:2", "psys", 9_000_000),
        # The MMIO interface duplicates package-0; it must be ignored.
        "mmio": write_zone(root, "intel-rapl-mmio:0", "package-0", 7_000_000),
    }
    zones["root"] = root
    return zones


class FakeNvml:
    """State behind a fake ``pynvml`` module; tests change the attributes to drive the meter."""

    def __init__(self) -> None:
        self.energy_mj = 5_000
        self.power_mw = 100_000
        self.device_count = 2
        self.energy_supported = True
        self.init_error = False
        self.init_calls = 0
        self.shutdown_calls = 0
        self.opened: list[int] = []
        self.uuid_supported = True
        self.module = self._build_module()

    def _build_module(self) -> types.ModuleType:
        module = types.ModuleType("pynvml")

        class NVMLError(Exception):
            def __init__(self, value: int = 999) -> None:
                super().__init__(value)
                self.value = value

        class NVMLError_NotSupported(NVMLError):  # noqa: N801, N818
            def __init__(self) -> None:
                super().__init__(3)

        def nvml_init() -> None:
            self.init_calls += 1
            if self.init_error:
                raise NVMLError(9)  # Driver Not Loaded

        def nvml_shutdown() -> None:
            self.shutdown_calls += 1

        def get_handle(index: int) -> tuple[str, int]:
            self.opened.append(index)
            return ("handle", index)

        def get_total_energy(handle: object) -> int:
            if not self.energy_supported:
                raise NVMLError_NotSupported()
            return self.energy_mj

        def get_uuid(handle: tuple[str, int]) -> str:
            if not self.uuid_supported:
                raise NVMLError_NotSupported()
            return f"GPU-fake-{handle[1]}"

        def get_pci(handle: tuple[str, int]) -> object:
            raise NVMLError_NotSupported()

        module.nvmlDeviceGetUUID = get_uuid  # type: ignore[attr-defined]
        module.nvmlDeviceGetPciInfo = get_pci  # type: ignore[attr-defined]
        module.NVMLError = NVMLError  # type: ignore[attr-defined]
        module.NVMLError_NotSupported = NVMLError_NotSupported  # type: ignore[attr-defined]
        module.nvmlInit = nvml_init  # type: ignore[attr-defined]
        module.nvmlShutdown = nvml_shutdown  # type: ignore[attr-defined]
        module.nvmlDeviceGetCount = lambda: self.device_count  # type: ignore[attr-defined]
        module.nvmlDeviceGetHandleByIndex = get_handle  # type: ignore[attr-defined]
        module.nvmlDeviceGetTotalEnergyConsumption = get_total_energy  # type: ignore[attr-defined]
        module.nvmlDeviceGetPowerUsage = lambda handle: self.power_mw  # type: ignore[attr-defined]
        return module


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield fake
