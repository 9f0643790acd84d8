"""The lab's shared kit."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import pytest

from studies.kit.files import write_csv_atomic, write_json_atomic
from studies.kit.flags import add_dataclass_flags, add_flag, dataclass_from_args
from studies.kit.progress import announce, format_duration
from studies.kit.stats import pareto_front


def test_pareto_front_keeps_ties_and_order_and_drops_the_beaten() -> None:
    points = {"a": (1.0, 5.0), "b": (2.0, 2.0), "c": (2.0, 2.0), "d": (3.0, 3.0), "e": (0.5, 9.0)}
    assert pareto_front(list(points), lambda k: points[k]) == ["a", "b", "c", "e"]
    # Maximising the second objective: negate it.
    assert pareto_front(list(points), lambda k: (points[k][0], -points[k][1])) == ["e"]


@dataclasses.dataclass(frozen=True)
class Demo:
    torch_threads: int = 1
    duration_s: float = 10.0
    sizes: tuple[int, ...] = (1, 4)
    quick: bool = False
    window: int = dataclasses.field(default=3, metadata={"aliases": ("--win",), "help": "a window"})


def test_dataclass_flags_take_the_common_names_and_the_old_spellings() -> None:
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, Demo)
    new = dataclass_from_args(
        Demo, parser.parse_args(["--torch-threads", "2", "--duration-s", "3", "--quick"])
    )
    old = dataclass_from_args(Demo, parser.parse_args(["--threads", "2", "--duration", "3", "--quick"]))
    assert new == old == Demo(torch_threads=2, duration_s=3.0, quick=True)
    assert dataclass_from_args(Demo, parser.parse_args(["--sizes", "1,8", "--win", "5"])) == Demo(
        sizes=(1, 8), window=5
    )
    text = parser.format_help()
    assert "[alias: --threads]" in text and "a window (default: 3) [alias: --win]" in text


def test_add_flag_accepts_the_alias() -> None:
    parser = argparse.ArgumentParser()
    add_flag(parser, "--duration-s", type=float, default=1.0, help="seconds")
    assert parser.parse_args(["--duration", "2.5"]).duration_s == 2.5


def test_announce_says_the_plan_the_resume_and_the_time(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        line = announce("zoo", "18 models × 5 sizes = 90 cells", units=90, done=12, estimate_s=860)
    assert line == "zoo: 18 models × 5 sizes = 90 cells, 12 of 90 done (resuming), about 14 min 20 s to go"
    assert caplog.records[-1].getMessage() == line
    assert [format_duration(s) for s in (42, 200, 3900)] == ["42 s", "3 min 20 s", "1 h 05 min"]


def test_atomic_writes_leave_no_temporary_file(tmp_path: Path) -> None:
    write_csv_atomic(tmp_path / "t.csv", ("a", "b"), [{"a": 1, "b": None}])
    write_json_atomic(tmp_path / "t.json", {"x": [1, 2]})
    assert (tmp_path / "t.csv").read_text() == "a,b\n1,\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json"]
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()
