"""The bot's command menu (`setMyCommands`), published in the background, best-effort.

The menu is a nicety: a Bot API that fails to take it (5xx, timeout,
network, 429) must not keep the bot from starting. `CommandMenu.start`
publishes it in a task that retries with capped, jittered backoff
(`daemon.retry.RetryPolicy`) until Telegram takes it or `stop` cancels the
task. The first failure is one warning; later ones are debug lines, and
success after failures is an info line. A 400 means the menu itself is
wrong: retrying cannot fix it, so the task ends with an error line.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence

import structlog
from telegram import Bot, BotCommand
from telegram.error import BadRequest, RetryAfter, TelegramError

from daemon.logs import redact
from daemon.retry import RetryPolicy
from daemon.telegram.sink import retry_after_s
from daemon.telegram.start import describe

_log = structlog.get_logger(__name__)


MENU_RETRY = RetryPolicy(base_s=5.0, cap_s=600.0, jitter=0.25)
"""Between tries: 5 s doubling up to 10 minutes, less up to a quarter of itself."""


class CommandMenu:
    """Publishes `commands` through `bot` until it sticks: `start()`, later `await stop()`.

    Retries as `retry` says; a longer 429 `retry_after` is honoured.
    """

    def __init__(
        self,
        bot: Bot,
        commands: Sequence[BotCommand],
        *,
        retry: RetryPolicy = MENU_RETRY,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._bot = bot
        self._commands = list(commands)
        self._retry = retry
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self.published = False
        self.attempts = 0

    def __repr__(self) -> str:
        # Never the bot: its repr carries the token.
        return f"CommandMenu(published={self.published}, attempts={self.attempts})"

    def start(self) -> None:
        """Publish in the background (a task of the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._publish(), name="telegram-menu")

    async def stop(self) -> None:
        """Cancel the publishing if it is still at it, and wait for the task to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # `wait`, not `await task`: a cancellation of our caller still reaches our caller.
        await asyncio.wait([task])
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("telegram.menu_crashed", error=redact(f"{type(exc).__name__}: {exc}"))

    async def wait(self) -> None:
        """Until the task has ended (published, refused or stopped); for tests."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def _publish(self) -> None:
        while True:
            self.attempts += 1
            wait_s: float | None = None
            try:
                await self._bot.set_my_commands(self._commands)
            except BadRequest as exc:  # subclasses NetworkError: caught before it
                _log.error("telegram.menu_refused", error=describe(exc))
                return
            except RetryAfter as exc:
                wait_s, detail = retry_after_s(exc), describe(exc)
            except TelegramError as exc:
                detail = describe(exc)
            else:
                self.published = True
                if self.attempts > 1:
                    _log.info("telegram.menu_set", attempts=self.attempts)
                return
            delay = self._retry.delay_s(self.attempts, self._rng.random, retry_after_s=wait_s)
            if self.attempts == 1:
                _log.warning("telegram.menu_failed", error=detail, retry_in_s=round(delay, 3))
            else:
                _log.debug(
                    "telegram.menu_failed",
                    error=detail,
                    attempt=self.attempts,
                    retry_in_s=round(delay, 3),
                )
            await self._sleep(delay)
