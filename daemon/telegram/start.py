"""Reaching the Bot API at start-up: a few quick tries, and what a failure means.

`StartTries.call` runs one start-up call (getMe, deleteWebhook) and retries
it on anything transient, sharing one budget of `attempts` across the whole
start, so a start never takes more than `attempts` tries. What it raises
carries no PTB exception (as `__cause__` or `__context__`): PTB's messages
can quote the token.

- `TelegramAuthError`: the Bot API refused the token (401, or 404 for a
  malformed one: PTB's `InvalidToken`). Raised at once; retrying cannot help.
- `TelegramStartError`: anything else (network errors, timeouts, 5xx, 429):
  raised after the last try, or at once when Telegram asks for a longer
  wait (429 `retry_after`) than the backoff cap. The caller may try the
  whole start again later.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import structlog
from telegram.error import InvalidToken, RetryAfter, TelegramError

from daemon.logs import redact
from daemon.retry import RetryPolicy
from daemon.telegram.sink import retry_after_s

_log = structlog.get_logger(__name__)

T = TypeVar("T")

AUTH_MESSAGE: Final = "telegram: the Bot API refused the bot token (check TELEGRAM_BOT_TOKEN)"
_SPACE = re.compile(r"\s+")


class TelegramStartError(RuntimeError):
    """The bot could not start; trying again later may work. Never carries the token.

    `call` is the Bot API method that failed (`getMe`, `deleteWebhook`...),
    `retry_after_s` how long Telegram asked us to wait (429), if it did.
    """

    def __init__(self, message: str, *, call: str = "", retry_after_s: float | None = None):
        super().__init__(message)
        self.call = call
        self.retry_after_s = retry_after_s


class TelegramAuthError(TelegramStartError):
    """The Bot API refused the bot token: retrying will not help (a fatal exit)."""

    def __init__(self, message: str = AUTH_MESSAGE, *, call: str = "getMe") -> None:
        super().__init__(message, call=call)


def describe(exc: TelegramError) -> str:
    """`exc` as one redacted line: its type and Telegram's description."""
    return _SPACE.sub(" ", redact(f"{type(exc).__name__}: {exc.message}")).strip()


@dataclass
class StartTries:
    """At most `attempts` tries over a whole start, `backoff_s` apart (doubling, capped at
    `backoff_max_s`, less up to `jitter` of itself at random: a `RetryPolicy`)."""

    attempts: int
    backoff_s: float
    backoff_max_s: float
    jitter: float = 0.25
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    failures: int = 0
    _retry: RetryPolicy = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Telegram's wait is honoured uncapped here: one longer than the cap ends the start.
        self._retry = RetryPolicy(
            base_s=self.backoff_s, cap_s=self.backoff_max_s, jitter=self.jitter
        )

    async def call(self, name: str, action: Callable[[], Awaitable[T]]) -> T:
        """`await action()`, retried; `name` is the Bot API method, for the messages."""
        while True:
            refused, detail = False, ""
            wait_s: float | None = None
            try:
                return await action()
            except InvalidToken:
                refused = True
            except RetryAfter as exc:
                wait_s, detail = retry_after_s(exc), describe(exc)
            except TelegramError as exc:
                detail = describe(exc)
            # Raised outside the `except`: no PTB exception (nor its message) rides along.
            if refused:
                raise TelegramAuthError(call=name)
            self.failures += 1
            delay = self._retry.delay_s(self.failures, self.rng.random, retry_after_s=wait_s)
            if self.failures >= self.attempts or delay > self.backoff_max_s:
                tries = f"{self.failures} {'try' if self.failures == 1 else 'tries'}"
                raise TelegramStartError(
                    f"telegram: {name} failed ({tries}): {detail}",
                    call=name,
                    retry_after_s=wait_s,
                )
            _log.warning(
                "telegram.start_failed",
                call=name,
                attempt=self.failures,
                error=detail,
                retry_in_s=round(delay, 3),
            )
            await self.sleep(delay)
