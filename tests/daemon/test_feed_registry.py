"""A feed provider is one registry entry: a toy one, defined here and nowhere else, is
chosen by `[feed] provider`, has its secrets demanded, and feeds the engine."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from daemon.app import Ingest, build_feed
from daemon.config import FeedSettings, check_config_main, load_config
from daemon.config_errors import ConfigError
from daemon.feeds.base import FeedBatch, FeedStats
from daemon.feeds.options import FeedOptions
from daemon.feeds.provider import FeedProvider
from daemon.feeds.registry import FEEDS
from daemon.secrets import SecretError, Secrets, required_secrets
from daemon.service import run_daemon
from signals.bar import Bar
from tests.daemon.minute_market import minute_market

TOY_KEY = "TOY_API_KEY"
TOKEN = "toy-token-0123456789"


class ToyFeed:
    """Plays a frame of minute bars, one batch per minute, then waits to be cancelled."""

    def __init__(self, token: str, options: FeedOptions, frame: pl.DataFrame) -> None:
        self.name = "toy"
        self.stats = FeedStats()
        self.token, self.options, self._frame = token, options, frame

    async def run(self, emit: Callable[[FeedBatch], None]) -> None:
        wanted = set(self.options.symbols)
        for (_,), minute in self._frame.group_by(["time"], maintain_order=True):
            bars = tuple(
                Bar(r["symbol"], r["time"], r["open"], r["high"], r["low"], r["close"], r["volume"])
                for r in minute.iter_rows(named=True)
                if r["symbol"] in wanted
            )
            self.stats.bars += len(bars)
            emit(FeedBatch(bars, "live", time.time()))
            await asyncio.sleep(0)
        await asyncio.Event().wait()


@pytest.fixture
def frame() -> pl.DataFrame:
    df, _ = minute_market(n_sessions=1)
    return df.sort("time", "symbol")


@pytest.fixture
def toy(frame: pl.DataFrame, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ToyFeed]]:
    built: list[ToyFeed] = []

    def build(section: FeedSettings, options: FeedOptions, secrets: Secrets) -> ToyFeed:
        feed = ToyFeed(secrets.require(TOY_KEY).reveal(), options, frame)
        built.append(feed)
        return feed

    monkeypatch.setitem(FEEDS, "toy", FeedProvider(build=build, secrets=(TOY_KEY,)))
    yield built


def _config(tmp: Path, provider: str = "toy") -> Path:
    path = tmp / "config.toml"
    path.write_text(
        f"""
[feed]
provider = "{provider}"
symbols = ["IWM", "SPY", "QQQ"]

[sinks.console]
enabled = false

[sinks.jsonl]
path = "{tmp / "alerts.jsonl"}"

[state]
dir = "{tmp / "state"}"

[health]
enabled = false
"""
    )
    return path


def test_an_unregistered_provider_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path))
    assert info.value.key == "feed.provider"
    assert '"toy"' not in str(info.value) and '"alpaca"' in str(info.value)


def test_the_registry_offers_the_toy_provider_to_config(tmp_path: Path, toy: list[ToyFeed]) -> None:
    config = load_config(_config(tmp_path))
    assert config.feed.provider == "toy"
    with pytest.raises(ConfigError, match='"toy"'):
        load_config(_config(tmp_path, "nope"))
    out = io.StringIO()
    assert check_config_main(_config(tmp_path), out=out, err=io.StringIO()) == 0
    assert "  feed: toy, symbols IWM, SPY, QQQ\n" in out.getvalue()


def test_the_toy_providers_secrets_are_demanded(tmp_path: Path, toy: list[ToyFeed]) -> None:
    config = load_config(_config(tmp_path))
    assert required_secrets(config) == [TOY_KEY]
    with pytest.raises(SecretError) as info:
        Secrets.load(config, env={}, credentials_dir=tmp_path)
    assert TOY_KEY in str(info.value) and 'feed.provider = "toy"' in str(info.value)
    secrets = Secrets.load(config, env={TOY_KEY: TOKEN}, credentials_dir=tmp_path)
    feed = build_feed(config, secrets, realtime=True)
    assert toy == [feed] and toy[0].token == TOKEN
    assert toy[0].options.symbols == ("IWM", "SPY", "QQQ")
    assert toy[0].options.warmup_s == FEEDS["toy"].live_backfill_s


async def test_the_toy_providers_bars_reach_the_engine(
    tmp_path: Path, toy: list[ToyFeed], frame: pl.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOY_KEY, TOKEN)
    config = load_config(_config(tmp_path))
    last_minute = int(frame["time"].max())  # type: ignore[arg-type]
    stop = asyncio.Event()
    ingests: list[Ingest] = []

    async def watch() -> None:
        while not ingests or ingests[0].stats.last_bar_time != last_minute:
            await asyncio.sleep(0.02)
        stop.set()

    async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
        tg.create_task(watch())
        await run_daemon(
            config, Secrets.load(config), stop, realtime=False, on_ingest=ingests.append
        )
    ingest = ingests[0]
    assert len(toy) == 1 and ingest.stats.bars == frame.height
    engine = ingest.pipeline.minute
    assert engine is not None and engine.last_time("IWM") == last_minute
    daily = ingest.pipeline.engine("1d")
    iwm = frame.filter(pl.col("symbol") == "IWM")
    assert daily.rings.frame(daily.row("IWM"))["volume"].to_list() == [iwm["volume"].sum()]
