"""The shared reconnect machinery: backoff, policy, rejection logging, and the loop on a scripted source."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import pytest
import structlog

from daemon.feeds.base import (
    FeedAuthFailed,
    FeedError,
    FeedFatal,
    FeedSilent,
    FeedStats,
    FeedThrottled,
    FeedUnavailable,
    FrameRejected,
)
from daemon.feeds.reconnect import (
    FeedLoop,
    LoopSettings,
    Received,
    ReconnectPolicy,
    Rejection,
    RejectLog,
    backoff,
    classify,
)
from signals.bar import Bar
from tests.daemon.feeds.feedkit import T0, Collector, FakeClock, wait_until

# Backoff.


def test_backoff_grows_exponentially_to_the_cap() -> None:
    top = list(itertools.islice(backoff(1.0, 60.0, rand=lambda: 1.0), 10))
    assert top == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]


def test_backoff_full_jitter_spans_zero_to_the_ceiling() -> None:
    assert list(itertools.islice(backoff(1.0, 60.0, rand=lambda: 0.0), 5)) == [0.0] * 5
    rng = random.Random(7)
    draws = list(itertools.islice(backoff(1.0, 8.0, rand=rng.random), 2000))
    ceilings = [1.0, 2.0, 4.0] + [8.0] * 1997
    assert all(0.0 <= d <= c for d, c in zip(draws, ceilings, strict=True))
    capped = draws[3:]
    assert len(set(capped)) > 1900  # jittered, not a constant
    assert 3.5 < sum(capped) / len(capped) < 4.5  # uniform on [0, 8): mean 4


def test_backoff_floor_holds_even_with_zero_jitter() -> None:
    delays = list(itertools.islice(backoff(90.0, 900.0, min_s=60.0, rand=lambda: 0.0), 6))
    assert delays == [60.0] * 6
    high = list(itertools.islice(backoff(90.0, 900.0, min_s=60.0, rand=lambda: 1.0), 6))
    assert high == [90.0, 180.0, 360.0, 720.0, 900.0, 900.0]


def test_backoff_never_overflows() -> None:
    delays = list(itertools.islice(backoff(1.0, 30.0, factor=10.0, rand=lambda: 1.0), 2000))
    assert max(delays) == 30.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0.0},
        {"initial_s": float("nan")},
        {"factor": 0.5},
        {"min_s": -1.0},
        {"min_s": 100.0, "max_s": 60.0},
        {"max_s": float("inf")},
    ],
)
def test_backoff_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        next(backoff(**kwargs))  # type: ignore[arg-type]


def test_policy_validates() -> None:
    with pytest.raises(ValueError, match="max_auth_failures"):
        ReconnectPolicy(max_auth_failures=0)
    with pytest.raises(ValueError, match="backoff_initial_s"):
        ReconnectPolicy(backoff_initial_s=100.0, backoff_max_s=10.0)


# The policy function.

POLICY = ReconnectPolicy(max_auth_failures=3)


@pytest.mark.parametrize(
    ("exc", "action"),
    [
        (FeedUnavailable("f", "network"), "retry"),
        (FeedSilent("f", "quiet"), "retry"),
        (FrameRejected("f", "frame_too_big", "big"), "retry"),
        (FeedThrottled("f", "406", retry_after_s=5.0), "retry_later"),
        (FeedFatal("f", "409 insufficient subscription"), "fatal"),
        (FeedAuthFailed("f", "402"), "retry"),
        (KeyError("bug"), "raise"),
    ],
)
def test_classify_by_what_the_loop_must_do(exc: Exception, action: str) -> None:
    assert classify(exc, auth_failures=1, policy=POLICY).action == action


def test_classify_auth_failure_is_fatal_after_n_in_a_row() -> None:
    exc = FeedAuthFailed("f", "server error 402 (auth failed)")
    assert classify(exc, auth_failures=2, policy=POLICY).action == "retry"
    decision = classify(exc, auth_failures=3, policy=POLICY)
    assert decision.action == "fatal"
    assert "3 consecutive" in decision.reason


def test_classify_keeps_the_servers_retry_after() -> None:
    decision = classify(FeedThrottled("f", "429", 42.0), auth_failures=0, policy=POLICY)
    assert decision.retry_after_s == 42.0


# Rejection logging.


def test_reject_log_counts_everything_but_logs_once_per_interval() -> None:
    clock = FakeClock(1000.0)
    stats = FeedStats()
    log = RejectLog("f", stats, interval_s=60.0, now=clock.now)
    with structlog.testing.capture_logs() as logs:
        for _ in range(500):
            log.record("bad_json", "garbage")
        log.record("high_below_low", "IWM")
        clock.t += 61.0
        log.record("bad_json", "more garbage")
    assert stats.rejected == {"bad_json": 501, "high_below_low": 1}
    lines = [(e["reason"], e["count"]) for e in logs if e["event"] == "bar.rejected"]
    assert lines == [("bad_json", 1), ("high_below_low", 1), ("bad_json", 500)]


# The loop, on a scripted source (no network).


def _bar(symbol: str, minute: int) -> Bar:
    p = 100.0 + minute
    return Bar(symbol, T0 + 60 * minute, p, p + 1, p - 1, p, 10.0)


def _live(*bars: Bar) -> Received:
    return Received((("live", bars),))


class ScriptedConnection:
    """Plays `script` (results or exceptions) then blocks until `end` is set, then raises."""

    def __init__(
        self,
        script: Sequence[Received | Exception] = (),
        *,
        enter_error: Exception | None = None,
        end: Exception | None = None,
    ) -> None:
        self.script = list(script)
        self.enter_error = enter_error
        self.end = end
        self.ended = asyncio.Event()

    async def __aenter__(self) -> Self:
        if self.enter_error is not None:
            raise self.enter_error
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def receive(self) -> Received:
        await asyncio.sleep(0)  # a real connection always yields here
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        if self.end is not None:
            raise self.end
        await self.ended.wait()
        raise FeedUnavailable("fake", "ended")


class ScriptedSource:
    """Hands out scripted connections in order; `backfill` answers from `history` after `release`."""

    name = "fake"
    url = "fake://stream"

    def __init__(
        self, connections: list[ScriptedConnection], history: list[Bar] | None = None
    ) -> None:
        self.connections = connections
        self.history = history or []
        self.release = asyncio.Event()
        self.release.set()
        self.backfills: list[tuple[int, int]] = []
        self.backfill_error: FeedError | None = None
        self.opened = 0

    def connection(self) -> ScriptedConnection:
        self.opened += 1
        if self.connections:
            return self.connections.pop(0)
        return ScriptedConnection(end=FeedUnavailable("fake", "no more scripts"))

    async def backfill(self, start_s: int, end_s: int) -> Received:
        self.backfills.append((start_s, end_s))
        await self.release.wait()
        if self.backfill_error is not None:
            raise self.backfill_error
        bars = tuple(b for b in self.history if start_s <= b.time <= end_s)
        return Received((("backfill", bars),), (Rejection("bad_time", "hostile REST row"),))


def _loop(
    source: ScriptedSource,
    clock: FakeClock,
    *,
    policy: ReconnectPolicy | None = None,
    silence_timeout_s: float = 0.0,
    warmup_s: float = 0.0,
    market_open: bool = False,
    rand: float | None = None,
) -> tuple[FeedLoop, FeedStats]:
    stats = FeedStats()
    loop = FeedLoop(
        source,
        stats,
        LoopSettings(
            policy=policy or ReconnectPolicy(),
            silence_timeout_s=silence_timeout_s,
            warmup_s=warmup_s,
            now=clock.now,
            sleep=clock.sleep,
            is_market_open=lambda t: market_open,
            rand=random.Random(3).random if rand is None else (lambda: rand),
        ),
    )
    return loop, stats


async def test_backfill_is_emitted_before_held_live_bars_without_duplicates() -> None:
    clock = FakeClock(T0 + 60 * 10 + 5)  # 14:40:05
    history = [_bar(s, m) for m in range(10) for s in ("IWM", "SPY")]
    live = [_live(_bar("IWM", 9), _bar("SPY", 9)), _live(_bar("IWM", 10), _bar("SPY", 10))]
    source = ScriptedSource([ScriptedConnection(live)], history)
    source.release.clear()  # live bars arrive while the backfill is in flight
    loop, stats = _loop(source, clock, warmup_s=600.0)
    out = Collector()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(loop.run(out))
        await wait_until(lambda: stats.frames == 2)
        assert out.batches == []  # held back
        source.release.set()
        await wait_until(lambda: stats.bars == 22)
        task.cancel()
    assert source.backfills == [(T0, T0 + 599)]
    assert [b.kind for b in out.batches] == ["backfill"] * 10 + ["live"]
    assert out.pairs() == [(s, T0 + 60 * m) for m in range(11) for s in ("IWM", "SPY")]
    assert all(len({b.time for b in batch.bars}) == 1 for batch in out.batches)
    assert stats.duplicates == 2  # minute 9 came live too
    assert stats.backfilled == 20
    assert stats.rejected == {"bad_time": 1}


async def test_reconnect_backfills_from_the_last_minute_seen() -> None:
    clock = FakeClock(T0 + 60 * 30)
    first = ScriptedConnection(
        [_live(_bar("IWM", 1)), _live(_bar("IWM", 2))], end=FeedUnavailable("fake", "drop")
    )
    second = ScriptedConnection([_live(_bar("IWM", 8))])
    history = [_bar("IWM", m) for m in range(30)]
    source = ScriptedSource([first, second], history)
    loop, stats = _loop(source, clock)
    out = Collector()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(loop.run(out))
        await wait_until(lambda: stats.connects == 2 and (("IWM", T0 + 480) in out.pairs()))
        task.cancel()
    assert source.backfills == [(T0 + 120, T0 + 1799)]  # resumes at minute 2, inclusive
    assert out.pairs() == [("IWM", T0 + 60 * m) for m in range(1, 30)]
    assert len(set(out.pairs())) == len(out.pairs())


async def test_failed_backfill_is_logged_and_live_goes_on() -> None:
    clock = FakeClock(T0 + 600)
    source = ScriptedSource([ScriptedConnection([_live(_bar("IWM", 10))])])
    source.backfill_error = FeedUnavailable("fake", "REST HTTP 503")
    loop, stats = _loop(source, clock, warmup_s=300.0)
    out = Collector()
    with structlog.testing.capture_logs() as logs:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(loop.run(out))
            await wait_until(lambda: stats.bars == 1)
            task.cancel()
    assert stats.backfill_errors == 1
    assert any(e["event"] == "feed.backfill_failed" and e["gap_s"] == 300 for e in logs)


async def test_held_live_bars_are_bounded_and_overflow_is_counted() -> None:
    clock = FakeClock(T0 + 6000)
    live = [_live(_bar("IWM", m)) for m in range(50)]
    source = ScriptedSource([ScriptedConnection(live)])
    source.release.clear()
    loop, stats = _loop(
        source, clock, policy=ReconnectPolicy(backfill_buffer_bars=10), warmup_s=60.0
    )
    out = Collector()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(loop.run(out))
        await wait_until(lambda: stats.frames == 50)
        source.release.set()
        await wait_until(lambda: stats.bars == 10)
        task.cancel()
    assert stats.rejected["buffer_overflow"] == 40
    assert out.pairs() == [("IWM", T0 + 60 * m) for m in range(40, 50)]


async def test_accept_then_close_does_not_storm() -> None:
    """A server that completes the handshake and hangs up at once gets ever longer delays."""
    clock = FakeClock(T0)
    policy = ReconnectPolicy(backoff_initial_s=1.0, backoff_max_s=60.0, stable_after_s=5.0)
    source = ScriptedSource([])  # every connection ends at once
    loop, stats = _loop(source, clock, policy=policy)
    window = clock.passed(T0 + 600)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(loop.run(Collector()))
        await window.wait()
        task.cancel()
    # 10 minutes of fake time: full jitter on 1, 2, 4 ... 60 s averages well under 30 attempts.
    assert stats.connects == stats.attempts
    assert stats.attempts <= 30
    assert max(clock.slept) <= 60.0


async def test_a_stable_session_resets_the_backoff() -> None:
    clock = FakeClock(T0)
    policy = ReconnectPolicy(backoff_initial_s=1.0, backoff_max_s=60.0, stable_after_s=5.0)

    class Lives(ScriptedConnection):
        async def receive(self) -> Received:
            await clock.sleep(30.0)  # a healthy half minute, then the server goes away
            raise FeedUnavailable("fake", "server restart")

    short = [ScriptedConnection(end=FeedUnavailable("fake", "drop")) for _ in range(6)]
    source = ScriptedSource([*short, Lives(), ScriptedConnection(end=FeedUnavailable("fake", "x"))])
    loop, stats = _loop(source, clock, policy=policy, rand=1.0)  # no jitter: the ceilings
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(loop.run(Collector()))
        await wait_until(lambda: stats.reconnects >= 8)
        task.cancel()
    delays = [d for d in clock.slept if d != 30.0]
    assert delays[:8] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 1.0, 2.0]


async def test_auth_failures_become_fatal_after_n_tries() -> None:
    clock = FakeClock(T0)
    refused = [
        ScriptedConnection(enter_error=FeedAuthFailed("fake", "server error 402 (auth failed)"))
        for _ in range(5)
    ]
    source = ScriptedSource(refused)
    loop, stats = _loop(source, clock, policy=ReconnectPolicy(max_auth_failures=3))
    with structlog.testing.capture_logs() as logs, pytest.raises(FeedFatal, match="3 consecutive"):
        await loop.run(Collector())
    assert stats.attempts == 3
    fatal = [e for e in logs if e["event"] == "feed.fatal"]
    assert len(fatal) == 1 and "auth failed" in fatal[0]["reason"]


async def test_a_bug_propagates_unchanged() -> None:
    clock = FakeClock(T0)
    source = ScriptedSource([ScriptedConnection(enter_error=KeyError("oops"))])
    loop, _ = _loop(source, clock)
    with pytest.raises(KeyError):
        await loop.run(Collector())


async def test_throttled_waits_at_least_the_floor_and_the_servers_hint() -> None:
    clock = FakeClock(T0)
    policy = ReconnectPolicy(throttled_min_s=60.0, throttled_initial_s=90.0, throttled_max_s=900.0)
    errors = [FeedThrottled("fake", "406"), FeedThrottled("fake", "429", retry_after_s=500.0)]
    source = ScriptedSource([ScriptedConnection(enter_error=e) for e in errors])
    source.connections.append(ScriptedConnection(enter_error=FeedFatal("fake", "stop")))
    loop, _ = _loop(source, clock, policy=policy)
    with pytest.raises(FeedFatal):
        await loop.run(Collector())
    assert 60.0 <= clock.slept[0] <= 90.0
    assert clock.slept[1] >= 500.0


async def test_silence_watchdog_only_while_the_market_is_open() -> None:
    for market_open in (True, False):
        clock = FakeClock(T0)
        source = ScriptedSource([ScriptedConnection([_live(_bar("IWM", 0))])])
        loop, stats = _loop(source, clock, silence_timeout_s=120.0, market_open=market_open)
        window = clock.passed(T0 + 1200)
        with structlog.testing.capture_logs() as logs:
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(loop.run(Collector()))
                await window.wait()
                task.cancel()
        silences = [e for e in logs if e["event"] == "feed.silence"]
        if market_open:
            assert stats.silences >= 1 and silences
            assert 120.0 <= silences[0]["quiet_s"] <= 150.0
        else:
            assert stats.silences == 0 and not silences
            assert stats.attempts == 1


def test_frame_rejected_is_counted_by_reason() -> None:
    exc = FrameRejected("f", "frame_too_big", "a message exceeded 1024 bytes")
    assert isinstance(exc, FeedUnavailable) and exc.reason == "frame_too_big"
