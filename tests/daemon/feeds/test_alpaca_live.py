"""`AlpacaFeed` against the real replay websocket server and real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import structlog

from daemon.feeds.alpaca import AlpacaFeed, rfc3339
from daemon.feeds.base import Feed, FeedFatal
from daemon.feeds.options import FeedOptions
from daemon.feeds.reconnect import ReconnectPolicy
from daemon.feeds.replay import ReplaySettings
from signals.bar import Bar
from tests.daemon.feeds.feedkit import (
    FAST,
    KEY,
    SECRET,
    SYMBOLS,
    T0,
    FakeClock,
    always_open,
    keys_of,
    make_frame,
    never_open,
    running,
    wait_until,
)
from tests.daemon.feeds.replay_harness import ReplayHarness


def _feed(server: ReplayHarness, **kwargs: Any) -> AlpacaFeed:
    options: dict[str, Any] = {
        "url": server.url,
        "rest_url": server.rest_url,
        "warmup_s": 0.0,
        "silence_timeout_s": 0.0,
        "is_market_open": never_open,
        "policy": FAST,
    }
    options.update(kwargs)
    key, secret = options.pop("key", KEY), options.pop("secret", SECRET)
    own = {name: options.pop(name) for name in ("stream", "channels") if name in options}
    return AlpacaFeed(key, secret, FeedOptions(SYMBOLS, **options), **own)


async def test_bars_arrive_as_batches_with_epoch_times_and_values() -> None:
    frame = make_frame(20)
    async with ReplayHarness(frame, ReplaySettings(key=KEY, secret=SECRET)) as server:
        feed = _feed(server)
        with structlog.testing.capture_logs() as logs:
            async with running(feed) as out:
                await wait_until(lambda: len(out.pairs()) == frame.height)
                await asyncio.sleep(0.05)  # nothing more comes
        assert server.last_subscription == {
            "bars": sorted(SYMBOLS),
            "updatedBars": sorted(SYMBOLS),
            "dailyBars": sorted(SYMBOLS),
        }
    expected = {
        (row["symbol"], row["time"]): Bar(
            row["symbol"],
            row["time"],
            row["open"],
            row["high"],
            row["low"],
            row["close"],
            row["volume"],
        )
        for row in frame.iter_rows(named=True)
    }
    got = [bar for batch in out.batches for bar in batch.bars]
    assert got == sorted(expected.values(), key=lambda b: (b.time, b.symbol))
    for batch in out.batches:
        assert batch.kind == "live"
        assert len({b.time for b in batch.bars}) == 1 and len(batch.bars) == 3
        assert batch.received_at == pytest.approx(time.time(), abs=10)
    assert feed.stats.connects == 1 and feed.stats.reconnects == 0
    assert feed.stats.bars == frame.height and feed.stats.rejected == {}
    assert server.auth_attempts == 1
    events = [e["event"] for e in logs]
    assert (
        events.index("feed.connecting")
        < events.index("feed.subscribed")
        < events.index("feed.connected")
    )


async def test_auth_failure_is_fatal_after_n_tries_with_a_clear_log_line() -> None:
    async with ReplayHarness(make_frame(5), ReplaySettings(key=KEY, secret=SECRET)) as server:
        clock = FakeClock(T0)
        feed = _feed(
            server,
            secret="not-the-right-secret",
            now=clock.now,
            sleep=clock.sleep,
            policy=ReconnectPolicy(max_auth_failures=3),
        )
        with structlog.testing.capture_logs() as logs, pytest.raises(FeedFatal) as info:
            async with asyncio.timeout(4):
                await feed.run(lambda batch: None)
    assert server.auth_attempts == 3
    assert feed.stats.attempts == 3 and feed.stats.connects == 0
    assert "402" in str(info.value) and "auth failed" in str(info.value)
    fatal = [e for e in logs if e["event"] == "feed.fatal"]
    assert len(fatal) == 1 and "3 consecutive authentication failures" in fatal[0]["reason"]
    everything = repr(logs) + repr(info.value) + repr(feed)
    assert "not-the-right-secret" not in everything and KEY not in everything


@pytest.mark.parametrize("code", [405, 408, 409, 410])
async def test_plan_and_request_errors_are_fatal_at_once(code: int) -> None:
    async with ReplayHarness(make_frame(5)) as server:
        server.refuse_with(code)
        clock = FakeClock(T0)
        feed = _feed(server, now=clock.now, sleep=clock.sleep)
        with pytest.raises(FeedFatal, match=str(code)):
            async with asyncio.timeout(4):
                await feed.run(lambda batch: None)
    assert feed.stats.attempts == 1 and clock.slept == []


async def test_internal_error_500_is_retried() -> None:
    async with ReplayHarness(make_frame(5)) as server:
        server.refuse_with(500)
        clock = FakeClock(T0)
        feed = _feed(server, now=clock.now, sleep=clock.sleep)
        async with running(feed) as out:
            await wait_until(lambda: feed.stats.attempts >= 3)
            server.refuse_with(None)
            await wait_until(lambda: len(out.pairs()) == 15)
    assert feed.stats.connects == 1


async def test_connection_limit_406_backs_off_long_with_bounded_attempts() -> None:
    async with ReplayHarness(make_frame(5)) as server:
        server.refuse_with(406)
        clock = FakeClock(T0)
        window = clock.passed(T0 + 1800)
        feed = _feed(server, now=clock.now, sleep=clock.sleep, policy=ReconnectPolicy())
        async with running(feed):
            await asyncio.wait_for(window.wait(), 4)
    assert feed.stats.connects == 0
    assert all(delay >= 60.0 for delay in clock.slept)
    # Half an hour of "connection limit exceeded": a handful of attempts, not a storm.
    assert 3 <= feed.stats.attempts <= 12
    assert server.connections_seen == feed.stats.attempts


async def test_killed_mid_stream_repeatedly_then_repaired_without_duplicates() -> None:
    frame = make_frame(150)
    async with ReplayHarness(frame, ReplaySettings(speed=300.0)) as server:
        feed = _feed(server)
        async with running(feed) as out:
            for minute in (20, 55, 90):
                await asyncio.wait_for(server.wait_played(minute), 4)
                server.kill_connections()
            await wait_until(lambda: set(out.pairs()) == keys_of(frame))
            await asyncio.sleep(0.05)
    keys = out.pairs()
    assert len(keys) == len(set(keys)) == frame.height
    for symbol in SYMBOLS:
        times = [t for s, t in keys if s == symbol]
        assert times == sorted(times)
    assert feed.stats.reconnects >= 2
    assert feed.stats.backfilled > 0 and out.pairs("backfill")
    assert feed.stats.backfilled + len(out.pairs("live")) == frame.height


async def test_accept_then_close_gets_a_bounded_number_of_attempts() -> None:
    async with ReplayHarness(make_frame(5)) as server:
        server.close_after_subscribe()
        clock = FakeClock(T0)
        window = clock.passed(T0 + 600)
        policy = ReconnectPolicy(backoff_initial_s=1.0, backoff_max_s=60.0, stable_after_s=5.0)
        feed = _feed(server, now=clock.now, sleep=clock.sleep, policy=policy)
        async with running(feed):
            await asyncio.wait_for(window.wait(), 4)
    # Each session got through the handshake, yet none lived long enough to reset
    # the backoff: ten minutes cost a couple dozen attempts, not thousands.
    assert feed.stats.connects >= 3
    assert feed.stats.attempts <= 40
    assert max(clock.slept) > 30.0


@pytest.mark.parametrize("market_open", [True, False])
async def test_silence_watchdog_reconnects_only_while_the_market_is_open(market_open: bool) -> None:
    async with ReplayHarness(make_frame(30), ReplaySettings(speed=1.0)) as server:
        server.go_silent()
        clock = FakeClock(T0)
        window = clock.passed(T0 + 900)
        feed = _feed(
            server,
            now=clock.now,
            sleep=clock.sleep,
            silence_timeout_s=120.0,
            is_market_open=always_open if market_open else never_open,
        )
        with structlog.testing.capture_logs() as logs:
            async with running(feed):
                await asyncio.wait_for(window.wait(), 4)
                if market_open:
                    await wait_until(lambda: feed.stats.connects >= 2)
    silences = [e for e in logs if e["event"] == "feed.silence"]
    if market_open:
        assert feed.stats.silences >= 1 and silences
        assert silences[0]["quiet_s"] >= 120.0
        assert server.connections_seen >= 2
    else:
        assert feed.stats.silences == 0 and not silences
        assert feed.stats.attempts == 1 and server.connections_seen == 1


def _msg(symbol: str, t: str, **fields: object) -> dict[str, object]:
    msg: dict[str, object] = {
        "T": "b",
        "S": symbol,
        "o": 10.0,
        "h": 11.0,
        "l": 9.0,
        "c": 10.5,
        "v": 5,
        "t": t,
    }
    msg.update(fields)
    return msg


async def test_hostile_frames_are_rejected_and_counted_while_the_stream_goes_on() -> None:
    frame = make_frame(10)
    good_t = rfc3339(T0 + 600)
    future_t = rfc3339((int(time.time()) // 60 + 60) * 60)
    hostile: list[tuple[str, str | bytes]] = [
        (
            "bad_json",
            '[{"T":"b","S":"IWM","o":NaN,"h":11,"l":9,"c":10,"v":1,"t":"' + good_t + '"}]',
        ),
        (
            "bad_json",
            '[{"T":"b","S":"IWM","o":Infinity,"h":11,"l":9,"c":10,"v":1,"t":"' + good_t + '"}]',
        ),
        ("non_finite", json.dumps([_msg("IWM", good_t)]).replace("11.0", "1e400")),
        ("non_positive_price", json.dumps([_msg("IWM", good_t, o=-1.0, l=-2.0)])),
        ("non_positive_price", json.dumps([_msg("IWM", good_t, o=0.0, l=0.0)])),
        ("high_below_low", json.dumps([_msg("IWM", good_t, h=8.0)])),
        ("bad_field", json.dumps([_msg("IWM", good_t, c="10.5")])),
        ("unknown_type", json.dumps([{"T": "qq", "S": "IWM"}])),
        ("bad_time", json.dumps([_msg("IWM", "not a time")])),
        ("future_time", json.dumps([_msg("IWM", future_t)])),
        ("bad_symbol", json.dumps([_msg("IWM/", good_t)])),
        ("bad_symbol", json.dumps([_msg("A+B", good_t)])),
        ("bad_symbol", json.dumps([_msg("#IWM", good_t)])),
        ("bad_symbol", json.dumps([_msg("<IWM>", good_t)])),
        ("not_a_list", json.dumps(_msg("IWM", good_t))),
        ("too_deep", "[" * 50_000 + "]" * 50_000),
        ("bad_json", b"\x00\xff binary junk"),
    ]
    async with ReplayHarness(frame) as server:
        feed = _feed(server)
        async with running(feed) as out:
            await wait_until(lambda: len(out.pairs()) == frame.height)
            for _, data in hostile:
                assert await server.send_raw(data) == 1
            await server.send_raw(json.dumps([_msg("IWM", good_t)]))
            await wait_until(lambda: ("IWM", T0 + 600) in out.pairs())
    expected: dict[str, int] = {}
    for reason, _ in hostile:
        expected[reason] = expected.get(reason, 0) + 1
    assert feed.stats.rejected == expected
    assert feed.stats.connects == 1 and feed.stats.reconnects == 0
    assert len(out.pairs()) == frame.height + 1


async def test_frames_over_the_size_cap_close_with_1009_are_counted_and_reconnect() -> None:
    frame = make_frame(10)
    async with ReplayHarness(frame) as server:
        feed = _feed(server, max_frame_bytes=2048)
        async with running(feed) as out:
            await wait_until(lambda: len(out.pairs()) == frame.height)
            await server.send_raw("[" + " " * 4096 + "]")
            await wait_until(lambda: feed.stats.connects == 2)
            await server.send_raw(json.dumps([_msg("SPY", rfc3339(T0 + 600))]))
            await wait_until(lambda: ("SPY", T0 + 600) in out.pairs())
    assert feed.stats.rejected == {"frame_too_big": 1}
    assert feed.stats.reconnects == 1


def test_constructor_validates_without_echoing_secrets() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        AlpacaFeed("", SECRET, FeedOptions(SYMBOLS))
    with pytest.raises(ValueError, match="symbols"):
        AlpacaFeed(KEY, SECRET, FeedOptions(["iwm"]))
    with pytest.raises(ValueError, match="stream"):
        AlpacaFeed(KEY, SECRET, FeedOptions(SYMBOLS), stream="crypto")  # type: ignore[arg-type]
    feed: Feed = AlpacaFeed(KEY, SECRET, FeedOptions(SYMBOLS), stream="sip")
    assert isinstance(feed, AlpacaFeed)
    assert feed.url == "wss://stream.data.alpaca.markets/v2/sip"
    assert KEY not in repr(feed) and SECRET not in repr(feed)
    assert KEY not in repr(feed._settings) and SECRET not in repr(feed._settings)
