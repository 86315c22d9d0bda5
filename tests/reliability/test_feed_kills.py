"""Feed faults at daemon level: the real feed code against the real local ReplayHarness.

The websocket server is killed many times at seeded random minutes, some kills
while a backfill is in flight: the daemon ends up holding exactly the source's
bars and the alerts of a clean run, nothing twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest

from daemon.app import Ingest, IngestStats, build_feed
from daemon.config import load_config
from daemon.feeds.base import Feed, FeedBatch
from daemon.feeds.replay import ReplaySettings
from daemon.secrets import Secrets
from daemon.service import run_daemon
from signals.bar import Bar
from tests.daemon.feeds.feedkit import SYMBOLS, wait_until
from tests.daemon.feeds.replay_harness import ReplayHarness
from tests.daemon.minute_market import minute_market
from tests.daemon.test_daemon import _alert_ids, _config
from tests.reliability.faultkit import SEED, report
from tests.reliability.scale import scale

pytestmark = pytest.mark.reliability

OHLCV = ("time", "open", "high", "low", "close", "volume")

KILL_EVENTS = scale(6, 20)
SESSIONS = scale(3, 6)
SPEED = 250.0  # bar-minutes per real second


class Tap:
    """The daemon's own feed with a recorder on `emit`: every batch ingest was handed."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.name = feed.name
        self.stats = feed.stats
        self.batches: list[FeedBatch] = []

    async def run(self, emit: Callable[[FeedBatch], None]) -> None:
        def record(batch: FeedBatch) -> None:
            self.batches.append(batch)
            emit(batch)

        await self.feed.run(record)

    def minute_bars(self) -> list[Bar]:
        """Every minute bar handed to ingest, in order."""
        return [
            b for batch in self.batches if batch.kind in ("live", "backfill") for b in batch.bars
        ]


@dataclass
class DaemonRun:
    stats: IngestStats
    ingest: Ingest
    tap: Tap
    alert_ids: list[str]


@dataclass
class Kills:
    total: int = 0
    during_backfill: int = 0
    at_minute: list[int] = field(default_factory=list)


async def _run_daemon(
    tmp: Path,
    bars: pl.DataFrame,
    level: float,
    faults: Callable[[ReplayHarness, Tap], Awaitable[None]] | None = None,
) -> DaemonRun:
    """The whole daemon in-process (replay semantics) until the last minute is ingested."""
    last = int(bars["time"].max())  # type: ignore[arg-type]
    async with ReplayHarness(bars, ReplaySettings(speed=SPEED)) as server:
        config = load_config(_config(tmp, server.url, server.rest_url, level))
        secrets = Secrets.load(config)
        tap = Tap(build_feed(config, secrets, realtime=False))
        stop = asyncio.Event()
        ingests: list[Ingest] = []

        async def finish() -> None:
            if faults is not None:
                await faults(server, tap)
            await server.wait_played(server.minutes_total)
            while not ingests or ingests[0].stats.last_bar_time != last:
                await asyncio.sleep(0.02)
            stop.set()

        async with asyncio.timeout(scale(90, 240)), asyncio.TaskGroup() as tg:
            tg.create_task(finish(), name="finish")
            stats = await run_daemon(
                config,
                secrets,
                stop,
                feed=tap,
                realtime=False,
                on_ingest=ingests.append,
                snapshots=False,
            )
    return DaemonRun(stats, ingests[0], tap, _alert_ids(tmp))


async def _kill(server: ReplayHarness, kills: Kills) -> None:
    assert not server.finished, "a kill after the replay ended would prove nothing"
    assert server.kill_connections() == 1
    kills.total += 1
    kills.at_minute.append(server.minutes_played)


async def _kill_at_random_minutes(server: ReplayHarness, tap: Tap, kills: Kills) -> None:
    """`KILL_EVENTS` kills at seeded random minutes; every third event lets the feed
    reconnect, holds its backfill on the REST side and kills it right then."""
    rng = random.Random(SEED)
    total = server.minutes_total
    events = sorted(rng.sample(range(30, total * 4 // 5), KILL_EVENTS))
    slow = set(rng.sample(range(KILL_EVENTS), KILL_EVENTS // 3))

    def back_up() -> bool:  # the last kill's reconnect is through: one fresh subscribed session
        return (
            tap.stats.connects == kills.total + 1
            and server.connected_clients == 1
            and server.streaming_clients == 1
        )

    for k, minute in enumerate(events):
        await server.wait_played(minute)
        await wait_until(back_up, 15)
        if k not in slow:
            await _kill(server, kills)
            continue
        server.hold_rest()
        await _kill(server, kills)
        await wait_until(lambda: back_up() and server.rest_waiting >= 1, 15)
        assert tap.stats.connected  # the session is up, its gap repair in flight
        await _kill(server, kills)
        kills.during_backfill += 1
        server.hold_rest(False)


def _by_key(bars: list[Bar]) -> dict[tuple[str, int], tuple[float, ...]]:
    return {(b.symbol, b.time): (b.open, b.high, b.low, b.close, b.volume) for b in bars}


def _source_by_key(df: pl.DataFrame) -> dict[tuple[str, int], tuple[float, ...]]:
    return {
        (r["symbol"], r["time"]): (r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in df.iter_rows(named=True)
    }


def _as_float(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(pl.col(c).cast(pl.Float64) for c in OHLCV)


def _assert_rings_hold_the_source(ingest: Ingest, df: pl.DataFrame) -> None:
    """The 1-minute engine's rings hold the source's newest minutes, value for value."""
    engine = ingest.pipeline.minute
    assert engine is not None
    for symbol in SYMBOLS:
        held = engine.rings.frame(engine.row(symbol))
        want = df.filter(pl.col("symbol") == symbol).sort("time").tail(engine.rings.capacity)
        assert held.height == want.height > 0
        assert _as_float(held).equals(_as_float(want)), symbol


def _daily_bars(ingest: Ingest) -> dict[tuple[str, int], tuple[float, ...]]:
    daily = ingest.pipeline.engine("1d")
    out: dict[tuple[str, int], tuple[float, ...]] = {}
    for symbol in SYMBOLS:
        for r in daily.rings.frame(daily.row(symbol)).iter_rows(named=True):
            day = int(r["time"]) // 86_400 * 86_400
            out[(symbol, day)] = (r["open"], r["high"], r["low"], r["close"], r["volume"])
    return out


def _source_daily(df: pl.DataFrame) -> dict[tuple[str, int], tuple[float, ...]]:
    days = (
        df.sort("time")
        .with_columns((pl.col("time") // 86_400 * 86_400).alias("day"))
        .group_by("symbol", "day", maintain_order=True)
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
        )
    )
    return {
        (r["symbol"], r["day"]): (r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in days.iter_rows(named=True)
    }


async def test_server_killed_at_random_minutes_and_mid_backfill_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    df, _ = minute_market(n_sessions=SESSIONS)
    level = float(df.filter(pl.col("symbol") == "IWM")["close"].median())  # type: ignore[arg-type]
    clean_dir, faulty_dir = tmp_path / "clean", tmp_path / "faulty"
    clean_dir.mkdir()
    faulty_dir.mkdir()
    clean = await _run_daemon(clean_dir, df, level)
    kills = Kills()

    async def faults(server: ReplayHarness, tap: Tap) -> None:
        await _kill_at_random_minutes(server, tap, kills)

    faulty = await _run_daemon(faulty_dir, df, level, faults)

    # The faults happened: every kill dropped the one live session mid-replay.
    assert kills.total == KILL_EVENTS + KILL_EVENTS // 3
    assert kills.during_backfill == KILL_EVENTS // 3 >= 2
    assert faulty.tap.stats.connects == kills.total + 1
    assert faulty.tap.stats.backfilled > 0
    assert clean.tap.stats.connects == 1 and clean.tap.stats.reconnects == 0
    # Every minute bar reached ingest exactly once, with the source's values.
    source = _source_by_key(df)
    handed = faulty.tap.minute_bars()
    keys = [(b.symbol, b.time) for b in handed]
    assert len(keys) == len(set(keys)) == df.height
    assert _by_key(handed) == source
    for symbol in SYMBOLS:
        times = [t for s, t in keys if s == symbol]
        assert times == sorted(times)
    # What the engines store equals the source: the newest minutes, and every session.
    _assert_rings_hold_the_source(faulty.ingest, df)
    assert _daily_bars(faulty.ingest) == _source_daily(df) == _daily_bars(clean.ingest)
    minute = faulty.ingest.pipeline.minute
    assert minute is not None and minute.rejected_total.get("duplicate", 0) == 0
    assert clean.ingest.pipeline.minute is not None
    assert minute.rejected_total == clean.ingest.pipeline.minute.rejected_total
    # The same alerts as the clean run, none twice.
    ids = faulty.alert_ids
    assert ids and len(ids) == len(set(ids))
    assert sorted(ids) == sorted(clean.alert_ids)
    assert faulty.stats.alerts_duplicate == 0
    assert faulty.stats.alerts_emitted == clean.stats.alerts_emitted == len(ids)
    report(
        f"kills={kills.total} (mid-backfill {kills.during_backfill}) over {df.height // 3}"
        f" minutes x3, lost=0 duplicates=0 alerts={len(ids)}"
        f" feed_dups_dropped={faulty.tap.stats.duplicates}"
        f" backfilled={faulty.tap.stats.backfilled} wall={time.monotonic() - started:.1f}s"
    )
