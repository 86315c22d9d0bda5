"""Test kit for feeds: a fake clock, bar frames, a collector, and a runner with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import polars as pl

from daemon.feeds.alpaca import AlpacaFeed
from daemon.feeds.base import FeedBatch
from daemon.feeds.reconnect import ReconnectPolicy
from daemon.feeds.replay import frame_from_rows

T0 = 1_704_205_800  # 2024-01-02 14:30:00 UTC, the first minute of a regular session
SYMBOLS = ("IWM", "SPY", "QQQ")
KEY = "PKTESTKEY0123456789"
SECRET = "sEcReT-0123456789-abcdefghij"


def make_frame(minutes: int, symbols: tuple[str, ...] = SYMBOLS, start: int = T0) -> pl.DataFrame:
    """A deterministic, valid minute-bar frame: `minutes` minutes of every symbol."""
    rows = []
    for i in range(minutes):
        for j, symbol in enumerate(symbols):
            base = 100.0 + 50.0 * j + 0.25 * i
            rows.append(
                (symbol, start + 60 * i, base, base + 1.0, base - 1.0, base + 0.5, 1000.0 + i)
            )
    return frame_from_rows(rows)


def keys_of(frame: pl.DataFrame) -> set[tuple[str, int]]:
    """The (symbol, time) pairs of a frame."""
    return set(zip(frame["symbol"].to_list(), frame["time"].to_list(), strict=True))


class FakeClock:
    """Wall-clock time that moves only when someone sleeps.

    `sleep` advances the clock at once and yields briefly for real, so network
    I/O still makes progress. `slept` records every requested delay;
    `passed(t)` is an event set once the clock reaches `t`.
    """

    def __init__(self, start: float) -> None:
        self.t = start
        self.slept: list[float] = []
        self._marks: list[tuple[float, asyncio.Event]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.t += max(0.0, delay)
        for mark, event in self._marks:
            if self.t >= mark:
                event.set()
        await asyncio.sleep(0.002)

    def passed(self, t: float) -> asyncio.Event:
        event = asyncio.Event()
        if self.t >= t:
            event.set()
        self._marks.append((t, event))
        return event


@dataclass
class Collector:
    """The `emit` callback: keeps every batch."""

    batches: list[FeedBatch] = field(default_factory=list)

    def __call__(self, batch: FeedBatch) -> None:
        self.batches.append(batch)

    def pairs(self, *kinds: str) -> list[tuple[str, int]]:
        """(symbol, time) of every emitted bar of these kinds (all kinds if none), in order."""
        return [
            (bar.symbol, bar.time)
            for batch in self.batches
            if not kinds or batch.kind in kinds
            for bar in batch.bars
        ]


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 4.0) -> None:
    """Poll `predicate` every 5 ms (real time) until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.005)


FAST = ReconnectPolicy(
    backoff_initial_s=0.01,
    backoff_max_s=0.05,
    throttled_min_s=0.05,
    throttled_initial_s=0.1,
    throttled_max_s=0.2,
    stable_after_s=10.0,
)
"""Real-time-friendly delays for tests that use the real clock."""


def never_open(epoch_s: float) -> bool:
    """`is_market_open` for tests that do not want the silence watchdog."""
    return False


def always_open(epoch_s: float) -> bool:
    """`is_market_open` for tests of the silence watchdog."""
    return True


@asynccontextmanager
async def running(feed: AlpacaFeed) -> AsyncIterator[Collector]:
    """Run `feed` in a task group while the block runs; cancel it after."""
    collector = Collector()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(feed.run(collector), name="feed-under-test")
        try:
            yield collector
        finally:
            task.cancel()
