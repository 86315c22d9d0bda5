"""The Telegram bot, embedded in the daemon's event loop (never `run_polling`).

`TelegramBot` is an async context manager and a `Sink` (name "telegram"):
entering opens the subscriber store (when given a path), builds the PTB
`Application` (the token revealed only into its builder), initialises it
(`getMe`), deletes any webhook, starts it and starts long polling, all as
tasks of the running loop, then publishes the command menu in the
background (`menu.py`: best-effort, retried until it sticks); leaving stops
the menu task, the updater, the application, shuts it down, then closes the
store, in that order. `send` goes through `TelegramSink` on the same bot.

A start that fails raises `TelegramAuthError` (token refused: at once) or
`TelegramStartError` (Bot API unreachable, timing out, 5xx, 429: after
`start_attempts` quick tries), both from `start.py` and both without a
chained PTB exception, having closed whatever it had opened: the same
object can be entered again later. Failures of getUpdates once polling has
started are PTB's to retry (forever, logged as `telegram.poll_failed`).
No I/O in the constructor, so it can be built with the other sinks:

    TelegramBot(config.sinks.telegram, secrets.require(TELEGRAM_BOT_TOKEN), backend,
                config.state.dir / "telegram.sqlite",
                BotOptions(benchmark=config.engine.benchmark, comparator=config.engine.comparator))
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import structlog
from telegram import Bot, Update
from telegram.error import TelegramError
from telegram.ext import Application, ContextTypes, ExtBot
from telegram.request import HTTPXRequest

from daemon.config import TelegramSinkSettings
from daemon.logs import redact, register_secret
from daemon.secrets import Secret
from daemon.sinks.base import SinkUnavailable
from daemon.sinks.render import render_html, render_text
from daemon.telegram.backend import BotBackend
from daemon.telegram.chart import render_chart
from daemon.telegram.commands import CHART_BARS, Access, Commands
from daemon.telegram.menu import MENU_RETRY, CommandMenu
from daemon.telegram.sink import TelegramSink, TelegramSinkOptions
from daemon.telegram.start import StartTries, TelegramAuthError, TelegramStartError
from daemon.telegram.subscribers import SubscriberStore
from signals.alerts import Alert

_log = structlog.get_logger(__name__)

# What `Application.builder()...job_queue(None).build()` makes.
_App = Application[
    ExtBot[None], ContextTypes.DEFAULT_TYPE, dict[Any, Any], dict[Any, Any], dict[Any, Any], None
]

__all__ = ["BotOptions", "TelegramAuthError", "TelegramBot", "TelegramStartError", "file_url_for"]


def file_url_for(api_base_url: str) -> str:
    """The Bot API file URL that goes with `api_base_url` (`.../bot` -> `.../file/bot`)."""
    base = api_base_url.rstrip("/")
    if base.endswith("/bot"):
        return base[: -len("bot")] + "file/bot"
    return base + "/file/bot"


@dataclass(frozen=True, kw_only=True)
class BotOptions:
    """What alerts are measured against, and how a `TelegramBot` times out and retries.

    `benchmark` / `comparator` name what an alert's relative-strength figures were
    measured against.

    `poll_timeout_s` is the getUpdates long-poll timeout; `send_timeout_s` the
    read timeout of a send (past it an alert counts as maybe delivered);
    `send_attempts` / `send_backoff_s` how often a send retries a chat that
    fails (5xx, network), `send_backoff_s` apart (doubling), before `send`
    raises `SinkUnavailable` for the outbox to retry later;
    `start_attempts` how many tries a start may take in all (getMe,
    deleteWebhook), `start_backoff_s` apart (doubling up to
    `start_backoff_max_s`, jittered), before giving up with
    `TelegramStartError`. A refused token fails at once (`TelegramAuthError`).
    The command menu is retried `menu_retry_s` apart, doubling up to
    `menu_retry_max_s`. `rng` jitters both (tests pass a seeded one).
    """

    benchmark: str = "SPY"
    comparator: str = "QQQ"
    poll_timeout_s: float = 10.0
    send_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    send_attempts: int = 5
    send_backoff_s: float = 1.0
    start_attempts: int = 3
    start_backoff_s: float = 2.0
    start_backoff_max_s: float = 30.0
    menu_retry_s: float = 5.0
    menu_retry_max_s: float = 600.0
    clock: Callable[[], float] = time.time
    rng: random.Random | None = None

    def __post_init__(self) -> None:
        if self.start_attempts < 1 or self.send_attempts < 1:
            raise ValueError("start_attempts and send_attempts must be >= 1")
        backoffs = (
            self.send_backoff_s,
            self.start_backoff_s,
            self.start_backoff_max_s,
            self.menu_retry_s,
            self.menu_retry_max_s,
        )
        if min(backoffs) < 0:
            raise ValueError("backoffs must be >= 0")


class TelegramBot:
    """Commands in (long polling), alerts out (`send`), through one PTB `Application`.

    `store` is an open `SubscriberStore` (the caller closes it) or a path to
    open one at (this bot closes it). `options`: what alerts are measured against,
    timeouts and retries.
    """

    name = "telegram"

    def __init__(
        self,
        settings: TelegramSinkSettings,
        token: Secret,
        backend: BotBackend,
        store: SubscriberStore | str | os.PathLike[str],
        options: BotOptions = BotOptions(),
    ) -> None:
        self._settings = settings
        self._token = token
        self._store_arg = store
        self._backend = backend
        o = options
        self._render = (
            functools.partial(render_html, benchmark=o.benchmark, comparator=o.comparator),
            functools.partial(render_text, benchmark=o.benchmark, comparator=o.comparator),
        )
        self._options = options
        self._menu_retry = replace(
            MENU_RETRY, base_s=options.menu_retry_s, cap_s=options.menu_retry_max_s
        )
        self._rng = options.rng or random.Random()
        self._store: SubscriberStore | None = None
        self._app: _App | None = None
        self._sink: TelegramSink | None = None
        self._menu: CommandMenu | None = None
        self._stack: AsyncExitStack | None = None

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
    def menu(self) -> CommandMenu:
        """The command menu's publisher (inside the context only)."""
        if self._menu is None:
            raise RuntimeError("TelegramBot is not running: use it as an async context manager")
        return self._menu

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

    def _build(self, store: SubscriberStore) -> tuple[_App, tuple[HTTPXRequest, ...]]:
        request = HTTPXRequest(
            connection_pool_size=32,
            read_timeout=self._options.send_timeout_s,
            write_timeout=self._options.send_timeout_s,
            connect_timeout=self._options.connect_timeout_s,
            pool_timeout=self._options.send_timeout_s,
        )
        # getUpdates adds its long-poll timeout to this read timeout.
        polling = HTTPXRequest(
            connection_pool_size=1,
            read_timeout=5.0,
            connect_timeout=self._options.connect_timeout_s,
        )
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
        commands = Commands(store, self._backend, access, clock=self._options.clock)
        app.add_handlers(commands.handlers())
        app.add_error_handler(_on_handler_error)
        return app, (request, polling)

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("TelegramBot is already running")
        register_secret(self._token)  # whatever logging setup is in place, it hides the token
        o = self._options
        tries = StartTries(
            o.start_attempts, o.start_backoff_s, o.start_backoff_max_s, rng=self._rng
        )
        # On any failure (or cancellation) the stack closes what was opened so far.
        async with AsyncExitStack() as stack:
            if isinstance(self._store_arg, SubscriberStore):
                store = self._store_arg
            else:
                store = stack.enter_context(SubscriberStore.open(self._store_arg))
            app, requests = self._build(store)
            for request in requests:  # a failed getMe leaves them open: app.shutdown would not
                stack.push_async_callback(request.shutdown)
            await tries.call("getMe", app.initialize)
            stack.push_async_callback(app.shutdown)
            # PTB's own bootstrap retries at fixed intervals and logs each failure as an
            # error with a traceback: do it here first, on our terms; its call then succeeds.
            await tries.call("deleteWebhook", app.bot.delete_webhook)
            await app.start()
            stack.push_async_callback(app.stop)
            updater = app.updater
            assert updater is not None  # the builder makes one unless told not to
            await tries.call(
                "deleteWebhook",
                functools.partial(
                    updater.start_polling,
                    timeout=timedelta(seconds=o.poll_timeout_s),
                    bootstrap_retries=0,
                    allowed_updates=[Update.MESSAGE],
                    drop_pending_updates=False,  # a /mute sent while we were down still counts
                    error_callback=_on_poll_error,
                ),
            )
            stack.push_async_callback(updater.stop)
            menu = CommandMenu(
                app.bot,
                Commands.bot_commands(),
                retry=self._menu_retry,
                rng=self._rng,
            )
            menu.start()
            stack.push_async_callback(menu.stop)
            self._sink = TelegramSink(
                app.bot,
                store,
                TelegramSinkOptions(
                    rate_per_chat_s=self._settings.rate_per_chat_s,
                    rate_global_per_s=self._settings.rate_global_per_s,
                    send_timeout_s=o.send_timeout_s,
                    max_attempts=o.send_attempts,
                    backoff_s=o.send_backoff_s,
                    render_html=self._render[0],
                    render_text=self._render[1],
                    chart=self._alert_chart if self._settings.attach_chart else None,
                ),
            )
            self._app, self._store, self._menu = app, store, menu
            self._stack = stack.pop_all()
        _log.info("telegram.started", username=app.bot.username)
        return self

    def _alert_chart(self, alert: Alert) -> bytes | None:
        """The /chart picture of the alert's symbol with this alert marked, or None
        (no bars yet, or drawing failed: the alert then goes as text)."""
        try:
            chart = render_chart(
                alert.symbol,
                self._backend.bars(alert.symbol, CHART_BARS),
                self._backend.levels(alert.symbol),
                [alert],
            )
        except Exception as exc:  # a picture is never worth losing the alert over
            _log.warning("telegram.chart_failed", alert_id=alert.id, error=repr(exc))
            return None
        return None if chart is None else chart.png

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._app, self._sink, self._store, self._menu = None, None, None, None
        if stack is not None:
            await stack.aclose()  # menu, updater.stop, app.stop, app.shutdown, store.close
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
