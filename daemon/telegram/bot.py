"""The Telegram bot, embedded in the daemon's event loop (never `run_polling`).

`TelegramBot` is an async context manager and a `Sink` (name "telegram"):
entering opens the subscriber store (when given a path), builds the PTB
`Application` (the token revealed only into its builder), initialises it
(`getMe`), publishes the command menu, starts it and starts long polling,
all as tasks of the running loop; leaving stops the updater, the
application, shuts it down, then closes the store, in that order. `send`
goes through `TelegramSink` on the same bot. No I/O in the constructor, so
it can be built with the other sinks:

    TelegramBot(config.sinks.telegram, secrets.require(TELEGRAM_BOT_TOKEN), backend,
                config.state.dir / "telegram.sqlite",
                benchmark=config.engine.benchmark, comparator=config.engine.comparator)
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import structlog
from telegram import Bot, Update
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import Application, ContextTypes, ExtBot
from telegram.request import HTTPXRequest

from daemon.config import TelegramSinkSettings
from daemon.logs import redact, register_secret
from daemon.secrets import Secret
from daemon.sinks.base import SinkUnavailable
from daemon.sinks.render import render_html, render_text
from daemon.telegram.backend import BotBackend
from daemon.telegram.commands import Access, Commands
from daemon.telegram.sink import TelegramSink
from daemon.telegram.subscribers import SubscriberStore
from signals.alerts import Alert

_log = structlog.get_logger(__name__)

# What `Application.builder()...job_queue(None).build()` makes.
_App = Application[
    ExtBot[None], ContextTypes.DEFAULT_TYPE, dict[Any, Any], dict[Any, Any], dict[Any, Any], None
]


class TelegramStartError(RuntimeError):
    """The bot could not start: token refused or Bot API unreachable. Never carries the token."""


def file_url_for(api_base_url: str) -> str:
    """The Bot API file URL that goes with `api_base_url` (`.../bot` -> `.../file/bot`)."""
    base = api_base_url.rstrip("/")
    if base.endswith("/bot"):
        return base[: -len("bot")] + "file/bot"
    return base + "/file/bot"


class TelegramBot:
    """Commands in (long polling), alerts out (`send`), through one PTB `Application`.

    `store` is an open `SubscriberStore` (the caller closes it) or a path to
    open one at (this bot closes it). `benchmark` / `comparator` name what an
    alert's relative-strength figures were measured against.
    `poll_timeout_s` is the getUpdates long-poll timeout; `send_timeout_s` the
    read timeout of a send (past it an alert counts as maybe delivered);
    `start_attempts` how often to try reaching the Bot API at start-up, each
    `start_backoff_s` apart (doubling), before giving up with
    `TelegramStartError`. A refused token fails at once.
    """

    name = "telegram"

    def __init__(
        self,
        settings: TelegramSinkSettings,
        token: Secret,
        backend: BotBackend,
        store: SubscriberStore | str | os.PathLike[str],
        *,
        benchmark: str = "SPY",
        comparator: str = "QQQ",
        poll_timeout_s: float = 10.0,
        send_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        start_attempts: int = 3,
        start_backoff_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if start_attempts < 1:
            raise ValueError("start_attempts must be >= 1")
        self._settings = settings
        self._token = token
        self._store_arg = store
        self._backend = backend
        self._clock = clock
        self._render = (
            functools.partial(render_html, benchmark=benchmark, comparator=comparator),
            functools.partial(render_text, benchmark=benchmark, comparator=comparator),
        )
        self._poll_timeout_s = poll_timeout_s
        self._send_timeout_s = send_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._start_attempts = start_attempts
        self._start_backoff_s = start_backoff_s
        self._store: SubscriberStore | None = None
        self._app: _App | None = None
        self._sink: TelegramSink | None = None
        self._stack: AsyncExitStack | None = None
        self._requests: tuple[HTTPXRequest, ...] = ()

    def __repr__(self) -> str:
        # Never PTB's objects: a Bot's repr carries the token.
        return f"TelegramBot(api={self._settings.api_base_url!r})"

    @property
    def bot(self) -> Bot:
        """The initialised PTB bot (inside the context only)."""
        if self._app is None:
            raise RuntimeError("TelegramBot is not running: use it as an async context manager")
        return self._app.bot

    @property
    def store(self) -> SubscriberStore:
        """The subscriber store (inside the context only)."""
        if self._store is None:
            raise RuntimeError("TelegramBot is not running: use it as an async context manager")
        return self._store

    async def send(self, alert: Alert) -> None:
        """Deliver `alert` to the subscribers (see `TelegramSink.send`)."""
        if self._sink is None:
            raise SinkUnavailable(self.name, "the bot is not running")
        await self._sink.send(alert)

    def _build(self, store: SubscriberStore) -> _App:
        request = HTTPXRequest(
            connection_pool_size=32,
            read_timeout=self._send_timeout_s,
            write_timeout=self._send_timeout_s,
            connect_timeout=self._connect_timeout_s,
            pool_timeout=self._send_timeout_s,
        )
        # getUpdates adds its long-poll timeout to this read timeout.
        polling = HTTPXRequest(
            connection_pool_size=1,
            read_timeout=5.0,
            connect_timeout=self._connect_timeout_s,
        )
        self._requests = (request, polling)
        app = (
            Application.builder()
            .token(self._token.reveal())
            .base_url(self._settings.api_base_url)
            .base_file_url(file_url_for(self._settings.api_base_url))
            .request(request)
            .get_updates_request(polling)
            .job_queue(None)
            .build()
        )
        access = Access(
            self._settings.access,
            frozenset(self._settings.allowed_user_ids),
            frozenset(self._settings.admin_user_ids),
        )
        commands = Commands(store, self._backend, access, clock=self._clock)
        app.add_handlers(commands.handlers())
        app.add_error_handler(_on_handler_error)
        return app

    async def __aenter__(self) -> Self:
        register_secret(self._token)  # whatever logging setup is in place, it hides the token
        async with AsyncExitStack() as stack:
            if isinstance(self._store_arg, SubscriberStore):
                store = self._store_arg
            else:
                store = stack.enter_context(SubscriberStore.open(self._store_arg))
            app = self._build(store)
            await self._initialize(app)
            stack.push_async_callback(app.shutdown)
            await app.bot.set_my_commands(Commands.bot_commands())
            await app.start()
            stack.push_async_callback(app.stop)
            updater = app.updater
            assert updater is not None  # the builder makes one unless told not to
            await updater.start_polling(
                timeout=timedelta(seconds=self._poll_timeout_s),
                bootstrap_retries=self._start_attempts - 1,
                allowed_updates=[Update.MESSAGE],
                drop_pending_updates=False,  # a /mute sent while we were down still counts
                error_callback=_on_poll_error,
            )
            stack.push_async_callback(updater.stop)
            self._sink = TelegramSink(
                app.bot,
                store,
                rate_per_chat_s=self._settings.rate_per_chat_s,
                rate_global_per_s=self._settings.rate_global_per_s,
                send_timeout_s=self._send_timeout_s,
                render_html=self._render[0],
                render_text=self._render[1],
            )
            self._app, self._store, self._stack = app, store, stack.pop_all()
        _log.info("telegram.started", username=app.bot.username)
        return self

    async def _initialize(self, app: _App) -> None:
        delay = self._start_backoff_s
        for attempt in range(1, self._start_attempts + 1):
            try:
                await app.initialize()
                return
            except InvalidToken:
                # PTB's message quotes the token: nothing of it goes into ours.
                failure = "the Bot API refused the bot token (check TELEGRAM_BOT_TOKEN)"
                break
            except NetworkError as exc:
                detail = redact(f"{type(exc).__name__}: {exc.message}")
                failure = f"cannot reach the Bot API after {attempt} attempts: {detail}"
                if attempt == self._start_attempts:
                    break
                _log.warning("telegram.start_failed", attempt=attempt, error=detail)
            await asyncio.sleep(delay)
            delay *= 2
        # Raised outside the `except`: no chained PTB exception (and its message) rides along.
        for request in self._requests:
            await request.shutdown()
        raise TelegramStartError(f"telegram: {failure}")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack, self._app, self._sink, self._store = self._stack, None, None, None, None
        if stack is not None:
            await stack.aclose()  # updater.stop, app.stop, app.shutdown, store.close
            _log.info("telegram.stopped")


async def _on_handler_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    error = context.error
    _log.error(
        "telegram.handler_failed",
        error=type(error).__name__,
        detail=redact(str(error)),
        exc_info=error,
    )


def _on_poll_error(exc: TelegramError) -> None:
    _log.warning("telegram.poll_failed", error=redact(f"{type(exc).__name__}: {exc.message}"))
