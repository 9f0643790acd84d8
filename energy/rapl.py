"""CPU energy from Intel/AMD RAPL counters exposed by the Linux powercap framework.

Layout under ``/sys/class/powercap`` (all zones appear there side by side; under
``/sys/devices/virtual/powercap/intel-rapl`` the subzones are nested in their parents, and both
layouts are accepted)::

    intel-rapl:0/      name = package-0   energy_uj  max_energy_range_uj
    intel-rapl:0:0/    name = core        (inside package-0)
    intel-rapl:0:1/    name = uncore      (inside package-0)
    intel-rapl:0:2/    name = dram        (beside the package, not inside it)
    intel-rapl:1/      name = psys        (whole SoC/platform, includes the packages)

Counting rule: sum the ``package-N`` zones and the ``dram`` zones only. ``core`` and ``uncore`` are
parts of their package and would be counted twice; ``psys`` covers the packages too. Zones are
chosen by their ``name`` file, not by vendor, so AMD CPUs (whose kernel driver also registers under
``intel-rapl``) work the same way; ``intel-rapl-mmio`` zones duplicate the MSR ones and are ignored.

Counters are in microjoules and wrap around at ``max_energy_range_uj``. A wrap is detected when a
reading is lower than the previous one; the delta is then ``cur + (max_range - prev)``. The true
counter wraps one counter unit after ``max_range`` (about 61 µJ), which we ignore consistently. A
counter that wraps *twice* between two reads cannot be detected; at 200 W that takes over 20
minutes, and the sampler reads every few tens of milliseconds.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from energy.base import EnergyError, EnergyMeter, EnergySourceUnavailable
from energy.identity import host_id

logger = logging.getLogger(__name__)

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"

# intel-rapl:N (a top-level zone) or intel-rapl:N:M (a subzone of zone N).
_ZONE_DIR = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")
_PACKAGE_NAME = re.compile(r"^package-\d+$")

_PERMISSION_HELP = (
    "since Linux 5.10, energy_uj is readable only by root (CVE-2020-8694 'Platypus'). "
    "Run as root, grant read access (e.g. `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj` "
    "until reboot, or a udev rule to make it permanent), or choose the 'estimate' energy source"
)


def _read_int(path: Path) -> int:
    """Read one integer from a sysfs file. The single seam for file access (tests patch it)."""
    return int(path.read_text().strip())


@dataclass
class _Zone:
    label: str
    energy_path: Path
    max_range_uj: int
    last_uj: int
    total_uj: int = 0


def _zone_dirs(root: Path) -> dict[str, Path]:
    """Every RAPL zone directory under ``root``, top-level and nested, keyed by its directory name."""
    found: dict[str, Path] = {}
    for top in sorted(root.iterdir()) if root.is_dir() else []:
        if not _ZONE_DIR.match(top.name):
            continue
        found.setdefault(top.name, top)
        for child in sorted(top.iterdir()) if top.is_dir() else []:
            if _ZONE_DIR.match(child.name):
                found.setdefault(child.name, child)
    return found


def _zone_number(dir_name: str) -> tuple[int, ...]:
    """Sort key: ``intel-rapl:10`` after ``intel-rapl:2``, subzones right after their zone."""
    return tuple(int(part) for part in dir_name.split(":")[1:])


def _label_for(dir_name: str, zone_name: str) -> str | None:
    """Device label for a zone we count, or None for zones we skip (see the module's counting rule)."""
    if _PACKAGE_NAME.match(zone_name):
        return zone_name
    if zone_name == "dram":
        match = _ZONE_DIR.match(dir_name)
        assert match is not None  # only called with matching directory names
        return f"dram-{match.group(1)}"  # the package (top-level zone) number it belongs to
    return None


class RaplMeter(EnergyMeter):
    """Cumulative CPU package + DRAM energy per RAPL zone, labelled ``<host>:package-N`` / ``<host>:dram-N``
    (``<host>``: :func:`energy.identity.host_id`).

    Raises :class:`EnergySourceUnavailable` when there are no RAPL zones under ``powercap_root`` or
    their counters cannot be read (typically: not root).
    """

    source = "rapl"
    idle_included = True
    cpu_scope = "machine"

    def __init__(self, powercap_root: str | os.PathLike[str] = DEFAULT_POWERCAP_ROOT) -> None:
        root = Path(powercap_root)
        self._lock = threading.Lock()
        self._zones: list[_Zone] = []
        for dir_name, zone_dir in sorted(_zone_dirs(root).items(), key=lambda item: _zone_number(item[0])):
            try:
                zone_name = (zone_dir / "name").read_text().strip()
            except OSError as exc:
                logger.warning("skipping RAPL zone %s: cannot read its name (%s)", zone_dir, exc)
                continue
            label = _label_for(dir_name, zone_name)
            if label is None:
                logger.debug(
                    "not counting RAPL zone %s (%s): nested in or covering a package", dir_name, zone_name
                )
                continue
            label = f"{host_id()}:{label}"  # the physical package (energy.identity)
            if label in (zone.label for zone in self._zones):
                label = f"{label}@{dir_name}"  # unusual layout; keep labels unique rather than merge zones
            self._zones.append(self._open_zone(zone_dir, label))
        if not self._zones:
            raise EnergySourceUnavailable(
                f"no RAPL zones under {root} (this CPU or VM exposes no powercap energy counters); "
                "choose the 'estimate' energy source"
            )
        logger.info("energy source 'rapl': zones %s under %s", [zone.label for zone in self._zones], root)

    @staticmethod
    def _open_zone(zone_dir: Path, label: str) -> _Zone:
        energy_path = zone_dir / "energy_uj"
        try:
            last_uj = _read_int(energy_path)
            max_range_uj = _read_int(zone_dir / "max_energy_range_uj")
        except PermissionError as exc:
            raise EnergySourceUnavailable(
                f"cannot read {energy_path}: permission denied; {_PERMISSION_HELP}"
            ) from exc
        except (OSError, ValueError) as exc:
            raise EnergySourceUnavailable(f"cannot read RAPL zone {zone_dir}: {exc}") from exc
        return _Zone(label=label, energy_path=energy_path, max_range_uj=max_range_uj, last_uj=last_uj)

    @property
    def devices(self) -> list[str]:
        return [zone.label for zone in self._zones]

    def read_j(self) -> dict[str, float]:
        with self._lock:
            for zone in self._zones:
                try:
                    current_uj = _read_int(zone.energy_path)
                except (OSError, ValueError) as exc:
                    raise EnergyError(f"cannot read {zone.energy_path}: {exc}") from exc
                zone.total_uj += wrapped_delta_uj(zone.last_uj, current_uj, zone.max_range_uj)
                zone.last_uj = current_uj
            # Accumulate in integer µJ (exact), convert only on the way out.
            return {zone.label: zone.total_uj / 1e6 for zone in self._zones}


def wrapped_delta_uj(previous_uj: int, current_uj: int, max_range_uj: int) -> int:
    """Energy between two readings of a counter that wraps to 0 after ``max_range_uj``; always >= 0."""
    if current_uj >= previous_uj:
        return current_uj - previous_uj
    # max() guards against a max_range_uj below the previous reading (a broken driver), never a real wrap.
    return max(0, current_uj + (max_range_uj - previous_uj))
