"""Send pacing on virtual time: per-chat gaps, the global rate, pauses, and order."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Coroutine
from typing import Any

import pytest

from daemon.telegram.ratelimit import RateLimiter, TokenBucket


class VirtualTime:
    """A clock that jumps to the next sleeper's deadline once every task is blocked."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    async def run(self, *coros: Coroutine[Any, Any, None]) -> None:
        """Run `coros` to the end on virtual time."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        while not all(t.done() for t in tasks):
            for _ in range(10):  # let every woken task run until it blocks again
                await asyncio.sleep(0)
            if self._sleepers:
                self.now, _, future = heapq.heappop(self._sleepers)
                future.set_result(None)
        await asyncio.gather(*tasks)


def test_bucket_hands_out_slots_at_the_rate() -> None:
    t = VirtualTime()
    bucket = TokenBucket(2.0, clock=t, sleep=t.sleep)
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.5, 1.0, 1.5]
    t.now = 10.0
    assert bucket.idle()
    assert bucket.reserve() == 0.0


def test_burst_is_saved_up_and_pause_holds_everything() -> None:
    t = VirtualTime()
    bucket = TokenBucket(1.0, burst=3, clock=t, sleep=t.sleep)
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.0, 1.0]
    t.now = 10.0
    bucket.pause(5.0)
    assert bucket.reserve() == pytest.approx(5.0)
    assert not bucket.idle()


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0.0)
    with pytest.raises(ValueError):
        TokenBucket(1.0, burst=0)
    with pytest.raises(ValueError):
        RateLimiter(per_chat_s=0.0)


async def test_limiter_keeps_each_chat_a_second_apart_and_thirty_a_second_overall() -> None:
    t = VirtualTime()
    limiter = RateLimiter(1.0, 30.0, clock=t, sleep=t.sleep)
    sent: list[tuple[float, int]] = []

    async def send(chat: int, n: int) -> None:
        for _ in range(n):
            await limiter.acquire(chat)
            sent.append((t.now, chat))

    await t.run(*(send(chat, 3) for chat in range(60)))
    per_chat: dict[int, list[float]] = {}
    for at, chat in sent:
        per_chat.setdefault(chat, []).append(at)
    for times in per_chat.values():
        assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))
    stamps = sorted(at for at, _ in sent)
    for i, start in enumerate(stamps):
        window = [s for s in stamps[i:] if s < start + 1.0]
        assert len(window) <= 31  # 30 a second, plus the one on the edge


async def test_pause_holds_a_chat_or_everyone() -> None:
    t = VirtualTime()
    limiter = RateLimiter(0.1, 100.0, clock=t, sleep=t.sleep)
    limiter.pause(2.0, chat_id=1)
    await t.run(limiter.acquire(2))
    assert t.now < 0.1
    await t.run(limiter.acquire(1))
    assert t.now == pytest.approx(2.0)
    limiter.pause(3.0)
    await t.run(limiter.acquire(3))
    assert t.now == pytest.approx(5.0)


async def test_idle_chats_are_forgotten_beyond_max_chats() -> None:
    t = VirtualTime()
    limiter = RateLimiter(1.0, 1000.0, clock=t, sleep=t.sleep, max_chats=10)
    await t.run(*(limiter.acquire(chat) for chat in range(10)))
    assert len(limiter) == 10
    t.now += 5.0
    await t.run(limiter.acquire(99))
    assert len(limiter) == 1
