"""``greenserve train …``: flags generated from the settings, errors as exit status 2, report redraw."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenserve import cli


def test_train_help_lists_the_studies(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "ablation", "--help"])
    out = capsys.readouterr().out
    for flag in ("--conv-levels", "--linear-levels", "--activation-levels", "--repeats", "--quick", "--out"):
        assert flag in out
    assert "--torch-threads" in out and "[alias: --threads]" in out  # the common name, the old one kept
    with pytest.raises(SystemExit):
        cli.main(["train", "hpo", "--help"])
    out = capsys.readouterr().out
    for flag in ("--strategies", "--rounds", "--torch-threads", "--threads", "--quick", "--out"):
        assert flag in out


def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "abl"
    assert cli.main(["train", "ablation", "--conv-levels", "0,4", "--out", str(out)]) == 2
    assert "conv" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert cli.main(["train", "hpo", "--strategies", "annealing", "--out", str(tmp_path / "hpo")]) == 2
    assert "annealing" in capsys.readouterr().err
    assert cli.main(["train", "report", str(tmp_path / "missing.csv")]) == 2


def test_quick_ablation_then_redraw_from_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "abl"
    args = ["train", "ablation", "--quick", "--conv-levels", "1,2", "--linear-levels", "1"]
    assert cli.main([*args, "--activation-levels", "true", "--out", str(out)]) == 0
    runs = out / "ablation_runs.csv"
    assert runs.is_file()
    summary = (out / "ablation_summary.md").read_text()
    redrawn = tmp_path / "redrawn"
    assert cli.main(["train", "report", str(runs), "--out", str(redrawn)]) == 0
    assert (redrawn / "ablation_summary.md").read_text() == summary
    assert any(p.suffix == ".png" for p in redrawn.iterdir())
