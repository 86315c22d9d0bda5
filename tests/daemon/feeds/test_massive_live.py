"""`MassiveFeed` against a real local Massive-protocol websocket server and real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import structlog

from daemon.feeds.base import Feed, FeedFatal
from daemon.feeds.massive import DEFAULT_STREAM_URL, DELAYED_STREAM_URL, MassiveFeed
from daemon.feeds.options import FeedOptions
from daemon.feeds.reconnect import ReconnectPolicy
from signals.bar import Bar
from tests.daemon.feeds.feedkit import (
    FAST,
    SYMBOLS,
    T0,
    FakeClock,
    keys_of,
    make_frame,
    never_open,
    wait_until,
)
from tests.daemon.feeds.massive_server import MassiveServer, am_event, running

KEY = "mAsSiVe-KEY-0123456789abcdef"


def _feed(server: MassiveServer, **kwargs: Any) -> MassiveFeed:
    options: dict[str, Any] = {
        "url": server.url,
        "rest_url": server.rest_url,
        "warmup_s": 0.0,
        "silence_timeout_s": 0.0,
        "is_market_open": never_open,
        "policy": FAST,
    }
    options.update(kwargs)
    key = options.pop("api_key", KEY)
    own = {name: options.pop(name) for name in ("delayed",) if name in options}
    return MassiveFeed(key, FeedOptions(SYMBOLS, **options), **own)


async def test_bars_arrive_as_batches_with_epoch_times_and_values() -> None:
    frame = make_frame(20)
    async with MassiveServer(frame, api_key=KEY) as server:
        feed = _feed(server)
        with structlog.testing.capture_logs() as logs:
            async with running(feed) as out:
                await wait_until(lambda: len(out.pairs()) == frame.height)
                await asyncio.sleep(0.05)  # nothing more comes
    assert server.received[:2] == [
        {"action": "auth", "params": KEY},
        {"action": "subscribe", "params": "AM.IWM,AM.SPY,AM.QQQ"},
    ]
    expected = [
        Bar(r["symbol"], r["time"], r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in frame.iter_rows(named=True)
    ]
    got = [bar for batch in out.batches for bar in batch.bars]
    assert got == sorted(expected, key=lambda b: (b.time, b.symbol))
    for batch in out.batches:
        assert batch.kind == "live"
        assert len({b.time for b in batch.bars}) == 1 and len(batch.bars) == 3
        assert batch.received_at == pytest.approx(time.time(), abs=10)
    assert feed.stats.connects == 1 and feed.stats.reconnects == 0
    assert feed.stats.bars == frame.height and feed.stats.rejected == {}
    events = [e["event"] for e in logs]
    assert events.index("feed.connecting") < events.index("feed.subscribed")
    assert events.index("feed.subscribed") < events.index("feed.connected")
    assert KEY not in repr(logs)


async def test_auth_failure_is_fatal_after_n_tries_without_leaking_the_key() -> None:
    async with MassiveServer(make_frame(5), api_key=KEY) as server:
        clock = FakeClock(T0)
        wrong = "not-the-right-key-42"
        feed = _feed(
            server,
            api_key=wrong,
            now=clock.now,
            sleep=clock.sleep,
            policy=ReconnectPolicy(max_auth_failures=3),
        )
        with structlog.testing.capture_logs() as logs, pytest.raises(FeedFatal) as info:
            async with asyncio.timeout(4):
                await feed.run(lambda batch: None)
    assert server.auth_attempts == 3
    assert feed.stats.attempts == 3 and feed.stats.connects == 0
    assert "auth_failed" in str(info.value) and "authentication failed" in str(info.value)
    fatal = [e for e in logs if e["event"] == "feed.fatal"]
    assert len(fatal) == 1 and "3 consecutive authentication failures" in fatal[0]["reason"]
    everything = repr(logs) + repr(info.value) + repr(feed) + repr(feed._settings)
    assert wrong not in everything and KEY not in everything


async def test_connection_limit_backs_off_long_with_bounded_attempts() -> None:
    async with MassiveServer(make_frame(5)) as server:
        server.refuse_with("max_connections")
        clock = FakeClock(T0)
        window = clock.passed(T0 + 1800)
        feed = _feed(server, now=clock.now, sleep=clock.sleep, policy=ReconnectPolicy())
        async with running(feed):
            await asyncio.wait_for(window.wait(), 4)
    assert feed.stats.connects == 0
    assert clock.slept and all(delay >= 60.0 for delay in clock.slept)
    # Half an hour of "maximum number of websocket connections exceeded": a handful of tries.
    assert 3 <= feed.stats.attempts <= 12
    assert server.connections_seen == feed.stats.attempts


async def test_killed_mid_stream_repeatedly_then_repaired_without_duplicates() -> None:
    frame = make_frame(150)
    async with MassiveServer(frame, speed=300.0, page_size=50) as server:
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
    assert all(r[1].get("authorization") == f"Bearer {KEY}" for r in server.rest_requests)


def _am(**fields: object) -> dict[str, object]:
    row = {"symbol": "IWM", "time": T0 + 600, "open": 10.0, "high": 11.0, "low": 9.0}
    event = am_event({**row, "close": 10.5, "volume": 5.0})
    event.update(fields)
    return event


async def test_hostile_frames_are_rejected_and_counted_while_the_stream_goes_on() -> None:
    frame = make_frame(10)
    future_ms = (int(time.time()) // 60 + 60) * 60_000
    hostile: list[tuple[str, str | bytes]] = [
        ("bad_json", json.dumps([_am()]).replace("10.0", "NaN", 1)),
        ("bad_json", json.dumps([_am()]).replace("11.0", "Infinity", 1)),
        ("non_finite", json.dumps([_am()]).replace("11.0", "1e400", 1)),
        ("non_positive_price", json.dumps([_am(o=-1.0, l=-2.0)])),
        ("non_positive_price", json.dumps([_am(o=0.0, l=0.0)])),
        ("high_below_low", json.dumps([_am(h=8.0)])),
        ("bad_field", json.dumps([_am(c="10.5")])),
        ("unknown_type", json.dumps([{"ev": "XQ", "sym": "IWM"}])),
        ("bad_time", json.dumps([_am(s="not a time")])),
        ("bad_time", json.dumps([_am(s=(T0 + 630) * 1000)])),
        ("future_time", json.dumps([_am(s=future_ms)])),
        ("bad_symbol", json.dumps([_am(sym="IWM/")])),
        ("bad_symbol", json.dumps([_am(sym="A+B")])),
        ("bad_symbol", json.dumps([_am(sym="#IWM")])),
        ("bad_symbol", json.dumps([_am(sym="<IWM>")])),
        ("not_a_list", json.dumps(_am())),
        ("too_deep", "[" * 30_000 + "]" * 30_000),
        ("bad_json", b"\x00\xff binary junk"),
    ]
    async with MassiveServer(frame) as server:
        feed = _feed(server)
        async with running(feed) as out:
            await wait_until(lambda: len(out.pairs()) == frame.height)
            for _, data in hostile:
                assert await server.send_raw(data) == 1
            await server.send_raw(json.dumps([_am()]))
            await wait_until(lambda: ("IWM", T0 + 600) in out.pairs())
    expected: dict[str, int] = {}
    for reason, _ in hostile:
        expected[reason] = expected.get(reason, 0) + 1
    assert feed.stats.rejected == expected
    assert feed.stats.connects == 1 and feed.stats.reconnects == 0
    assert len(out.pairs()) == frame.height + 1


async def test_frames_over_the_size_cap_close_with_1009_are_counted_and_reconnect() -> None:
    frame = make_frame(10)
    async with MassiveServer(frame) as server:
        feed = _feed(server, max_frame_bytes=2048)
        async with running(feed) as out:
            await wait_until(lambda: len(out.pairs()) == frame.height)
            await server.send_raw("[" + " " * 4096 + "]")
            await wait_until(lambda: feed.stats.connects == 2)
            await server.send_raw(json.dumps([_am(sym="SPY")]))
            await wait_until(lambda: ("SPY", T0 + 600) in out.pairs())
    assert feed.stats.rejected == {"frame_too_big": 1}
    assert feed.stats.reconnects == 1


async def test_silence_while_the_market_is_open_reconnects() -> None:
    async with MassiveServer(make_frame(30), speed=1.0) as server:
        server.go_silent()
        clock = FakeClock(T0)
        window = clock.passed(T0 + 900)
        feed = _feed(
            server,
            now=clock.now,
            sleep=clock.sleep,
            silence_timeout_s=120.0,
            is_market_open=lambda _t: True,
        )
        async with running(feed):
            await asyncio.wait_for(window.wait(), 4)
            await wait_until(lambda: feed.stats.connects >= 2)
    assert feed.stats.silences >= 1 and server.connections_seen >= 2


def test_constructor_validates_and_hides_the_key() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        MassiveFeed("", FeedOptions(SYMBOLS))
    with pytest.raises(ValueError, match="symbols"):
        MassiveFeed(KEY, FeedOptions(["iwm"]))
    with pytest.raises(ValueError, match="max_frame_bytes"):
        MassiveFeed(KEY, FeedOptions(SYMBOLS, max_frame_bytes=10))
    with pytest.raises(ValueError, match="url must be"):
        MassiveFeed(KEY, FeedOptions(SYMBOLS, url="https://socket.massive.com/stocks"))
    feed: Feed = MassiveFeed(KEY, FeedOptions(SYMBOLS))
    assert isinstance(feed, MassiveFeed) and feed.url == DEFAULT_STREAM_URL
    assert MassiveFeed(KEY, FeedOptions(SYMBOLS), delayed=True).url == DELAYED_STREAM_URL
    assert (
        MassiveFeed(KEY, FeedOptions(SYMBOLS, url="ws://127.0.0.1:1/x")).url == "ws://127.0.0.1:1/x"
    )
    assert KEY not in repr(feed) and KEY not in repr(feed._settings)


@pytest.mark.parametrize("greeting", ["success", "connected"])
async def test_any_status_greeting_starts_the_handshake_and_bars_flow(greeting: str) -> None:
    # Massive's AsyncAPI spec greets with status "success" ("Connected Successfully");
    # servers seen in the wild (and Polygon's clients) say "connected".
    frame = make_frame(10)
    async with MassiveServer(frame, api_key=KEY, greeting=greeting) as server:
        feed = _feed(server)
        async with running(feed) as out:
            await wait_until(lambda: len(out.pairs()) == frame.height)
    assert server.received[:2] == [
        {"action": "auth", "params": KEY},
        {"action": "subscribe", "params": "AM.IWM,AM.SPY,AM.QQQ"},
    ]
    assert set(out.pairs("live")) == keys_of(frame)
    assert feed.stats.connects == 1 and feed.stats.reconnects == 0
    assert feed.stats.rejected == {}


_NOISE: list[str | bytes] = [
    b'[{"ev":"AM",',  # cut short
    json.dumps([{"ev": "XQ", "sym": "IWM"}]),
    json.dumps(_am()),  # not a list
    json.dumps([_am()]),  # a bar before the subscription
    b"\xff\xfe not UTF-8",
]
_NOISE_REASONS = {"bad_json": 2, "unknown_type": 1, "not_a_list": 1, "unexpected_message": 1}


async def test_frames_rejected_during_the_handshake_are_counted_by_reason() -> None:
    frame = make_frame(10)
    async with MassiveServer(frame, api_key=KEY, handshake_noise=_NOISE) as server:
        feed = _feed(server)
        with structlog.testing.capture_logs() as logs:
            async with running(feed) as out:
                await wait_until(lambda: len(out.pairs()) == frame.height)
    assert feed.stats.rejected == _NOISE_REASONS
    assert feed.stats.connects == 1 and feed.stats.reconnects == 0
    logged = {e["reason"] for e in logs if e["event"] == "bar.rejected"}
    assert logged == set(_NOISE_REASONS)
    assert all(e["feed"] == "massive" for e in logs if e["event"] == "bar.rejected")


async def test_handshake_rejections_are_counted_when_the_handshake_then_fails() -> None:
    async with MassiveServer(make_frame(5), api_key=KEY, handshake_noise=_NOISE) as server:
        clock = FakeClock(T0)
        feed = _feed(
            server,
            api_key="not-the-right-key-42",
            now=clock.now,
            sleep=clock.sleep,
            policy=ReconnectPolicy(max_auth_failures=2),
        )
        with pytest.raises(FeedFatal):
            async with asyncio.timeout(4):
                await feed.run(lambda batch: None)
    assert server.auth_attempts == 2 and feed.stats.connects == 0
    assert feed.stats.rejected == {reason: 2 * n for reason, n in _NOISE_REASONS.items()}


async def test_handshake_rejections_are_counted_when_the_handshake_times_out() -> None:
    # A greeting, junk, then no answer to the auth: the junk still counts.
    stalled = asyncio.Event()

    async def stall(_delay: float) -> None:  # the loop stops before its first retry
        stalled.set()
        await asyncio.Event().wait()

    async with MassiveServer(make_frame(5), api_key=KEY, handshake_noise=_NOISE) as server:
        server.ignore_auth()
        feed = _feed(server, handshake_timeout_s=0.3, sleep=stall)
        async with running(feed):
            await asyncio.wait_for(stalled.wait(), 4)
    assert feed.stats.connects == 0 and feed.stats.reconnects == 1
    assert feed.stats.rejected == _NOISE_REASONS


async def test_rejections_in_the_message_that_ends_a_session_are_counted() -> None:
    frame = make_frame(10)
    async with MassiveServer(frame) as server:
        feed = _feed(server)
        async with running(feed) as out:
            await wait_until(lambda: len(out.pairs()) == frame.height)
            ending = [{"ev": "XQ"}, {"ev": "status", "status": "error", "message": "bye"}]
            assert await server.send_raw(json.dumps(ending)) == 1
            await wait_until(lambda: feed.stats.connects == 2)
    assert feed.stats.rejected == {"unknown_type": 1}
    assert feed.stats.reconnects == 1
