"""`FinnhubFeed` against a real local Finnhub-protocol websocket server and real HTTP on loopback.

The server's tape sets the clock (`now=server.now`), so minutes end when the
tape says; backoff sleeps are real but short (`FAST`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import structlog

from daemon.feeds.base import Feed, FeedFatal
from daemon.feeds.finnhub import DEFAULT_STREAM_URL, FinnhubFeed
from daemon.feeds.options import FeedOptions
from daemon.feeds.reconnect import ReconnectPolicy
from signals.bar import Bar
from tests.daemon.feeds.feedkit import FAST, SYMBOLS, T0, FakeClock, never_open, wait_until
from tests.daemon.feeds.finnhub_server import FinnhubServer, candles, make_tape
from tests.daemon.feeds.massive_server import running

TOKEN = "fInNhUb-tok3n-0123456789"


def _feed(server: FinnhubServer, **kwargs: Any) -> FinnhubFeed:
    options: dict[str, Any] = {
        "url": server.url,
        "rest_url": server.rest_url,
        "warmup_s": 0.0,
        "silence_timeout_s": 0.0,
        "is_market_open": never_open,
        "policy": FAST,
        "now": server.now,
        "flush_interval_s": 0.02,
    }
    options.update(kwargs)
    token = options.pop("token", TOKEN)
    own = {n: options.pop(n) for n in ("bar_close_delay_s", "flush_interval_s") if n in options}
    return FinnhubFeed(token, FeedOptions(SYMBOLS, **options), **own)


def _expected(minutes: int) -> list[Bar]:
    return [
        Bar(r["symbol"], r["time"], r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in candles(make_tape(minutes)).iter_rows(named=True)
    ]


async def test_trades_become_minute_bars_with_epoch_times_and_values() -> None:
    async with FinnhubServer(make_tape(12), token=TOKEN) as server:
        feed = _feed(server)
        with structlog.testing.capture_logs() as logs:
            async with running(feed) as out:
                await asyncio.wait_for(server.finished.wait(), 4)
                await wait_until(lambda: len(out.pairs()) == 12 * 3)
                await asyncio.sleep(0.05)  # nothing more comes
    assert server.subscriptions == [{"type": "subscribe", "symbol": s} for s in SYMBOLS]
    got = [bar for batch in out.batches for bar in batch.bars]
    assert sorted(got, key=lambda b: (b.time, b.symbol)) == _expected(12)
    assert {batch.kind for batch in out.batches} == {"live"}
    assert feed.stats.connects == 1 and feed.stats.reconnects == 0
    assert feed.stats.rejected == {} and feed.stats.bars == 36
    assert "feed.subscribed" in [e["event"] for e in logs]
    assert TOKEN not in repr(logs)


async def test_a_refused_token_is_fatal_after_n_tries_without_leaking_it() -> None:
    wrong = "wrong-token-0123456789"
    async with FinnhubServer(make_tape(3), token=TOKEN) as server:
        clock = FakeClock(T0)
        feed = _feed(
            server,
            token=wrong,
            now=clock.now,
            sleep=clock.sleep,
            policy=ReconnectPolicy(max_auth_failures=3),
        )
        url = server.url
        with structlog.testing.capture_logs() as logs, pytest.raises(FeedFatal) as info:
            async with asyncio.timeout(4):
                await feed.run(lambda batch: None)
    assert server.connections_seen == 3
    assert feed.stats.attempts == 3 and feed.stats.connects == 0
    assert "HTTP 401" in str(info.value)
    fatal = [e for e in logs if e["event"] == "feed.fatal"]
    assert len(fatal) == 1 and "3 consecutive authentication failures" in fatal[0]["reason"]
    everything = repr(logs) + repr(info.value) + repr(feed) + repr(feed._settings)
    assert wrong not in everything and TOKEN not in everything
    assert feed.url == url  # the token is added only at connect time


async def test_a_refused_upgrade_429_backs_off_long() -> None:
    async with FinnhubServer(make_tape(3)) as server:
        server.refuse_upgrade(429)
        clock = FakeClock(T0)
        window = clock.passed(T0 + 1800)
        feed = _feed(server, now=clock.now, sleep=clock.sleep, policy=ReconnectPolicy())
        async with running(feed):
            await asyncio.wait_for(window.wait(), 4)
    assert feed.stats.connects == 0
    assert clock.slept and all(delay >= 60.0 for delay in clock.slept)
    assert 3 <= feed.stats.attempts <= 12


async def test_killed_mid_stream_repeatedly_then_repaired_without_duplicates() -> None:
    minutes = 60
    async with FinnhubServer(make_tape(minutes), minute_s=0.01) as server:
        for index, outage in ((8, 2), (20, 3), (41, 1)):
            server.kill_before(index, outage)
        feed = _feed(server)
        expected = _expected(minutes)
        async with running(feed) as out:
            await asyncio.wait_for(server.finished.wait(), 4)
            await wait_until(lambda: len(set(out.pairs())) == len(expected))
            await asyncio.sleep(0.05)
    keys = out.pairs()
    assert len(keys) == len(set(keys)) == len(expected)
    got = sorted((b for batch in out.batches for b in batch.bars), key=lambda b: (b.time, b.symbol))
    assert got == expected  # kills fall between minutes: every bar is whole, live or backfilled
    for symbol in SYMBOLS:
        times = [t for s, t in keys if s == symbol]
        assert times == sorted(times)
    assert feed.stats.reconnects == 3 and feed.stats.connects == 4
    backfilled = {t for _, t in out.pairs("backfill")}
    for lost in (T0 + 60 * 8, T0 + 60 * 9, T0 + 60 * 20, T0 + 60 * 22, T0 + 60 * 41):
        assert lost in backfilled
    assert all(r[1].get("x-finnhub-token") == TOKEN for r in server.rest_requests)
    assert all(TOKEN not in r[0].geturl() for r in server.rest_requests)


async def test_without_candle_access_the_feed_runs_on_and_says_so_once() -> None:
    async with FinnhubServer(make_tape(20), minute_s=0.01) as server:
        server.rest_unavailable = True
        server.kill_before(5, 2)
        server.kill_before(12, 1)
        feed = _feed(server)
        with structlog.testing.capture_logs() as logs:
            async with running(feed) as out:
                await asyncio.wait_for(server.finished.wait(), 4)
                await wait_until(lambda: ("IWM", T0 + 60 * 19) in out.pairs())
    lost = {T0 + 60 * m for m in (5, 6, 12)}
    assert {t for _, t in out.pairs()} == {T0 + 60 * m for m in range(20)} - lost
    assert feed.stats.connects == 3 and feed.stats.backfill_errors == 0
    unavailable = [e for e in logs if e["event"] == "feed.backfill_unavailable"]
    assert len(unavailable) == 1
    assert sum(1 for r in server.rest_requests) == 1  # asked once, then never again


async def test_hostile_frames_and_pings_are_counted_while_the_stream_goes_on() -> None:
    def trade(**fields: object) -> str:
        data = {"s": "IWM", "p": 10.0, "t": (T0 + 600) * 1000, "v": 5, **fields}
        return json.dumps({"type": "trade", "data": [data]})

    hostile: list[tuple[str, str | bytes]] = [
        ("bad_json", trade().replace("10.0", "NaN")),
        ("bad_json", trade().replace("10.0", "Infinity")),
        ("non_finite", trade().replace("10.0", "1e400")),
        ("non_positive_price", trade(p=-1.0)),
        ("non_positive_price", trade(p=0)),
        ("bad_field", trade(p="10.5")),
        ("unknown_type", json.dumps({"type": "quote", "data": []})),
        ("bad_time", trade(t="not a time")),
        ("future_time", trade(t=(T0 + 3 * 86_400) * 1000)),
        ("late_trade", trade(t=T0 * 1000)),
        ("bad_symbol", trade(s="IWM/")),
        ("bad_symbol", trade(s="A+B")),
        ("bad_symbol", trade(s="#IWM")),
        ("bad_symbol", trade(s="<IWM>")),
        ("not_an_object", "[" * 30_000 + "]" * 30_000),
        ("server_error", json.dumps({"type": "error", "msg": "Subscribing to too many symbols"})),
        ("bad_json", b"\x00\xff binary junk"),
    ]
    async with FinnhubServer(make_tape(4)) as server:
        feed = _feed(server)
        async with running(feed) as out:
            await asyncio.wait_for(server.finished.wait(), 4)
            await wait_until(lambda: len(out.pairs()) == 12)
            frames = feed.stats.frames
            for _, data in hostile:
                assert await server.send_raw(data) == 1
            for _ in range(3):
                await server.send_raw('{"type":"ping"}')
            await server.send_raw(trade())
            await server.send_raw(trade(t=(T0 + 660) * 1000))  # closes the minute before
            await wait_until(lambda: ("IWM", T0 + 600) in out.pairs())
    expected: dict[str, int] = {}
    for reason, _ in hostile:
        expected[reason] = expected.get(reason, 0) + 1
    assert feed.stats.rejected == expected
    assert feed.stats.frames >= frames + len(hostile) + 3 + 2
    assert feed.stats.connects == 1 and feed.stats.reconnects == 0


async def test_frames_over_the_size_cap_close_with_1009_are_counted_and_reconnect() -> None:
    async with FinnhubServer(make_tape(2)) as server:
        feed = _feed(server, max_frame_bytes=2048)
        async with running(feed) as out:
            await asyncio.wait_for(server.finished.wait(), 4)
            await wait_until(lambda: len(out.pairs()) == 6)
            await server.send_raw('{"type":"ping","pad":"' + " " * 4096 + '"}')
            await wait_until(lambda: feed.stats.connects == 2)
    assert feed.stats.rejected == {"frame_too_big": 1}
    assert feed.stats.reconnects == 1


def test_constructor_validates_and_hides_the_token() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        FinnhubFeed("", FeedOptions(SYMBOLS))
    with pytest.raises(ValueError, match="symbols"):
        FinnhubFeed(TOKEN, FeedOptions(["BINANCE:BTCUSDT"]))
    with pytest.raises(ValueError, match="close_delay_s"):
        FinnhubFeed(TOKEN, FeedOptions(SYMBOLS), bar_close_delay_s=-1.0)
    with pytest.raises(ValueError, match="flush_interval_s"):
        FinnhubFeed(TOKEN, FeedOptions(SYMBOLS), flush_interval_s=0.0)
    for bad in ("https://ws.finnhub.io", "ws://[bad"):
        with pytest.raises(ValueError, match="url must be") as info:
            FinnhubFeed(TOKEN, FeedOptions(SYMBOLS, url=bad))
        assert TOKEN not in str(info.value)
    feed: Feed = FinnhubFeed(TOKEN, FeedOptions(SYMBOLS))
    assert isinstance(feed, FinnhubFeed) and feed.url == DEFAULT_STREAM_URL
    assert TOKEN not in repr(feed) and TOKEN not in repr(feed._settings)
