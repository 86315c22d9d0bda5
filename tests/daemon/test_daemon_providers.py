"""The daemon end to end on the Massive and Finnhub feeds, each against its local protocol server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import polars as pl
import pytest

from daemon.app import Ingest
from daemon.config import load_config
from daemon.secrets import Secrets
from daemon.service import run_daemon
from tests.daemon.feeds.finnhub_server import FinnhubServer, make_tape
from tests.daemon.feeds.massive_server import MassiveServer
from tests.daemon.minute_market import minute_market


def _config(tmp: Path, provider: str, url: str, rest_url: str, symbols: list[str]) -> Path:
    path = tmp / "config.toml"
    path.write_text(
        f"""
[feed]
provider = "{provider}"
url = "{url}"
rest_url = "{rest_url}"
symbols = {symbols!r}
backoff_initial_s = 0.05

[sinks.console]
enabled = false

[sinks.jsonl]
path = "{tmp / "alerts.jsonl"}"

[state]
dir = "{tmp / "state"}"

[health]
enabled = false
""".replace("'", '"')
    )
    return path


async def _ingest_until(config_path: Path, last_minute: int, timeout_s: float = 30.0) -> Ingest:
    config = load_config(config_path)
    stop = asyncio.Event()
    ingests: list[Ingest] = []

    async def watch() -> None:
        while not ingests or ingests[0].stats.last_bar_time != last_minute:
            await asyncio.sleep(0.05)
        stop.set()

    async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tg:
        tg.create_task(watch())
        await run_daemon(
            config, Secrets.load(config), stop, realtime=False, on_ingest=ingests.append
        )
    return ingests[0]


async def test_daemon_on_massive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    df, _ = minute_market(n_sessions=1)
    df = df.with_columns(pl.col("volume").round())  # Massive sends whole shares
    monkeypatch.setenv("MASSIVE_API_KEY", "massive-key-123")
    async with MassiveServer(df, speed=500.0, api_key="massive-key-123") as server:
        path = _config(tmp_path, "massive", server.url, server.rest_url, ["IWM", "SPY", "QQQ"])
        ingest = await _ingest_until(path, int(df["time"].max()))  # type: ignore[arg-type]
    assert ingest.pipeline.minute is not None
    daily = ingest.pipeline.engine("1d")
    iwm = df.filter(pl.col("symbol") == "IWM")
    assert daily.rings.frame(daily.row("IWM"))["volume"].to_list() == [iwm["volume"].sum()]


async def test_daemon_on_finnhub_builds_minutes_from_trades(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINNHUB_API_KEY", "finnhub-token-123")
    tape = make_tape(30)
    async with FinnhubServer(tape, token="finnhub-token-123", minute_s=0.02) as server:
        symbols = sorted({t[0] for t in tape})
        path = _config(tmp_path, "finnhub", server.url, server.rest_url, symbols)
        last = max(t[1] for t in tape) // 60_000 * 60
        ingest = await _ingest_until(path, last)
    assert ingest.stats.bars >= 30 * len(symbols) - len(symbols)
