"""What the supervisor builds from a config: rates source, feeds per provider, sinks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.app import build_feed, build_pipeline, build_sinks
from daemon.config import load_config
from daemon.feeds.alpaca import AlpacaFeed
from daemon.feeds.finnhub import FinnhubFeed
from daemon.feeds.massive import MassiveFeed
from daemon.feeds.replay_feed import ReplayFeed
from daemon.secrets import SecretError, Secrets


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(body)
    return path


def test_proxy_rates_source_feeds_the_engine(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, '[feed]\nprovider = "replay"\nsymbols = ["IWM", "SPY", "QQQ", "SHY"]\n'
                                            '[rates]\nsource = "proxy"\nproxy_symbol = "SHY"\n'))  # fmt: skip
    pipe = build_pipeline(config, datetime.now(UTC))
    assert pipe.daily.config.rates_proxy == "SHY" and pipe.engine("1m").config.rates_proxy == "SHY"


@pytest.mark.parametrize(
    ("provider", "env", "cls"),
    [
        ("alpaca", {"ALPACA_API_KEY": "k" * 20, "ALPACA_API_SECRET": "s" * 40}, AlpacaFeed),
        ("massive", {"MASSIVE_API_KEY": "m" * 32}, MassiveFeed),
        ("finnhub", {"FINNHUB_API_KEY": "f" * 20}, FinnhubFeed),
        ("replay", {}, ReplayFeed),
    ],
)
def test_each_provider_builds_its_feed(
    tmp_path: Path, provider: str, env: dict[str, str], cls: type
) -> None:
    config = load_config(
        _config(tmp_path, f'[feed]\nprovider = "{provider}"\nurl = "ws://127.0.0.1:9/x"\n')
    )
    feed = build_feed(config, Secrets.load(config, env=env), realtime=True)
    assert isinstance(feed, cls)
    for secret in env.values():
        assert secret not in repr(feed)


def test_missing_provider_key_names_the_variable(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, '[feed]\nprovider = "massive"\n'))
    with pytest.raises(SecretError, match="MASSIVE_API_KEY"):
        Secrets.load(config, env={})


def test_sinks_follow_the_config(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, f'[feed]\nprovider = "replay"\n[sinks.jsonl]\npath = "{tmp_path / "a.jsonl"}"\n'
                                            '[sinks.mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'))  # fmt: skip
    sinks = build_sinks(config, Secrets.load(config, env={}), ["r"])
    assert [s.name for s in sinks] == ["console", "jsonl", "mqtt"]
