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

from daemon.app import SESSIONS_FROM, Ingest, IngestStats, Warmup
from daemon.bars import load_bars
from daemon.calendar import xnys_sessions
from daemon.config import Config, load_config
from daemon.config_errors import ConfigError
from daemon.feeds.replay import ReplayServer
from daemon.logs import configure_logging
from daemon.sample import demo_market
from daemon.secrets import Secrets
from daemon.service import run_daemon
from daemon.warmup import fetch_alpaca_warmup, fetch_massive_warmup
from signals.sessions import SessionTable

_log = structlog.get_logger(__name__)


def _install_signal_handlers(stop: asyncio.Event, ingests: list[Ingest]) -> None:
    """SIGTERM/SIGINT stop the daemon; SIGHUP re-reads the rules file (as /reload does)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_rules, ingests)


def _reload_rules(ingests: list[Ingest]) -> None:
    # Runs on the event loop, so between two bars, like the bot's /reload.
    backend = ingests[0].backend if ingests else None
    if backend is None:
        _log.warning("rules.reload_failed", error="the daemon is still starting")
        return
    try:
        summary = backend.reload_rules()
    except ValueError as exc:  # RuleError too: it names the file and the key
        _log.warning("rules.reload_failed", error=str(exc))
        return
    _log.info("rules.reload_signal", summary=summary)


def _setup_logging(config: Config, secrets: Secrets) -> None:
    configure_logging(json=config.log.json, level=config.log.level, secrets=secrets.all())


async def run(config_path: Path) -> int:
    """The daemon on its configured feed, until SIGTERM/SIGINT, resuming from its snapshot;
    SIGHUP re-reads the rules file.

    With `feed.provider = "replay"` the feed is a long-lived replay server at
    `feed.url` and the daemon runs in feed time: alerts are judged by bar time
    (never dropped as stale), the market is always open, and a restart resumes
    from the last snapshot and backfills from its last minute, exactly as a live
    restart does.
    """
    config = load_config(config_path)
    if config.feed.provider == "replay" and config.feed.url is None:
        raise ConfigError(
            config_path, "feed.url", 'run with provider = "replay" needs the replay server\'s url'
        )
    secrets = Secrets.load(config)
    _setup_logging(config, secrets)
    stop = asyncio.Event()
    ingests: list[Ingest] = []
    _install_signal_handlers(stop, ingests)

    def sessions() -> SessionTable:
        return xnys_sessions(SESSIONS_FROM, date.today() + timedelta(days=366))

    async def alpaca_history() -> Warmup:
        key, secret = secrets.require("ALPACA_API_KEY"), secrets.require("ALPACA_API_SECRET")
        return await fetch_alpaca_warmup(
            key=key.reveal(), secret=secret.reveal(), symbols=config.feed.symbols,
            sessions=sessions(), now=time.time(),
            rest_url=config.feed.rest_url, feed=config.feed.alpaca_feed, daily_days=config.feed.warmup_days,
        )  # fmt: skip

    async def massive_history() -> Warmup:
        return await fetch_massive_warmup(
            api_key=secrets.require("MASSIVE_API_KEY").reveal(), symbols=config.feed.symbols,
            sessions=sessions(), now=time.time(), rest_url=config.feed.rest_url,
            daily_days=config.feed.warmup_days,
        )  # fmt: skip

    # Fetched only when no snapshot can be resumed (Finnhub's candles are a paid extra).
    history = {"alpaca": alpaca_history, "massive": massive_history}.get(config.feed.provider)
    if config.feed.warmup_days == 0:  # the documented "0: none"
        history = None
    realtime = config.feed.provider != "replay"
    await run_daemon(
        config,
        secrets,
        stop,
        warmup=history,
        realtime=realtime,
        snapshots=True,
        on_ingest=ingests.append,
    )
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
    ingest_ref: list[Ingest] = []
    _install_signal_handlers(stop, ingest_ref)

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
    """The full daemon fed from files through a local Alpaca-protocol replay server.
    `[feed]` is ignored but for its symbols: no provider keys are needed."""
    config = load_config(config_path, replay=True)
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
