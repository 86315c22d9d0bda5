"""`iwm-alerts run`, `replay` and `demo`: config, logging and signals around `run_daemon`."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

import msgspec
import structlog

from daemon.app import SESSIONS_FROM, Ingest, IngestStats, Warmup, run_daemon
from daemon.bars import load_bars
from daemon.calendar import xnys_sessions
from daemon.config import Config, load_config
from daemon.feeds.replay import ReplayServer
from daemon.logs import configure_logging
from daemon.sample import demo_market
from daemon.secrets import Secrets
from daemon.warmup import fetch_alpaca_warmup

_log = structlog.get_logger(__name__)


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def _setup_logging(config: Config, secrets: Secrets) -> None:
    configure_logging(json=config.log.json, level=config.log.level, secrets=secrets.all())


async def run(config_path: Path) -> int:
    """The daemon on its configured live feed, until SIGTERM/SIGINT."""
    config = load_config(config_path)
    secrets = Secrets.load(config)
    _setup_logging(config, secrets)
    stop = asyncio.Event()
    _install_signal_handlers(stop)

    async def alpaca_history() -> Warmup:
        key, secret = secrets.require("ALPACA_API_KEY"), secrets.require("ALPACA_API_SECRET")
        return await fetch_alpaca_warmup(
            key=key.reveal(), secret=secret.reveal(), symbols=config.feed.symbols,
            sessions=xnys_sessions(SESSIONS_FROM, date.today() + timedelta(days=366)), now=time.time(),
            rest_url=config.feed.rest_url, feed=config.feed.alpaca_feed, daily_days=config.feed.warmup_days,
        )  # fmt: skip

    # Fetched only when no snapshot can be resumed.
    history = alpaca_history if config.feed.provider == "alpaca" else None
    await run_daemon(config, secrets, stop, warmup=history)
    return 0


async def _replay_until_done(
    config: Config,
    secrets: Secrets,
    server: ReplayServer,
    last_minute: int,
    warmup: Warmup | None,
    duration_s: float | None,
) -> IngestStats:
    """Run the daemon against a local replay server until the replay is played and ingested."""
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    ingest_ref: list[Ingest] = []

    async def watch() -> None:
        await server.wait_played(server.minutes_total)
        while not ingest_ref or ingest_ref[0].stats.last_bar_time != last_minute:
            await asyncio.sleep(0.05)
        stop.set()

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(watch(), name="replay-watch")
        if duration_s is not None:
            asyncio.get_running_loop().call_later(duration_s, stop.set)
        stats = await run_daemon(
            config, secrets, stop, warmup=warmup, realtime=False, on_ingest=ingest_ref.append
        )
        watcher.cancel()
    return stats


async def replay(config_path: Path, bar_files: Sequence[Path], speed: float) -> int:
    """The full daemon fed from files through a local Alpaca-protocol replay server."""
    config = load_config(config_path)
    secrets = Secrets.load(config)
    _setup_logging(config, secrets)
    bars = load_bars(bar_files).frame
    async with ReplayServer(bars, speed=speed) as server:
        config = _pointed_at(config, server)
        last = int(bars["time"].max())  # type: ignore[arg-type]
        stats = await _replay_until_done(config, secrets, server, last, None, None)
    print(f"replayed {stats.bars} bars, {stats.alerts_emitted} alerts", file=sys.stderr)
    return 0


def _pointed_at(config: Config, server: ReplayServer) -> Config:
    feed = msgspec.structs.replace(
        config.feed, provider="replay", url=server.url, rest_url=server.rest_url
    )
    return msgspec.structs.replace(config, feed=feed)


DEMO_CONFIG = """
[feed]
provider = "replay"
symbols = ["IWM", "SPY", "QQQ"]

[sinks.console]
enabled = true

[sinks.jsonl]
path = "{out}/alerts.jsonl"

[state]
dir = "{out}/state"

[health]
enabled = false

[log]
level = "{level}"
{mqtt}
"""


async def demo(
    speed: float,
    duration_s: float | None,
    mqtt_url: str | None,
    out: Path | None,
    log_level: str = "warning",
) -> int:
    """The embedded default: a synthetic IWM/SPY/QQQ session replayed through the whole daemon."""
    with tempfile.TemporaryDirectory(prefix="iwm-alerts-demo-") as tmp:
        out_dir = out or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        mqtt = f'\n[sinks.mqtt]\nurl = "{mqtt_url}"\n' if mqtt_url else ""
        config_path = Path(tmp) / "demo.toml"
        config_path.write_text(
            DEMO_CONFIG.format(out=out_dir.as_posix(), mqtt=mqtt, level=log_level)
        )
        config = load_config(config_path)
        secrets = Secrets.load(config)
        _setup_logging(config, secrets)
        market = demo_market()
        print(
            f"iwm-alerts demo: replaying a synthetic {market.day} session of IWM, SPY and QQQ "
            f"at {speed:g} bar-minutes per second (no keys, no network)...",
            file=sys.stderr,
        )
        async with ReplayServer(market.today, speed=speed) as server:
            config = _pointed_at(config, server)
            last = int(market.today["time"].max())  # type: ignore[arg-type]
            warmup = Warmup(market.daily, market.history)
            stats = await _replay_until_done(config, secrets, server, last, warmup, duration_s)
        print(
            f"iwm-alerts demo: {stats.bars} bars, {stats.alerts_emitted} alerts"
            + (f"; alerts also in {out_dir / 'alerts.jsonl'}" if out else ""),
            file=sys.stderr,
        )
    return 0
