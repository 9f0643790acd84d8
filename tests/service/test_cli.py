"""The greenserve command and the settings it is generated from."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from service import cli, digits, server
from service.config import Settings


def test_serve_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in out, name
        assert f"GREENSERVE_{name.upper()}" in out.replace("\n", "").replace(" ", ""), name


def test_serve_help_lists_the_synthetic_source_and_its_settings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "synthetic" in out.split("--energy-source", 1)[1].split("--", 1)[0]  # among the choices
    for flag in ("--synthetic-idle-w", "--synthetic-counter-period-ms", "--synthetic-read-ms"):
        assert flag in out
    settings = cli.settings_from_args(
        cli.build_parser().parse_args(["serve", "--energy-source", "synthetic", "--synthetic-read-ms", "0"])
    )
    assert settings.energy_source == "synthetic" and settings.synthetic_read_ms == 0
    assert (settings.synthetic_idle_w, settings.synthetic_counter_period_ms) == (10.0, 100.0)


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENSERVE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("GREENSERVE_MAX_WAIT_MS", "7")
    args = cli.build_parser().parse_args(["serve", "--max-batch-size", "16", "--no-warmup"])
    settings = cli.settings_from_args(args)
    assert settings.max_batch_size == 16  # flag beats env
    assert settings.max_wait_ms == 7  # env beats default
    assert settings.warmup is False


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"device": "gpu"}, "gpu"),
        ({"default_timeout_ms": 10, "max_timeout_ms": 5}, "exceeds max_timeout_ms"),
        ({"energy_source": "solar"}, "energy_source"),
        ({"labels_file": "/nonexistent/labels.txt"}, "does not exist"),
        ({"watts_per_core": 0}, "watts_per_core"),
        ({"keep_alive_s": 0}, "keep_alive_s"),
    ],
)
def test_bad_settings_are_refused_with_the_value_named(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Settings(**overrides)  # type: ignore[arg-type]


def test_default_keep_alive_outlasts_client_pools() -> None:
    """A pooled client reuses a connection until its own expiry; a server closing it first races the
    client's next request (a reset instead of an answer). httpx's expiry is the shortest we meet."""
    assert Settings().keep_alive_s > httpx.Limits().keepalive_expiry + 1  # type: ignore[operator]


def test_serve_with_bad_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--max-wait-ms", "-1"]) == 2
    assert "max_wait_ms" in capsys.readouterr().err


def test_train_default_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "digits.pt"
    assert cli.main(["train-default", "--out", str(out), "--epochs", "3"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    _model, labels = digits.load_model(out)
    assert labels == digits.LABELS
    assert out.stat().st_size < 300 * 1024


def test_serve_with_unknown_model_exits_2_with_one_clear_line(caplog: pytest.LogCaptureFixture) -> None:
    assert cli.main(["serve", "--model", "resnet-18", "--port", "0"]) == 2
    assert "cannot start: unknown model 'resnet-18'" in caplog.text
    assert "did you mean resnet18" in caplog.text


TOKEN_HINT = r"--admin-token.*GREENSERVE_ADMIN_TOKEN|GREENSERVE_ADMIN_TOKEN.*--admin-token"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_non_loopback_host_needs_an_admin_token(host: str) -> None:
    with pytest.raises(ValidationError, match=TOKEN_HINT) as info:
        Settings(host=host)
    assert repr(host) in str(info.value)
    assert Settings(host=host, admin_token="s3cret").host == host  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LocalHost"])
def test_loopback_host_needs_no_token(host: str) -> None:
    assert Settings(host=host).admin_token is None


@pytest.mark.parametrize("token", ["", "   ", "\t\n"])
def test_empty_admin_token_is_refused(token: str) -> None:
    with pytest.raises(ValidationError, match="admin_token"):
        Settings(admin_token=token)  # type: ignore[arg-type]


def test_serve_on_all_interfaces_without_a_token_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GREENSERVE_ADMIN_TOKEN", raising=False)

    def must_not_start(settings: Settings) -> int:
        pytest.fail(f"the server started on {settings.host} without a token")

    monkeypatch.setattr(server, "serve", must_not_start)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "'0.0.0.0'" in line]
    assert len(lines) == 1, err
    assert re.search(TOKEN_HINT, lines[0]), err
    monkeypatch.setenv("GREENSERVE_ADMIN_TOKEN", "")
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "admin_token" in capsys.readouterr().err
