"""The energy accounting benchmark's flags, plan announcement and table (the measurement itself, on a
real server, is tests/service/test_energy_truth.py's)."""

from __future__ import annotations

import pytest

from studies.accounting.cli import build_parser, main
from studies.accounting.report import render
from studies.accounting.run import OVERHEAD_ESTIMATE_S, EnergyCheck, plan_line
from studies.accounting.settings import QUICK_DURATION_S, AccountingSettings
from studies.kit.flags import dataclass_from_args
from studies.kit.progress import format_duration


def settings_of(*argv: str) -> AccountingSettings:
    settings: AccountingSettings = dataclass_from_args(AccountingSettings, build_parser().parse_args(argv))
    return settings


def test_defaults_and_flags_keep_their_names() -> None:
    assert settings_of() == AccountingSettings()
    assert settings_of().sources == ("synthetic", "estimate") and settings_of().measured_s == 10.0
    settings = settings_of("--sources", "nvml", "--duration", "4", "--weights", "random", "--device", "cuda")
    assert settings.sources == ("nvml",) and settings.measured_s == 4.0  # --duration: --duration-s's alias
    assert (settings.weights, settings.device) == ("random", "cuda")
    assert settings_of("--duration-s", "20", "--quick").measured_s == QUICK_DURATION_S  # --quick wins


def test_plan_line_says_what_and_how_long() -> None:
    line = plan_line(AccountingSettings())
    assert line.startswith("energy accounting benchmark: 2 source(s) (synthetic, estimate) × 10 s")
    assert line.endswith(f"about {format_duration(2 * (OVERHEAD_ESTIMATE_S + 10.0))} to go")


@pytest.mark.parametrize("argv", [["--clients", "0"], ["--duration-s", "0"], ["--sources", ""]])
def test_bad_settings_are_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("python -m studies.accounting: ")


def test_the_table_shows_every_figure() -> None:
    check = EnergyCheck(
        source="synthetic", model="digits_cnn", requests=1200, zero_or_null=0, closure=1.0012,
        mean_j=0.0021, truth_j=0.0020, mean_vs_truth=1.05, batch_size=8, p99_over_p50=1.21,
        device_j=3.0, idle_j=0.5, seconds=10.0,
        parts_mean_j={"model": 0.0015, "decode": 0.0004, "serving": 0.0002},
    )  # fmt: skip
    text = render([check])
    for figure in (
        "synthetic",
        "1200",
        "1.0012",
        "2.100",
        "2.000",
        "1.050",
        "1.21 (8)",
        "1.50 / 0.40 / 0.20",
    ):
        assert figure in text
