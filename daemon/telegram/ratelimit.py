"""Send pacing for the Bot API: at most one message a second per chat, thirty overall.

`TokenBucket` is the generic cell rate algorithm: each `acquire` reserves the
next free slot and sleeps until it, so waiters go in the order they asked and
no lock is needed. `pause` pushes every later slot past a deadline (a 429's
`retry_after`). Clock and sleep are injectable so tests run on virtual time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """`rate_per_s` tokens a second, up to `burst` saved up; `acquire` waits for one."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int = 1,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"need rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self._interval = 1.0 / rate_per_s
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        # The theoretical arrival time of the next request (GCRA): slots are free from
        # `_tat - _tolerance` on.
        self._tat = clock()

    def reserve(self) -> float:
        """Take the next slot; returns how long to wait for it (0: now)."""
        now = self._clock()
        tat = max(self._tat, now)
        self._tat = tat + self._interval
        return max(0.0, tat - self._tolerance - now)

    async def acquire(self) -> None:
        """Wait for a slot."""
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)

    def pause(self, seconds: float) -> None:
        """No slot before `seconds` from now (slots already handed out stand)."""
        self._tat = max(self._tat, self._clock() + seconds + self._tolerance)

    def idle(self) -> bool:
        """Whether the bucket is full again, i.e. as good as a fresh one."""
        return self._tat <= self._clock()


class RateLimiter:
    """One bucket per chat (`per_chat_s` apart) behind one global bucket (`global_per_s`).

    Buckets of idle chats are dropped once there are more than `max_chats`,
    so memory stays bounded however many chats come and go.
    """

    def __init__(
        self,
        per_chat_s: float = 1.0,
        global_per_s: float = 30.0,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        max_chats: int = 10_000,
    ) -> None:
        if per_chat_s <= 0 or global_per_s <= 0:
            raise ValueError("per_chat_s and global_per_s must be > 0")
        self._per_chat_rate = 1.0 / per_chat_s
        self._clock = clock
        self._sleep = sleep
        self._max_chats = max_chats
        self._global = TokenBucket(global_per_s, clock=clock, sleep=sleep)
        self._chats: dict[int, TokenBucket] = {}

    def _bucket(self, chat_id: int) -> TokenBucket:
        bucket = self._chats.get(chat_id)
        if bucket is None:
            if len(self._chats) >= self._max_chats:
                self._chats = {c: b for c, b in self._chats.items() if not b.idle()}
            bucket = TokenBucket(self._per_chat_rate, clock=self._clock, sleep=self._sleep)
            self._chats[chat_id] = bucket
        return bucket

    def __len__(self) -> int:
        """How many chats have a bucket."""
        return len(self._chats)

    async def acquire(self, chat_id: int) -> None:
        """Wait until a message to `chat_id` is within both limits."""
        # The chat's turn first: its wait can be long, and a global slot taken
        # before it would sit unused while other chats queue behind it.
        await self._bucket(chat_id).acquire()
        await self._global.acquire()

    def pause(self, seconds: float, chat_id: int | None = None) -> None:
        """Hold `chat_id` (or, with None, every chat) for `seconds`."""
        if chat_id is None:
            self._global.pause(seconds)
        else:
            self._bucket(chat_id).pause(seconds)
