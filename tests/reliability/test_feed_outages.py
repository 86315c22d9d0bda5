"""Feed faults at daemon level: the real Alpaca feed against the real local ReplayHarness.

1. "Connection limit exceeded" (Alpaca 406) for five fake minutes: a handful of
   attempts, then bars flow as soon as the server lets us in.
2. An open socket gone silent during market hours is closed after the silence
   timeout, then reconnected and repaired; silence while the market is closed
   is not a fault.
3. A 30-minute outage in realtime semantics: the outage minutes' alerts come
   flagged delayed, those past the stale limit are dropped and counted, none
   is sent twice.

Fake time: `FakeClock` (tests/daemon/feeds/feedkit) in 1, where only the
reconnect loop sleeps; `SteppedClock` here in 2 and 3, where the test moves
the clock and a manual-mode replay server in step, minute by minute.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import structlog

from daemon.app import DELAYED_AFTER_S, STALE_AFTER_S, Ingest, build_pipeline
from daemon.config import FeedSettings, load_config
from daemon.delivery import DeliveryLoop
from daemon.feeds.alpaca import AlpacaFeed
from daemon.feeds.base import FeedBatch
from daemon.feeds.market_hours import xnys_is_open
from daemon.feeds.options import FeedOptions
from daemon.feeds.reconnect import ReconnectPolicy
from daemon.feeds.replay import ReplaySettings
from daemon.outbox import Outbox
from daemon.sinks.jsonl import JsonlSink
from signals.alerts import decode_alert
from tests.daemon.feeds.feedkit import (
    KEY,
    SECRET,
    SYMBOLS,
    T0,
    Collector,
    FakeClock,
    keys_of,
    make_frame,
    never_open,
    running,
    wait_until,
)
from tests.daemon.feeds.replay_harness import ReplayHarness
from tests.daemon.minute_market import minute_market
from tests.reliability.faultkit import SEED, report
from tests.reliability.scale import scale

pytestmark = pytest.mark.reliability

DEFAULTS = FeedSettings(provider="alpaca")
"""The `[feed]` defaults a production config gets (silence timeout, backoff)."""
WATCHDOG_TICK_S = DEFAULTS.silence_timeout_s / 4  # while closed, the watchdog looks this often


def _daemon_feed(
    server: ReplayHarness,
    *,
    now: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    rand: Callable[[], float],
    is_market_open: Callable[[float], bool] = xnys_is_open,
) -> AlpacaFeed:
    """The feed `daemon.app.build_feed` makes for a realtime Alpaca config with the default
    `[feed]` settings, pointed at `server`, on an injected clock."""
    return AlpacaFeed(
        KEY,
        SECRET,
        FeedOptions(
            SYMBOLS,
            url=server.url,
            rest_url=server.rest_url,
            max_frame_bytes=DEFAULTS.max_frame_bytes,
            silence_timeout_s=DEFAULTS.silence_timeout_s,
            policy=ReconnectPolicy(
                backoff_initial_s=DEFAULTS.backoff_initial_s, backoff_max_s=DEFAULTS.backoff_max_s
            ),
            warmup_s=300.0,
            now=now,
            sleep=sleep,
            is_market_open=is_market_open,
            rand=rand,
        ),
    )


# 1. "Connection limit exceeded" for five fake minutes.

REFUSED_S = 300.0
MAX_ATTEMPTS = 10


@pytest.mark.parametrize("seed", range(scale(1, 5)))
async def test_connection_limit_for_five_minutes_costs_at_most_ten_attempts(seed: int) -> None:
    frame = make_frame(10)
    async with ReplayHarness(frame) as server:
        server.refuse_with(406)
        clock = FakeClock(T0)
        window = clock.passed(T0 + REFUSED_S)
        # Market closed for the watchdog: silence is test 2's subject, not this one's.
        feed = _daemon_feed(
            server,
            now=clock.now,
            sleep=clock.sleep,
            rand=random.Random(seed).random,
            is_market_open=never_open,
        )
        async with running(feed) as out:
            await asyncio.wait_for(window.wait(), 10)
            # The reconnect loop is inside the sleep that crossed the five minutes.
            attempts, refused = server.connections_seen, dict(server.refused)
            delays = list(clock.slept)
            connects_while_refused = feed.stats.connects
            server.refuse_with(None)
            await wait_until(lambda: set(out.pairs()) == keys_of(frame), 10)
    assert 2 <= attempts <= MAX_ATTEMPTS
    assert refused == {406: attempts}  # each attempt really was told 406
    assert connects_while_refused == 0
    assert len(delays) == attempts and all(d >= 60.0 for d in delays)
    # Once let in: the very next attempt connects and every bar arrives once.
    assert server.connections_seen == attempts + 1 == feed.stats.attempts
    assert feed.stats.connects == 1
    assert sorted(out.pairs()) == sorted(keys_of(frame))
    report(
        f"406 for {REFUSED_S:.0f} fake s (seed {seed}): {attempts} attempts,"
        f" delays {[round(d) for d in delays]} s"
    )


# Fake time in step with a manual-mode replay server (2 and 3).


class SteppedClock:
    """Wall-clock time that moves only when the test moves it, one step at a time.

    `sleep(d)` waits until the test has advanced the clock by `d`. After every
    step the test waits a millisecond for real, so whatever woke up (and the
    loopback I/O it starts) runs at that instant of fake time.
    """

    def __init__(self, start: float) -> None:
        self.t = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + max(0.0, delay), future))
        self._wake()
        await future

    async def step(self, step_s: float = 1.0) -> None:
        """Move one step and let what woke up run."""
        self.t += step_s
        self._wake()
        await asyncio.sleep(0.001)

    def _wake(self) -> None:
        due = [s for s in self._sleepers if s[0] <= self.t]
        self._sleepers = [s for s in self._sleepers if s[0] > self.t]
        for _, future in due:
            if not future.done():
                future.set_result(None)


class Market:
    """A manual-mode replay server and a `SteppedClock` in step: minute `t` is published
    at `t + 61` (one second after it ends), and while the feed is up and the server is not
    silent the test waits until the minute has reached it (fake time stands still
    meanwhile). Silence detections are timed as they happen, and end the silence."""

    def __init__(
        self, server: ReplayHarness, clock: SteppedClock, feed: AlpacaFeed, out: Collector
    ) -> None:
        self.server, self.clock, self.feed, self.out = server, clock, feed, out
        self.silent = False
        self.detections: list[tuple[float, int]] = []
        """(fake time, websocket connections the server had seen) at each detection."""

    def go_silent(self, silent: bool = True) -> None:
        self.silent = silent
        self.server.go_silent(silent)

    async def tick_to(self, target: float) -> None:
        while self.clock.t < target:
            await self.clock.step(min(1.0, target - self.clock.t))
            if self.feed.stats.silences > len(self.detections):
                self.detections.append((self.clock.t, self.server.connections_seen))
                self.go_silent(False)  # before the reconnect, so the next session streams

    async def play(self, t: int) -> None:
        await self.tick_to(t + 61)
        await self.server.advance(1)
        if self.feed.stats.connected and not self.silent:
            await wait_until(lambda: self.arrived(t), 15)

    def arrived(self, t: int) -> bool:
        return all((s, t) in set(self.out.pairs()) for s in SYMBOLS)


def _minutes(frame: pl.DataFrame) -> list[int]:
    return sorted(set(frame["time"].to_list()))


def _assert_every_bar_once(out: Collector, frame: pl.DataFrame) -> None:
    keys = out.pairs()
    assert len(keys) == len(set(keys)) == frame.height
    assert set(keys) == keys_of(frame)


# 2. Silence.


SILENT_MINUTES_TOTAL = scale(30, 90)


async def test_socket_silent_in_market_hours_is_detected_reconnected_and_repaired() -> None:
    started = time.monotonic()
    frame = make_frame(SILENT_MINUTES_TOTAL)  # from T0, the 09:30 New York open
    minutes = _minutes(frame)
    rng = random.Random(SEED)
    silent_at = rng.randrange(5, SILENT_MINUTES_TOTAL - 15)
    async with ReplayHarness(frame, ReplaySettings(manual=True)) as server:
        clock = SteppedClock(T0)
        feed = _daemon_feed(server, now=clock.now, sleep=clock.sleep, rand=rng.random)
        with structlog.testing.capture_logs() as logs:
            async with running(feed) as out:
                market = Market(server, clock, feed, out)
                await wait_until(lambda: feed.stats.connected, 15)
                for t in minutes[:silent_at]:
                    await market.play(t)
                last_heard = clock.t  # the last minute reached the feed at this fake instant
                market.go_silent()
                rest = iter(minutes[silent_at:])
                while not market.detections:
                    await market.play(next(rest))
                for t in rest:
                    await market.play(t)
                await wait_until(lambda: len(out.pairs()) >= frame.height, 15)
    (detected_at, connections), *more = market.detections
    quiet_s = detected_at - last_heard
    assert not more and feed.stats.silences == 1
    # Within the silence timeout (the watchdog wakes at the deadline, not a poll later).
    assert DEFAULTS.silence_timeout_s <= quiet_s <= DEFAULTS.silence_timeout_s + 1  # within 90 s
    silences = [e for e in logs if e["event"] == "feed.silence"]
    assert len(silences) == 1 and silences[0]["quiet_s"] >= DEFAULTS.silence_timeout_s
    # The socket was open and silent all along: the watchdog, not the server, ended it.
    assert connections == 1 and server.connections_seen == 2 == feed.stats.connects
    assert feed.stats.attempts == 2
    # Reconnected and repaired: every bar once, the silent minutes by backfill.
    _assert_every_bar_once(out, frame)
    silent_minutes = {t for t in minutes[silent_at:] if t + 61 <= detected_at}
    assert silent_minutes and all(
        (s, t) in set(out.pairs("backfill")) for s in SYMBOLS for t in silent_minutes
    )
    report(
        f"silence in market hours: detected after {quiet_s:.1f} fake s"
        f" (timeout {DEFAULTS.silence_timeout_s:g} s), {len(silent_minutes)} silent minutes"
        f" backfilled, wall={time.monotonic() - started:.1f}s"
    )


async def test_silence_while_the_market_is_closed_is_not_a_fault() -> None:
    """Quiet from 09:00 New York (pre-market) on: no fault while closed, a fault from the open."""
    started = time.monotonic()
    early = T0 - 40 * 60  # 08:50 New York
    frame = make_frame(40 + scale(15, 45), start=early)
    minutes = _minutes(frame)
    silent_at = 10  # 09:00 New York
    async with ReplayHarness(frame, ReplaySettings(manual=True)) as server:
        clock = SteppedClock(early)
        feed = _daemon_feed(
            server, now=clock.now, sleep=clock.sleep, rand=random.Random(SEED).random
        )
        async with running(feed) as out:
            market = Market(server, clock, feed, out)
            await wait_until(lambda: feed.stats.connected, 15)
            for t in minutes[:silent_at]:
                await market.play(t)
            market.go_silent()
            silent_from = clock.t
            rest = iter(minutes[silent_at:])
            while clock.t < T0:
                await market.play(next(rest))
            # Half an hour of silence while closed: the same socket, no silence counted.
            quiet_closed_s = T0 - silent_from
            silences_while_closed = feed.stats.silences
            connections_while_closed = server.connections_seen
            while not market.detections:
                await market.play(next(rest))
            for t in rest:
                await market.play(t)
            await wait_until(lambda: len(out.pairs()) >= frame.height, 15)
    assert not xnys_is_open(silent_from) and xnys_is_open(T0)
    assert quiet_closed_s >= 25 * 60 > DEFAULTS.silence_timeout_s
    assert silences_while_closed == 0 and connections_while_closed == 1
    # From the open the same silence is a fault: counted from the open, not from 09:00.
    (detected_at, connections), *more = market.detections
    after_open_s = detected_at - T0
    low = DEFAULTS.silence_timeout_s - WATCHDOG_TICK_S
    assert low <= after_open_s <= DEFAULTS.silence_timeout_s + WATCHDOG_TICK_S + 1
    assert not more and connections == 1 and feed.stats.connects == 2
    _assert_every_bar_once(out, frame)
    report(
        f"silence while closed: {quiet_closed_s:.0f} fake s tolerated, then detected"
        f" {after_open_s:.1f} fake s after the open, wall={time.monotonic() - started:.1f}s"
    )


# 3. A 30-minute outage in realtime semantics.

LIVE_MINUTES = scale(10, 30)
"""Minutes streamed live before, between and after the outages."""
OUTAGES = (30, scale(40, 60))
"""The 30-minute outage of the brief, then one that must outlast the stale limit (30 min)."""
EVERY_MINUTE_RULE = """
[[rule]]
name = "every_minute"
operator = "greater_than"
timeframe = "1m"
value = "close"
threshold = 0.0
"""


def _realtime_config(tmp: Path) -> Path:
    (tmp / "rules.toml").write_text(EVERY_MINUTE_RULE)
    path = tmp / "config.toml"
    path.write_text(
        f'[feed]\nprovider = "replay"\n\n[rules]\nfile = "{tmp / "rules.toml"}"\n\n'
        f'[sinks.console]\nenabled = false\n\n[state]\ndir = "{tmp / "state"}"\n\n'
        "[health]\nenabled = false\n"
    )
    return path


@dataclass
class Outage:
    minutes: list[int]
    refused_s: float = 0.0


async def test_thirty_minute_outage_alerts_delayed_stale_dropped_none_twice(
    tmp_path: Path,
) -> None:
    """The daemon's `Ingest`, pipeline, outbox and a JSONL delivery loop, the wall clock on
    fake time, fed by the real Alpaca feed while the replay server refuses it (error 500)
    for 30 minutes of bar time, and later for longer than the stale limit."""
    started = time.monotonic()
    df, _ = minute_market(n_sessions=1)
    minutes = _minutes(df)[: LIVE_MINUTES * 3 + sum(OUTAGES)]
    df = df.filter(pl.col("time") <= minutes[-1])
    phases: list[list[int] | Outage] = []
    rest = iter(minutes)
    for length in OUTAGES:
        phases.append([next(rest) for _ in range(LIVE_MINUTES)])
        phases.append(Outage([next(rest) for _ in range(length)]))
    phases.append(list(rest))
    config = load_config(_realtime_config(tmp_path))
    pipeline = build_pipeline(config, datetime.fromtimestamp(minutes[0], UTC))
    handed: list[FeedBatch] = []
    sent_path = tmp_path / "alerts.jsonl"
    async with (
        ReplayHarness(df, ReplaySettings(manual=True)) as server,
        JsonlSink(sent_path) as sink,
    ):
        clock = SteppedClock(minutes[0])
        feed = _daemon_feed(
            server, now=clock.now, sleep=clock.sleep, rand=random.Random(SEED).random
        )
        with Outbox.open(tmp_path / "outbox.sqlite", [sink.name]) as outbox:
            delivery = DeliveryLoop(outbox, sink)
            ingest = Ingest(
                pipeline, outbox, wall_clock=clock.now, on_alerts=lambda _: delivery.wake()
            )
            out = Collector()

            def emit(batch: FeedBatch) -> None:
                out(batch)
                handed.append(batch)
                ingest(batch)

            async with asyncio.TaskGroup() as tg:
                feed_task = tg.create_task(feed.run(emit), name="feed")
                deliver_task = tg.create_task(delivery.run(), name="deliver")
                market = Market(server, clock, feed, out)
                await wait_until(lambda: feed.stats.connected, 15)
                for phase in phases:
                    if not isinstance(phase, Outage):
                        for t in phase:
                            await market.play(t)
                        continue
                    server.refuse_with(500)
                    assert server.kill_connections() == 1
                    await wait_until(lambda: not feed.stats.connected, 15)
                    down_from = clock.t
                    for t in phase.minutes:
                        await market.play(t)
                    phase.refused_s = clock.t - down_from
                    server.refuse_with(None)
                await wait_until(lambda: len(out.pairs()) >= df.height, 15)
                assert await delivery.drain(10)
                feed_task.cancel()
                deliver_task.cancel()
    # What each (symbol, minute) should have become, from when ingest got it.
    age: dict[tuple[str, int], int] = {}
    for batch in handed:
        for bar in batch.bars:
            age[(bar.symbol, bar.time)] = int(batch.received_at) - (bar.time + 60)
    assert sorted(age) == sorted(keys_of(df))  # every minute reached ingest, once
    stale = {k for k, a in age.items() if a > STALE_AFTER_S}
    delayed = {k for k, a in age.items() if DELAYED_AFTER_S < a <= STALE_AFTER_S}
    # The faults happened: each outage lasted its minutes, and was repaired by backfill.
    outages = [p for p in phases if isinstance(p, Outage)]
    backfilled = {t for _, t in out.pairs("backfill")}
    for outage in outages:
        assert outage.refused_s >= 60 * len(outage.minutes)
        assert set(outage.minutes) <= backfilled
    assert server.refused.get(500, 0) >= 2 * len(outages)
    first, second = ({(s, t) for s in SYMBOLS for t in o.minutes} for o in outages)
    assert len(first & delayed) >= 3 * (OUTAGES[0] - 3)  # the 30-minute outage: late news
    # The long outage's oldest minutes outlived the stale limit. (The 30-minute one sits
    # at the limit: its first minute goes stale only if the repair comes 60 s past it.)
    assert stale & second and stale <= first | second
    # Sent: everything but the stale, each once, flagged delayed exactly when late.
    alerts = [decode_alert(line) for line in sent_path.read_text().splitlines()]
    ids = [a.id for a in alerts]
    assert len(ids) == len(set(ids))
    assert {(a.symbol, a.bar_time) for a in alerts} == set(age) - stale
    assert {(a.symbol, a.bar_time) for a in alerts if a.delayed} == delayed
    assert ingest.stats.alerts_stale == len(stale)
    assert ingest.stats.alerts_duplicate == 0
    assert ingest.stats.alerts_emitted == len(alerts) == len(age) - len(stale)
    report(
        f"outages of {[round(o.refused_s) for o in outages]} fake s:"
        f" 30-min outage {len(first & delayed)} delayed / {len(first & stale)} stale,"
        f" long outage {len(second & delayed)} delayed / {len(second & stale)} stale dropped;"
        f" {len(alerts)} alerts sent once each, feed attempts={feed.stats.attempts},"
        f" wall={time.monotonic() - started:.1f}s"
    )
