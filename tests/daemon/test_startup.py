"""`daemon.startup`: retrying a start-up call, supervising a sink, what is fatal."""

from __future__ import annotations

import asyncio
import random
from types import TracebackType
from typing import Self, cast

import pytest

from daemon.fatal import ExitCode, Fatal, find_fatal
from daemon.feeds.base import FeedAuthFailed, FeedFatal, FeedForbidden, FeedUnavailable
from daemon.health import Snapshot, Startup, health_report
from daemon.retry import RetryPolicy
from daemon.sinks.base import SinkAuthFailed, SinkUnavailable
from daemon.startup import (
    Dependency,
    SupervisedSink,
    Waits,
    feed_fatal,
    keep_trying,
    sink_fatal,
)
from daemon.telegram.start import TelegramAuthError
from signals.alerts import Alert


class _Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_keep_trying_retries_with_capped_backoff_and_says_why() -> None:
    calls: list[int] = []
    changes: list[str] = []
    waits = Waits()
    waits.on_change = lambda: changes.append(waits.summary())

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 8:
            raise FeedUnavailable("alpaca", "REST ConnectError")
        return "history"

    sleep = _Sleeps()
    got = await Dependency(
        what="feed warm-up", waits=waits, fatal=feed_fatal,
        backoff=RetryPolicy(base_s=1.0, cap_s=8.0, jitter=0.0), sleep=sleep,
    ).until_answered(flaky)  # fmt: skip
    assert got == "history" and len(calls) == 8
    assert sleep.delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    # One change when it started waiting (same reason after), one when it answered.
    assert changes == ["waiting for feed warm-up (FeedUnavailable: alpaca: REST ConnectError)", ""]
    assert not waits and "feed warm-up" not in waits


async def test_keep_trying_jitter_stays_within_half_of_the_delay() -> None:
    sleep = _Sleeps()
    attempts = iter(range(30))

    async def fails_29_times() -> None:
        if next(attempts) < 29:
            raise OSError("no route")

    await Dependency(
        what="x", waits=Waits(), fatal=lambda e: None,
        backoff=RetryPolicy(base_s=1.0, cap_s=30.0, jitter=0.5), sleep=sleep,
        rng=random.Random(1),
    ).until_answered(fails_29_times)  # fmt: skip
    assert all(0 < d <= 30.0 for d in sleep.delays)
    assert all(d >= 15.0 for d in sleep.delays[6:])  # capped at 30, less up to half
    assert len(set(sleep.delays)) > 20  # jittered, not in lockstep


async def test_keep_trying_bounds_each_try() -> None:
    sleep = _Sleeps()
    tries: list[int] = []

    async def hangs_once() -> int:
        tries.append(1)
        if len(tries) == 1:
            await asyncio.sleep(3600)
        return 7

    waits = Waits()
    assert await Dependency(
        what="x", waits=waits, fatal=lambda e: None, attempt_timeout_s=0.05, sleep=sleep,
    ).until_answered(hangs_once) == 7  # fmt: skip
    assert len(tries) == 2 and len(sleep.delays) == 1


async def test_a_fatal_error_ends_at_once_without_its_cause() -> None:
    async def refused() -> None:
        raise FeedAuthFailed("alpaca", "REST HTTP 401 unauthorized.")

    with pytest.raises(Fatal) as end:
        await keep_trying(refused, what="feed warm-up", waits=Waits(), fatal=feed_fatal)
    assert end.value.code == ExitCode.CREDENTIALS
    assert str(end.value) == (
        "alpaca: the provider refused the credentials (REST HTTP 401 unauthorized.): "
        "check ALPACA_API_KEY and ALPACA_API_SECRET"
    )
    assert end.value.__cause__ is None and end.value.__suppress_context__


def test_what_is_fatal() -> None:
    forbidden = feed_fatal(FeedForbidden("massive", "REST HTTP 403 NOT_AUTHORIZED"))
    assert forbidden is not None and forbidden.code == ExitCode.CREDENTIALS
    assert "check MASSIVE_API_KEY (and that the plan covers this data)" in str(forbidden)
    try:
        raise FeedFatal("finnhub", "x (3 consecutive authentication failures)") from (
            FeedAuthFailed("finnhub", "401")
        )
    except FeedFatal as exc:
        after_retries = feed_fatal(exc)
    assert after_retries is not None and "check FINNHUB_API_KEY" in str(after_retries)
    plan = feed_fatal(FeedFatal("alpaca", "server error 409 (insufficient subscription)"))
    assert plan is not None and plan.code == ExitCode.FEED_GAVE_UP
    assert feed_fatal(FeedUnavailable("alpaca", "down")) is None
    assert feed_fatal(ValueError("a bug")) is None
    bot = sink_fatal(TelegramAuthError("telegram: the Bot API refused the bot token (check X)"))
    assert bot is not None and bot.code == ExitCode.CREDENTIALS
    assert sink_fatal(SinkAuthFailed("mqtt", "refused")) is not None
    assert sink_fatal(SinkUnavailable("mqtt", "down")) is None


def test_find_fatal_only_when_nothing_else_failed() -> None:
    end = Fatal("x", ExitCode.LOCAL)
    assert find_fatal(ExceptionGroup("g", [ExceptionGroup("h", [end])])) is end
    assert find_fatal(ExceptionGroup("g", [end, ValueError("a bug")])) is None


class _Sink:
    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.entered = self.exited = 0
        self.sent: list[str] = []

    async def __aenter__(self) -> Self:
        if self.failures:
            self.failures -= 1
            raise OSError("the peer is down")
        self.entered += 1
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.exited += 1

    async def send(self, alert: Alert) -> None:
        self.sent.append(alert.id)


async def test_supervised_sink_is_unavailable_until_it_starts_then_closes_at_shutdown() -> None:
    inner, waits = _Sink(failures=3), Waits()
    ups: list[int] = []
    sink = SupervisedSink(inner, waits, backoff=RetryPolicy(base_s=0.01, cap_s=0.02, jitter=0.5))
    sink.on_up = lambda: ups.append(1)
    closing = asyncio.Event()
    task = asyncio.create_task(sink.run(closing))
    alert = cast(Alert, object())  # never looked at: the sink is not up
    with pytest.raises(SinkUnavailable):
        await sink.send(alert)
    async with asyncio.timeout(5):
        while not sink.up:
            await asyncio.sleep(0.005)
    assert sink.start_failures == 3 and ups == [1] and not waits
    closing.set()
    await task
    assert inner.entered == 1 and inner.exited == 1 and not sink.up


def test_healthz_while_starting() -> None:
    snap = Snapshot(
        now=1000.0, feed=None, ingest=None,
        startup=Startup(waiting={"feed warm-up": "FeedUnavailable: alpaca: REST ConnectError"},
                        feed_started_at=None),
    )  # fmt: skip
    status, body = health_report(snap)
    assert status == 503 and body["status"] == "starting"
    assert body["waiting"] == {"feed warm-up": "FeedUnavailable: alpaca: REST ConnectError"}
    assert body["reasons"] == [
        "waiting for feed warm-up: FeedUnavailable: alpaca: REST ConnectError"
    ]
