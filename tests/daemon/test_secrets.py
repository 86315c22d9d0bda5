"""Secrets: credentials dir beats the environment, and a Secret never prints its value."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import msgspec
import pytest

from daemon.config import Config, FeedSettings, MqttSinkSettings, SinksSettings
from daemon.config import TelegramSinkSettings as Telegram
from daemon.secrets import (
    SECRET_NAMES,
    Secret,
    SecretError,
    Secrets,
    load_secret,
    required_secrets,
)

CANARY = "Zq8canary41secretvalue"


def test_secret_never_shows_its_value() -> None:
    s = Secret(CANARY)
    assert s.reveal() == CANARY
    shown = [
        repr(s),
        str(s),
        f"{s}",
        f"{s!r}",
        f"{s:>40}",
        "%s %r" % (s, s),  # noqa: UP031 - the old style must hide it too
        str([s]),
        str({"k": s}),
    ]
    assert shown[:3] == ["Secret('***')", "***", "***"]
    assert all(CANARY not in text for text in shown)


def test_secret_in_exceptions_and_encoders() -> None:
    s = Secret(CANARY)
    with pytest.raises(ValueError) as info:
        raise ValueError(f"auth failed with {s}")
    assert CANARY not in str(info.value)
    for encode in (msgspec.json.encode, msgspec.msgpack.encode, json.dumps):
        with pytest.raises(TypeError) as err:
            encode({"key": s})
        assert CANARY not in str(err.value)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(s)
    assert copy.copy(s) is s and copy.deepcopy(s) is s
    with pytest.raises(TypeError):
        vars(s)


def test_secret_equality_and_type() -> None:
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert len({Secret("a"), Secret("a")}) == 1
    with pytest.raises(TypeError):
        Secret(123)  # type: ignore[arg-type]


def test_credentials_dir_beats_env(tmp_path: Path) -> None:
    (tmp_path / "TELEGRAM_BOT_TOKEN").write_text("from-file\n")
    env = {"TELEGRAM_BOT_TOKEN": "from-env", "MQTT_PASSWORD": "env-only"}
    assert load_secret("TELEGRAM_BOT_TOKEN", env, tmp_path) == Secret("from-file")
    assert load_secret("MQTT_PASSWORD", env, tmp_path) == Secret("env-only")
    assert load_secret("FINNHUB_API_KEY", env, tmp_path) is None


def test_credentials_dir_from_the_environment(tmp_path: Path) -> None:
    """systemd sets $CREDENTIALS_DIRECTORY; a file loses one trailing newline (CRLF too)."""
    (tmp_path / "MQTT_PASSWORD").write_text("p4ss word\r\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "MQTT_PASSWORD": "from-env"}
    assert load_secret("MQTT_PASSWORD", env) == Secret("p4ss word")


def test_empty_values_count_as_unset(tmp_path: Path) -> None:
    (tmp_path / "MQTT_PASSWORD").write_text("\n")
    assert load_secret("MQTT_PASSWORD", {"MQTT_PASSWORD": "e"}, tmp_path) == Secret("e")
    assert load_secret("MQTT_PASSWORD", {"MQTT_PASSWORD": ""}, tmp_path) is None
    assert load_secret("MQTT_PASSWORD", {}) is None


def test_default_env_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("FINNHUB_API_KEY", CANARY)
    assert load_secret("FINNHUB_API_KEY") == Secret(CANARY)


def test_unreadable_credential_names_it_not_its_value(tmp_path: Path) -> None:
    (tmp_path / "MQTT_PASSWORD").mkdir()  # a directory: reading it fails
    with pytest.raises(SecretError, match=r"MQTT_PASSWORD: cannot read credential file"):
        load_secret("MQTT_PASSWORD", {}, tmp_path)
    (tmp_path / "TELEGRAM_BOT_TOKEN").write_bytes(b"\xff" + CANARY.encode())
    with pytest.raises(SecretError, match="not UTF-8") as info:
        load_secret("TELEGRAM_BOT_TOKEN", {}, tmp_path)
    assert info.value.__cause__ is None and info.value.__context__ is not None
    assert CANARY not in str(info.value)


def test_names_cannot_escape_the_credentials_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a secret name"):
        load_secret("../etc/passwd", {}, tmp_path)


def _config(provider: str = "replay", **sinks: object) -> Config:
    return Config(feed=FeedSettings(provider=provider), sinks=SinksSettings(**sinks))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("provider", "names"),
    [
        ("alpaca", ["ALPACA_API_KEY", "ALPACA_API_SECRET"]),
        ("massive", ["MASSIVE_API_KEY"]),
        ("finnhub", ["FINNHUB_API_KEY"]),
        ("replay", []),
    ],
)
def test_required_secrets_by_provider(provider: str, names: list[str]) -> None:
    assert required_secrets(_config(provider)) == names


def test_required_secrets_by_sink() -> None:
    mqtt_anonymous = MqttSinkSettings(url="mqtt://h")
    mqtt_user = MqttSinkSettings(url="mqtt://h", username="ha")
    assert required_secrets(_config(mqtt=mqtt_anonymous)) == []
    assert required_secrets(_config(mqtt=mqtt_user)) == ["MQTT_PASSWORD"]
    assert required_secrets(_config("finnhub", telegram=Telegram(), mqtt=mqtt_user)) == [
        "FINNHUB_API_KEY",
        "TELEGRAM_BOT_TOKEN",
        "MQTT_PASSWORD",
    ]


def test_secrets_load_names_every_missing_one_and_no_value(tmp_path: Path) -> None:
    config = _config("alpaca", telegram=Telegram())
    env = {"ALPACA_API_KEY": CANARY}
    with pytest.raises(SecretError) as info:
        Secrets.load(config, env, tmp_path)
    message = str(info.value)
    assert "ALPACA_API_SECRET" in message and "TELEGRAM_BOT_TOKEN" in message
    assert 'feed.provider = "alpaca"' in message and "[sinks.telegram]" in message
    assert "ALPACA_API_KEY" not in message and CANARY not in message


def test_secrets_load_keeps_every_known_secret(tmp_path: Path) -> None:
    (tmp_path / "ALPACA_API_SECRET").write_text("s3cret\n")
    env = {"ALPACA_API_KEY": "k3y", "MQTT_PASSWORD": "unused", "HOME": "/root"}
    secrets = Secrets.load(_config("alpaca"), env, tmp_path)
    assert secrets.require("ALPACA_API_SECRET").reveal() == "s3cret"
    assert secrets.get("ALPACA_API_KEY") == Secret("k3y")
    # Loaded although no setting needs it, so logging can redact it anyway.
    assert secrets.get("MQTT_PASSWORD") == Secret("unused")
    assert secrets.get("HOME") is None and set(secrets.values) <= set(SECRET_NAMES)
    assert sorted(s.reveal() for s in secrets.all()) == ["k3y", "s3cret", "unused"]
    assert "k3y" not in repr(secrets) and "s3cret" not in repr(secrets)
    with pytest.raises(SecretError, match="missing secret TELEGRAM_BOT_TOKEN"):
        secrets.require("TELEGRAM_BOT_TOKEN")
    with pytest.raises(TypeError):
        secrets.values["X"] = Secret("x")  # type: ignore[index]
