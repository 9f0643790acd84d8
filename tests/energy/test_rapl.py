"""RAPL meter on a fake powercap tree: counting rule, wraparound, permissions, empty trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from energy import EnergySourceUnavailable, RaplMeter
from energy import rapl as rapl_module
from energy.rapl import wrapped_delta_uj
from tests.energy.conftest import set_energy, write_zone


def test_counts_packages_and_dram_only(rapl_tree: dict[str, Path]) -> None:
    meter = RaplMeter(rapl_tree["root"])

    assert meter.source == "rapl"
    assert not meter.is_estimate
    assert sorted(meter.devices) == ["host:dram-0", "host:dram-1", "host:package-0", "host:package-1"]
    assert meter.read_j() == dict.fromkeys(meter.devices, 0.0)


def test_reads_deltas_since_creation_and_ignores_nested_zones(rapl_tree: dict[str, Path]) -> None:
    meter = RaplMeter(rapl_tree["root"])
    set_energy(rapl_tree["package-0"], 1_000_000 + 2_500_000)  # +2.5 J
    set_energy(rapl_tree["dram-1"], 400_000 + 500_000)  # +0.5 J
    # These would double count if they were summed: core/uncore sit inside package-0, psys covers all.
    set_energy(rapl_tree["core-0"], 99_000_000)
    set_energy(rapl_tree["uncore-0"], 99_000_000)
    set_energy(rapl_tree["psys"], 99_000_000)

    assert meter.read_j() == {
        "host:package-0": 2.5,
        "host:dram-0": 0.0,
        "host:package-1": 0.0,
        "host:dram-1": 0.5,
    }


def test_wraparound_gives_the_positive_delta(tmp_path: Path) -> None:
    max_range_uj = 1_000_000_000
    zone = write_zone(tmp_path, "intel-rapl:0", "package-0", max_range_uj - 300_000, max_range_uj)
    meter = RaplMeter(tmp_path)

    set_energy(zone, 200_000)  # wrapped: 0.3 J to the top of the range, then 0.2 J from zero
    assert meter.read_j() == {"host:package-0": pytest.approx(0.5)}
    set_energy(zone, 1_200_000)  # and accumulation continues normally after the wrap
    assert meter.read_j() == {"host:package-0": pytest.approx(1.5)}


def test_wrapped_delta_uj() -> None:
    assert wrapped_delta_uj(100, 250, 1_000) == 150
    assert wrapped_delta_uj(900, 50, 1_000) == 150
    assert wrapped_delta_uj(500, 500, 1_000) == 0


def test_nested_layout_is_accepted(tmp_path: Path) -> None:
    # /sys/devices/virtual/powercap/intel-rapl nests subzones inside their package.
    package = write_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    write_zone(package, "intel-rapl:0:0", "core", 0)
    write_zone(package, "intel-rapl:0:1", "dram", 0)

    assert RaplMeter(tmp_path).devices == ["host:package-0", "host:dram-0"]


def test_permission_denied_says_what_to_do(
    rapl_tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, which chmod cannot lock out, so refuse at the read seam instead.
    real_read_int = rapl_module._read_int

    def read_int(path: Path) -> int:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_int(path)

    monkeypatch.setattr(rapl_module, "_read_int", read_int)

    with pytest.raises(EnergySourceUnavailable) as excinfo:
        RaplMeter(rapl_tree["root"])
    message = str(excinfo.value)
    assert "permission denied" in message
    assert "root" in message
    assert "CVE-2020-8694" in message
    assert "chmod o+r" in message
    assert "'estimate'" in message


@pytest.mark.parametrize("make_root", ["empty", "missing", "only_psys"])
def test_no_zones_is_unavailable(tmp_path: Path, make_root: str) -> None:
    root = tmp_path / "powercap"
    if make_root != "missing":
        root.mkdir()
    if make_root == "only_psys":
        write_zone(root, "intel-rapl:0", "psys", 0)

    with pytest.raises(EnergySourceUnavailable, match="no RAPL zones under"):
        RaplMeter(root)


def test_zones_are_ordered_numerically(tmp_path: Path) -> None:
    for number in (10, 2):
        write_zone(tmp_path, f"intel-rapl:{number}", f"package-{number}", 0)
        write_zone(tmp_path, f"intel-rapl:{number}:0", "dram", 0)

    assert RaplMeter(tmp_path).devices == ["host:package-2", "host:dram-2", "host:package-10", "host:dram-10"]
