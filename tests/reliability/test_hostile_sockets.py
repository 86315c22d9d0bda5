"""Hostile input through real sockets: hostile frames into each live feed, and into the daemon.

The size cap and the UTF-8 check of text frames live in the websocket layer,
so a few hundred frames per provider (from `tests.reliability.hostile.Frames`)
go through a real local server to the live feed, with oversized frames (which
close with 1009) and non-UTF-8 text frames (1007) among them; every record is
accounted for. A short daemon run checks that hostile frames alone raise no
alert while one valid bar does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from websockets.asyncio.server import ServerConnection

from daemon.app import Ingest
from daemon.config import load_config
from daemon.feeds.alpaca import AlpacaFeed
from daemon.feeds.base import FeedStats
from daemon.feeds.finnhub import FinnhubFeed
from daemon.feeds.massive import MassiveFeed
from daemon.feeds.options import FeedOptions
from daemon.feeds.replay import frame_from_rows
from daemon.secrets import Secrets
from daemon.service import run_daemon
from signals.bar import Bar
from tests.daemon.daemon_config import write_config
from tests.daemon.feeds.feedkit import FAST, KEY, SECRET, never_open, wait_until
from tests.daemon.feeds.finnhub_server import FinnhubServer, make_tape
from tests.daemon.feeds.massive_server import MassiveServer
from tests.daemon.feeds.massive_server import running as run_feed
from tests.daemon.feeds.replay_harness import ReplayHarness
from tests.reliability.hostile import (
    ALPACA_BAD_UTF8,
    SYMBOLS,
    T0,
    Batch,
    Frames,
    RandomPick,
    minute_bars,
)
from tests.reliability.scale import scale

pytestmark = pytest.mark.reliability

LIVE_FRAMES = scale(300, 1_500)
MAX_FRAME_BYTES = 1 << 16


# -- the live feeds, through real local servers ---------------------------------------------


@dataclass
class Wire:
    """How a test reaches a server's current clients."""

    send_raw: Callable[[str | bytes], Awaitable[int]]
    clients: Callable[[], set[ServerConnection]]


OVERSIZE = "[" + " " * MAX_FRAME_BYTES + "]"
BAD_TEXT = b'[{"T":"b","S":"\xff\xfe"}]'


def _live_items(frames: list[str | bytes], pick: RandomPick) -> list[tuple[str, str | bytes]]:
    """The frames with a few oversized and a few non-UTF-8 text frames spread among them."""
    items: list[tuple[str, str | bytes]] = [("frame", f) for f in frames]
    for kind, data in [("oversize", OVERSIZE)] * scale(3, 8) + [("bad_text", BAD_TEXT)] * scale(
        2, 5
    ):
        items.insert(pick.integer(1, len(items)), (kind, data))
    return items


def _backfills(logs: list[MutableMapping[str, object]]) -> int:
    return sum(1 for e in logs if e["event"] in ("feed.backfill", "feed.backfill_failed"))


async def _deliver(
    wire: Wire,
    stats: FeedStats,
    items: list[tuple[str, str | bytes]],
    logs: list[MutableMapping[str, object]] | None,
) -> None:
    """Send each item to the one connected client. After one that kills the session, wait for
    the feed to be back on a new connection and done with its backfill (live bars are held
    back until then, and dropped if the session dies first: the next backfill is meant to
    fetch them, which the local servers cannot for bars they never played)."""
    for kind, data in items:
        if kind == "frame":
            assert await wire.send_raw(data) == 1
            continue
        before = wire.clients()
        assert len(before) == 1
        connects = stats.connects
        if kind == "oversize":
            assert await wire.send_raw(data) == 1
        else:
            for ws in before:
                await ws.send(data, text=True)  # a text frame that is not UTF-8

        def back(connects: int = connects, before: set[ServerConnection] = before) -> bool:
            now = wire.clients()
            return stats.connects == connects + 1 and len(now) == 1 and not now & before

        await wait_until(back, timeout_s=15)
        if logs is not None:
            await wait_until(lambda: _backfills(logs) == stats.reconnects, timeout_s=15)


def _expected_rejections(
    reasons: Counter[str], items: list[tuple[str, str | bytes]]
) -> Counter[str]:
    kinds = Counter(kind for kind, _ in items)
    return reasons + Counter(frame_too_big=kinds["oversize"], bad_utf8=kinds["bad_text"])


LIVE_SUMMARY: dict[str, dict[str, object]] = {}


async def _run_live(
    provider: str,
    feed: AlpacaFeed | MassiveFeed | FinnhubFeed,
    wire: Wire,
    initial: list[tuple[str, Bar]],
    utf8_in_strings: bool = True,
) -> None:
    pick = RandomPick(20_240_102 + len(provider))
    frames = Frames(provider, time.time(), T0 + 3600, utf8_in_strings=utf8_in_strings)
    batch = Batch()
    while len(batch.frames) < LIVE_FRAMES:
        frames.frame(pick, batch)
    items = _live_items(batch.frames, pick)
    sentinel = Batch()
    frames.valid = True
    while not (sentinel.bars or sentinel.trades):
        sentinel.frames = [frames.wrap(pick, [frames.valid_record(pick, sentinel)])]
    if provider == "finnhub":  # a trade in a later minute closes the sentinel's own minute
        closer = Batch()
        frames.ms += 120_000
        sentinel.frames.append(frames.wrap(pick, [frames.valid_record(pick, closer)]))
    assert len(batch.bars) + len(batch.trades) > 50  # valid records really are mixed in
    out_bars: list[tuple[str, Bar]] = []
    with structlog.testing.capture_logs() as logs:
        async with run_feed(feed) as out:
            await wait_until(
                lambda: feed.stats.connected and len(wire.clients()) == 1, timeout_s=10
            )
            if provider != "finnhub":
                await wait_until(lambda: len(out.pairs()) == len(initial), timeout_s=10)
            await _deliver(wire, feed.stats, items, logs)
            for data in sentinel.frames:
                assert await wire.send_raw(data) == 1
            last = sentinel.trades[-1] if sentinel.trades else None
            mark = (
                (last[0], last[1] // 60_000 * 60) if last is not None else
                (sentinel.bars[-1][1].symbol, sentinel.bars[-1][1].time)
            )  # fmt: skip
            await wait_until(lambda: mark in out.pairs(), timeout_s=20)
            await asyncio.sleep(0.1)  # nothing more comes
            out_bars = [(b.kind, bar) for b in out.batches for bar in b.bars]
    if provider == "finnhub":
        want = sorted(
            [*initial, *minute_bars([*batch.trades, *sentinel.trades])],
            key=lambda kb: (kb[1].time, kb[1].symbol),
        )
        assert sorted(out_bars, key=lambda kb: (kb[1].time, kb[1].symbol)) == want
    else:
        assert out_bars == [*initial, *batch.bars, *sentinel.bars]
    expected = _expected_rejections(batch.reasons, items)
    assert Counter(feed.stats.rejected) == expected
    resets = sum(1 for kind, _ in items if kind != "frame")
    assert feed.stats.connects == 1 + resets and feed.stats.reconnects == resets
    LIVE_SUMMARY[provider] = {
        "frames_sent": len(items) + len(sentinel.frames),
        "rejected": feed.stats.rejected_total,
        "reconnects": feed.stats.reconnects,
    }
    print(f"\n{provider} live: {LIVE_SUMMARY[provider]} {dict(feed.stats.rejected)}")


def _replay_bars(minutes: int) -> list[tuple[str, Bar]]:
    return [
        ("live", Bar(sym, T0 + 60 * i, p, p + 1.0, p - 1.0, p + 0.5, 1000.0 + i))
        for i in range(minutes)
        for sym, p in sorted((s, 100.0 + 50.0 * j + 0.25 * i) for j, s in enumerate(SYMBOLS))
    ]


def _initial_frame(minutes: int) -> list[tuple[str, int, float, float, float, float, float]]:
    return [
        (bar.symbol, bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume)
        for _, bar in _replay_bars(minutes)
    ]


async def test_alpaca_feed_survives_hostile_frames_over_a_real_socket_and_counts_them() -> None:
    rows = _initial_frame(3)
    async with ReplayHarness(frame_from_rows(rows)) as server:
        feed = AlpacaFeed(KEY, SECRET, FeedOptions(
            SYMBOLS, url=server.url, rest_url=server.rest_url, warmup_s=0.0,
            silence_timeout_s=0.0, is_market_open=never_open, policy=FAST,
            max_frame_bytes=MAX_FRAME_BYTES,
        ))  # fmt: skip
        wire = Wire(server.send_raw, lambda: set(server._subscribed))
        await _run_live("alpaca", feed, wire, _replay_bars(3))


async def test_massive_feed_survives_hostile_frames_over_a_real_socket_and_counts_them() -> None:
    rows = _initial_frame(3)
    async with MassiveServer(frame_from_rows(rows)) as server:
        feed = MassiveFeed("mAsSiVe-KEY-0123456789abcdef", FeedOptions(
            SYMBOLS, url=server.url, rest_url=server.rest_url,
            warmup_s=0.0, silence_timeout_s=0.0, is_market_open=never_open, policy=FAST,
            max_frame_bytes=MAX_FRAME_BYTES,
        ))  # fmt: skip
        wire = Wire(server.send_raw, lambda: {ws for ws, s in server._clients.items() if s})
        await _run_live("massive", feed, wire, _replay_bars(3))


async def test_finnhub_feed_survives_hostile_frames_over_a_real_socket_and_counts_them() -> None:
    tape = make_tape(1)
    async with FinnhubServer(tape) as server:
        server.rest_unavailable = True  # no backfill: what comes out is what was streamed
        feed = FinnhubFeed("fInNhUb-tok3n-0123456789", FeedOptions(
            SYMBOLS, url=server.url, rest_url=server.rest_url,
            warmup_s=0.0, silence_timeout_s=0.0, is_market_open=never_open, policy=FAST,
            max_frame_bytes=MAX_FRAME_BYTES,
        ), flush_interval_s=60.0)  # fmt: skip
        wire = Wire(server.send_raw, lambda: set(server._clients))
        initial = minute_bars([(s, t, p, v) for s, t, p, v in tape])
        await _run_live("finnhub", feed, wire, initial)


async def test_alpaca_feed_survives_a_binary_frame_with_invalid_utf8_in_a_string() -> None:
    async with ReplayHarness(frame_from_rows(_initial_frame(1))) as server:
        feed = AlpacaFeed(KEY, SECRET, FeedOptions(
            SYMBOLS, url=server.url, rest_url=server.rest_url, warmup_s=0.0,
            silence_timeout_s=0.0, is_market_open=never_open, policy=FAST,
        ))  # fmt: skip
        out: list[object] = []
        task = asyncio.create_task(feed.run(out.append), name="alpaca-under-test")
        try:
            await wait_until(lambda: len(out) >= 1 or task.done(), timeout_s=10)
            assert await server.send_raw(ALPACA_BAD_UTF8) == 1
            good = '[{"T":"b","S":"IWM","o":1,"h":1,"l":1,"c":1,"v":1,"t":"2024-01-02T15:00:00Z"}]'
            await asyncio.sleep(0.2)
            await server.send_raw(good)
            await wait_until(lambda: len(out) >= 2 or task.done(), timeout_s=10)
            died = task.exception() if task.done() and not task.cancelled() else None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert died is None, f"the feed died: {died!r}"
    assert feed.stats.rejected == {"bad_json": 1}


# -- the daemon: hostile frames alone raise no alert ------------------------------------------

ANY_BAR_RULE = """
[[rule]]
name = "any_bar"
operator = "greater_than"
timeframe = "1m"
value = "close"
threshold = 0
sessions = "extended"
"""


async def test_hostile_frames_into_the_daemon_raise_no_alert_and_one_valid_bar_does(
    tmp_path: Path,
) -> None:
    (tmp_path / "rules.toml").write_text(ANY_BAR_RULE)
    async with ReplayHarness(frame_from_rows([])) as server:
        path = write_config(
            tmp_path,
            feed=f'url = "{server.url}"\nrest_url = "{server.rest_url}"\n'
            f"max_frame_bytes = {MAX_FRAME_BYTES}",
            rules=tmp_path / "rules.toml",
        )
        config = load_config(path)
        pick = RandomPick(7)
        frames = Frames("alpaca", time.time(), T0, valid=False)
        batch = Batch()
        while len(batch.frames) < scale(300, 1_500):
            frames.frame(pick, batch)
        assert not batch.bars and sum(batch.reasons.values()) > len(batch.frames) // 2
        items = _live_items(batch.frames, pick)
        stop = asyncio.Event()
        ingests: list[Ingest] = []
        seen: dict[str, int] = {}

        async def attack() -> None:
            await wait_until(lambda: bool(ingests) and ingests[0].backend is not None, timeout_s=10)
            backend = ingests[0].backend
            assert backend is not None
            await wait_until(lambda: backend.feed is not None and backend.feed.stats.connected, 10)
            assert backend.feed is not None
            stats = backend.feed.stats
            wire = Wire(server.send_raw, lambda: set(server._subscribed))
            await _deliver(wire, stats, items, None)  # no valid bar: none held back
            expected = _expected_rejections(batch.reasons, items)
            await wait_until(lambda: Counter(stats.rejected) == expected, timeout_s=20)
            await asyncio.sleep(0.2)
            seen["rejected"] = stats.rejected_total
            seen["bars_before"] = ingests[0].stats.bars
            seen["alerts_before"] = ingests[0].stats.alerts_emitted
            good = '[{"T":"b","S":"IWM","o":1,"h":1,"l":1,"c":1,"v":1,"t":"2024-01-02T15:00:00Z"}]'
            assert await server.send_raw(good) == 1
            await wait_until(lambda: ingests[0].stats.alerts_emitted >= 1, timeout_s=10)
            stop.set()

        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(90), asyncio.TaskGroup() as tg:
                tg.create_task(attack())
                stats = await run_daemon(
                    config, Secrets.load(config), stop, realtime=False, on_ingest=ingests.append
                )
    assert seen["rejected"] == sum(_expected_rejections(batch.reasons, items).values())
    assert seen["bars_before"] == 0 and seen["alerts_before"] == 0
    assert stats.bars == 1 and stats.alerts_emitted == 1  # the rule does fire on a valid bar
    assert [e["event"] for e in logs].count("alert.emitted") == 1
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line)["rule"] for line in lines] == ["any_bar"]
    print(f"\ndaemon: {len(items)} hostile frames, {seen['rejected']} rejections, 0 alerts")
