"""The bot's commands: subscription and settings per chat, market read-outs, admin views.

Every handler takes new messages only: edited messages do not re-run a
command, and forwarded messages run nothing (a forward is somebody else's
words). With `access = "allowlist"` only listed users (and admins) are served;
anyone else gets a one-line answer to /start and silence otherwise.

Admin commands (/health, /subscribers, /reload) run only for an admin user id, in a
private chat, from a message that is not forwarded: the handler's filters
say so and the handler checks again. Anything else is refused without a
reply and logged (`telegram.command_refused`).
"""

from __future__ import annotations

import html
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

import structlog
from telegram import BotCommand, Chat, Update
from telegram.constants import ParseMode
from telegram.ext import BaseHandler, CommandHandler, ContextTypes, MessageHandler, filters

from daemon.sinks.render import clean
from daemon.telegram.backend import BotBackend
from daemon.telegram.chart import Chart, render_chart
from daemon.telegram.replies import (
    format_breakdown,
    format_health,
    format_levels,
    format_subscriber,
    format_subscribers,
)
from daemon.telegram.subscribers import (
    NEW_YORK,
    SEVERITY_RANK,
    QuietHours,
    SubscriberStore,
    parse_symbols,
)

_log = structlog.get_logger(__name__)

Handler = BaseHandler[Update, ContextTypes.DEFAULT_TYPE, None]

PUBLIC_COMMANDS: Final[tuple[tuple[str, str], ...]] = (
    ("start", "Subscribe this chat to alerts"),
    ("stop", "Unsubscribe this chat"),
    ("status", "Subscription and scores"),
    ("score", "Score breakdown: /score [SYMBOL]"),
    ("levels", "Price levels: /levels [SYMBOL]"),
    ("chart", "Chart with levels and RSI: /chart [SYMBOL]"),
    ("mute", "Pause alerts: /mute 30m, 2h, 1d"),
    ("unmute", "Resume alerts"),
    ("settings", "Show or change symbols, severity, quiet hours"),
    ("help", "What this bot does"),
)
ADMIN_COMMANDS: Final[tuple[tuple[str, str], ...]] = (
    ("health", "Daemon health"),
    ("subscribers", "Who is subscribed"),
    ("reload", "Re-read the rules file"),
)
MAX_MUTE_S: Final = 30 * 86400
_DURATION_PART = re.compile(r"(\d+)([mhd])")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400}
_SETTINGS_USAGE = (
    "Usage: /settings symbols IWM,SPY (or all) · /settings severity info|notable|strong"
    " · /settings quiet 22:00-07:00 (New York time) · /settings quiet off"
)
_NOT_SUBSCRIBED = "This chat is not subscribed: send /start first."
# What a reply quotes back (a user's argument, an error about it, an alert's title) is cut
# to this many characters: a user's 4,096 would not fit in the reply around them.
_MAX_QUOTE = 200
_MAX_LONG_QUOTE = 1500

# New, non-forwarded messages: an edit or a forward never runs a command.
_MESSAGES = filters.UpdateType.MESSAGE & ~filters.FORWARDED & ~filters.IS_AUTOMATIC_FORWARD

Reply = str | Chart | None
# Recent alerts looked at for /chart's markers (the outbox keeps the newest).
_CHART_ALERTS: Final = 200
CHART_BARS: Final = 120  # daily bars in /chart and in a chart attached to an alert


def parse_duration(text: str) -> int:
    """Seconds in `30m`, `2h`, `1d` or `1h30m`; `ValueError` outside (0, 30 days]."""
    compact = text.strip().lower()
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError("a duration looks like 30m, 2h, 1d or 1h30m")
    seconds = sum(int(n) * _UNIT_S[u] for n, u in parts)
    if not 0 < seconds <= MAX_MUTE_S:
        raise ValueError("a mute lasts more than 0 and at most 30 days")
    return seconds


@dataclass(frozen=True)
class Access:
    """Who may use the bot (`policy`, `allowed`) and who may run admin commands (`admins`)."""

    policy: Literal["open", "allowlist"] = "open"
    allowed: frozenset[int] = frozenset()
    admins: frozenset[int] = frozenset()

    def may_use(self, user_id: int | None) -> bool:
        """Whether `user_id` may subscribe and use the public commands."""
        if user_id is None:
            return False
        return self.policy == "open" or user_id in self.allowed or user_id in self.admins


@dataclass(frozen=True)
class _Request:
    chat_id: int
    user_id: int
    args: tuple[str, ...]
    admin: bool  # an admin, in a private chat


class Commands:
    """The command handlers, over `store` (subscriptions) and `backend` (daemon state)."""

    def __init__(
        self,
        store: SubscriberStore,
        backend: BotBackend,
        access: Access,
        *,
        clock: Callable[[], float] = time.time,
        chart_bars: int = CHART_BARS,
    ) -> None:
        self._store = store
        self._backend = backend
        self._access = access
        self._clock = clock
        self._chart_bars = chart_bars

    @staticmethod
    def bot_commands() -> list[BotCommand]:
        """The public command menu (admin commands stay out of it)."""
        return [BotCommand(name, text) for name, text in PUBLIC_COMMANDS]

    def handlers(self) -> list[Handler]:
        """Every handler, in the order they must be registered (one group)."""
        public: dict[str, Callable[[_Request], Reply]] = {
            "stop": self._stop,
            "status": self._status,
            "score": self._score,
            "levels": self._levels,
            "chart": self._chart,
            "mute": self._mute,
            "unmute": self._unmute,
            "settings": self._settings,
            "help": self._help,
        }
        admin_only = filters.ChatType.PRIVATE & filters.User(user_id=self._access.admins)
        handlers: list[Handler] = [
            CommandHandler("start", self._on_start, filters=_MESSAGES),
            *(self._handler(name, run, admin=False) for name, run in public.items()),
            self._handler("health", self._health, admin=True, extra=admin_only),
            self._handler("subscribers", self._subscribers, admin=True, extra=admin_only),
            self._handler("reload", self._reload, admin=True, extra=admin_only),
            # Reached only when the admin handlers' filters said no: log, run nothing.
            CommandHandler(
                [name for name, _ in ADMIN_COMMANDS],
                self._on_refused,
                filters=filters.UpdateType.MESSAGES,
            ),
            MessageHandler(filters.StatusUpdate.MIGRATE, self._on_migrate),
        ]
        return handlers

    # -- plumbing -------------------------------------------------------------------------

    def _handler(
        self,
        name: str,
        run: Callable[[_Request], Reply],
        *,
        admin: bool,
        extra: filters.BaseFilter | None = None,
    ) -> Handler:
        async def callback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
            request = self._request(update, context, name, admin=admin)
            if request is not None:
                _log.info("telegram.command", command=name, chat_id=request.chat_id)
                await _send(context, request.chat_id, run(request))

        return CommandHandler(name, callback, filters=_MESSAGES & extra if extra else _MESSAGES)

    def _request(
        self, update: Update, context: ContextTypes.DEFAULT_TYPE, name: str, *, admin: bool
    ) -> _Request | None:
        """The request, or None (logged) when this user may not run this command here."""
        message, chat, user = update.message, update.effective_chat, update.effective_user
        if message is None or chat is None or user is None:
            return None
        private = chat.type == Chat.PRIVATE
        is_admin = private and user.id in self._access.admins
        # Checked again here, not only in the filters: a refusal must not hinge on one place.
        forwarded = message.forward_origin is not None or bool(message.is_automatic_forward)
        if forwarded or (admin and not is_admin) or not self._access.may_use(user.id):
            _log.info("telegram.command_refused", command=name, chat_id=chat.id, user_id=user.id)
            return None
        return _Request(chat.id, user.id, tuple(context.args or ()), is_admin)

    async def _on_refused(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, user = update.effective_chat, update.effective_user
        _log.info(
            "telegram.command_refused",
            command="admin",
            chat_id=None if chat is None else chat.id,
            user_id=None if user is None else user.id,
        )

    async def _on_start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, user = update.effective_chat, update.effective_user
        if chat is None or user is None:
            return
        if not self._access.may_use(user.id):
            _log.info("telegram.command_refused", command="start", chat_id=chat.id, user_id=user.id)
            if chat.type == Chat.PRIVATE:
                await _send(context, chat.id, "This bot is private.")
            return
        sub = self._store.subscribe(chat.id, user.id)
        _log.info("telegram.subscribed", chat_id=chat.id, user_id=user.id)
        await _send(
            context,
            chat.id,
            "Subscribed.\n" + format_subscriber(sub, self._clock()) + "\n/settings to change, "
            "/help for commands.",
        )

    async def _on_migrate(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None:
            return
        if message.migrate_to_chat_id is not None:
            old, new = message.chat.id, message.migrate_to_chat_id
        elif message.migrate_from_chat_id is not None:
            old, new = message.migrate_from_chat_id, message.chat.id
        else:
            return
        if self._store.migrate(old, new):
            _log.info("telegram.chat_migrated", chat_id=old, new_chat_id=new)

    def _symbol(self, args: Sequence[str]) -> tuple[str | None, str]:
        """(symbol, "") for the first argument or the default symbol, or (None, error)."""
        tracked = list(self._backend.symbols())
        if not tracked:
            return None, "No symbols are tracked."
        if not args:
            return tracked[0], ""
        symbol = args[0].upper()
        if symbol not in tracked:
            return None, f"Unknown symbol {_quote(symbol)}. Tracked: {', '.join(tracked)}."
        return symbol, ""

    # -- public commands ------------------------------------------------------------------

    def _stop(self, req: _Request) -> Reply:
        if self._store.unsubscribe(req.chat_id):
            _log.info("telegram.unsubscribed", chat_id=req.chat_id, user_id=req.user_id)
            return "Unsubscribed. /start to subscribe again."
        return "This chat was not subscribed."

    def _status(self, req: _Request) -> Reply:
        now = self._clock()
        sub = self._store.get(req.chat_id)
        lines = [
            format_subscriber(sub, now)
            if sub is not None and sub.active
            else "Not subscribed: /start to get alerts."
        ]
        for symbol in self._backend.symbols():
            bd = self._backend.breakdown(symbol)
            score = "no data yet" if bd is None else _score_text(bd.score, bd.label)
            lines.append(f"<b>{html.escape(symbol)}</b> {score}")
        recent = list(self._backend.recent_alerts(1))
        if recent:
            when = datetime.fromtimestamp(recent[0].time, NEW_YORK)
            lines.append(f"Last alert {when:%a %H:%M} ET: {_quote(recent[0].title)}")
        return "\n".join(lines)

    def _score(self, req: _Request) -> Reply:
        symbol, error = self._symbol(req.args)
        if symbol is None:
            return error
        bd = self._backend.breakdown(symbol)
        if bd is None:
            return f"No score for {html.escape(symbol)} yet."
        return format_breakdown(symbol, bd)

    def _levels(self, req: _Request) -> Reply:
        symbol, error = self._symbol(req.args)
        if symbol is None:
            return error
        last = self._backend.bars(symbol, 1)
        close = float(last["close"][-1]) if last.height else None
        return format_levels(symbol, self._backend.levels(symbol), close)

    def _chart(self, req: _Request) -> Reply:
        symbol, error = self._symbol(req.args)
        if symbol is None:
            return error
        chart = render_chart(
            symbol,
            self._backend.bars(symbol, self._chart_bars),
            self._backend.levels(symbol),
            self._backend.recent_alerts(_CHART_ALERTS),
        )
        return chart or f"No bars for {html.escape(symbol)} yet."

    def _mute(self, req: _Request) -> Reply:
        if not req.args:
            return "Usage: /mute 30m, 2h, 1d or 1h30m."
        try:
            seconds = parse_duration(req.args[0])
        except ValueError as exc:
            return _quote(str(exc))
        until = self._clock() + seconds
        if not self._store.set_muted_until(req.chat_id, until):
            return _NOT_SUBSCRIBED
        when = datetime.fromtimestamp(until, NEW_YORK)
        return f"Muted until {when:%a %H:%M} ET. /unmute to resume."

    def _unmute(self, req: _Request) -> Reply:
        if not self._store.set_muted_until(req.chat_id, 0.0):
            return _NOT_SUBSCRIBED
        return "Unmuted."

    def _settings(self, req: _Request) -> Reply:
        sub = self._store.get(req.chat_id)
        if sub is None:
            return _NOT_SUBSCRIBED
        if not req.args:
            return format_subscriber(sub, self._clock()) + "\n" + _SETTINGS_USAGE
        setters: dict[str, Callable[[int, str], str | None]] = {
            "symbols": self._set_symbols,
            "severity": self._set_severity,
            "quiet": self._set_quiet,
        }
        setter = setters.get(req.args[0].lower())
        if setter is None:
            return _SETTINGS_USAGE
        try:
            refused = setter(req.chat_id, " ".join(req.args[1:]))
        except ValueError as exc:
            return _quote(str(exc))
        if refused is not None:
            return refused
        updated = self._store.get(req.chat_id)
        assert updated is not None  # it was there a moment ago, in this thread
        return "Saved.\n" + format_subscriber(updated, self._clock())

    # A setter saves one /settings value and returns None, or says why not.

    def _set_symbols(self, chat_id: int, value: str) -> str | None:
        symbols = parse_symbols(value)
        tracked = set(self._backend.symbols())
        unknown = [s for s in symbols if s not in tracked]
        if unknown:
            return (
                f"Not tracked: {_quote(', '.join(unknown))}. Tracked: {', '.join(sorted(tracked))}."
            )
        self._store.set_symbols(chat_id, symbols)
        return None

    def _set_severity(self, chat_id: int, value: str) -> str | None:
        if value.lower() not in SEVERITY_RANK:
            return "Severity is one of: info, notable, strong."
        self._store.set_min_severity(chat_id, value.lower())
        return None

    def _set_quiet(self, chat_id: int, value: str) -> str | None:
        quiet = None if value.lower() == "off" else QuietHours.parse(value)
        self._store.set_quiet(chat_id, quiet)
        return None

    def _help(self, req: _Request) -> Reply:
        lines = [
            "IWM alerts: volume breakouts, RSI entry zone, score crossings, IWM/SPY and"
            " IWM/QQQ leadership flips.",
            *(f"/{name} - {html.escape(text)}" for name, text in PUBLIC_COMMANDS),
        ]
        if req.admin:
            lines += ["Admin:", *(f"/{name} - {text}" for name, text in ADMIN_COMMANDS)]
        return "\n".join(lines)

    # -- admin commands -------------------------------------------------------------------

    def _health(self, req: _Request) -> Reply:
        active, total = self._store.counts()
        return format_health(self._backend.health(), active, total)

    def _subscribers(self, req: _Request) -> Reply:
        active, total = self._store.counts()
        return format_subscribers(self._store.all(limit=50), active, total, self._clock())

    def _reload(self, req: _Request) -> Reply:
        try:
            summary = self._backend.reload_rules()
        except ValueError as exc:
            _log.warning("telegram.reload_failed", chat_id=req.chat_id, error=str(exc)[:500])
            return "<b>Reload failed</b>; the running rules stay.\n" + _quote_long(str(exc))
        return "<b>Rules reloaded</b>\n" + _quote_long(summary)


def _quote_long(text: str) -> str:
    """Our own longer text (an error naming a file and a key), cleaned, cut and escaped."""
    return html.escape(clean(text, _MAX_LONG_QUOTE), quote=False)


def _quote(text: str) -> str:
    """Outside text to quote in a reply: cleaned, cut to `_MAX_QUOTE`, escaped."""
    return html.escape(clean(text, _MAX_QUOTE), quote=False)


def _score_text(score: float, label: str) -> str:
    return "warming up" if math.isnan(score) else f"{score:.0f}/100 {html.escape(label)}"


async def _send(context: ContextTypes.DEFAULT_TYPE, chat_id: int, reply: Reply) -> None:
    if isinstance(reply, Chart):
        await context.bot.send_photo(
            chat_id=chat_id, photo=reply.png, caption=reply.caption, parse_mode=ParseMode.HTML
        )
    elif reply:
        await context.bot.send_message(chat_id=chat_id, text=reply, parse_mode=ParseMode.HTML)
