"""The Telegram sink: one alert, fanned out to every subscribed chat that wants it.

For each active subscriber not yet served this alert (the store's
`deliveries` table), the chat's filters decide: wrong symbol, below its
minimum severity, muted or in quiet hours means skipped for good (recorded,
not queued). The rest get the HTML rendering, paced by `RateLimiter`, each
chat in its own task, retried there:

- `RetryAfter` (429): hold every chat for `retry_after`, then try again;
- `ChatMigrated`: move the subscriber to the supergroup's id and resend there;
- `Forbidden` (blocked, kicked): deactivate the subscriber; not an alert failure;
- `BadRequest` "can't parse entities": resend as plain text; other
  `BadRequest`s: this chat will never take this alert (`rejected`);
- `TimedOut` after the request went out (read/write timeout): Telegram may
  well have delivered it, so record `maybe` and do not resend
  (`alert.maybe_delivered`); a connect or pool timeout never left: retry;
- other `NetworkError`s: retry with backoff (the daemon's `RetryPolicy`:
  `backoff_s` doubling, no jitter, bounded by `max_attempts`).

A chat still failing after `max_attempts` (or told to wait longer than
`max_wait_s`) makes `send` raise `SinkUnavailable`: the outbox retries later,
and the chats already served are skipped then. Alerts go one `send` at a
time (a lock), which keeps each chat's messages in order.
"""

from __future__ import annotations

import asyncio
import math
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Final, Literal, Self

import httpx
import structlog
from telegram import Bot, LinkPreviewOptions
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.warnings import PTBDeprecationWarning

from daemon.logs import redact
from daemon.retry import RetryPolicy
from daemon.sinks.base import SinkRejected, SinkUnavailable
from daemon.sinks.render import render_html, render_text
from daemon.telegram.ratelimit import RateLimiter
from daemon.telegram.subscribers import DeliveryStatus, SubscriberStore
from signals.alerts import Alert

_log = structlog.get_logger(__name__)

_PARSE_ERROR: Final = "can't parse entities"
_NO_PREVIEW: Final = LinkPreviewOptions(is_disabled=True)
# Timeouts raised before the request reached the server: safe to send again.
_NOT_SENT: Final = (httpx.ConnectTimeout, httpx.PoolTimeout)
CAPTION_MAX: Final = 1024  # Telegram's limit on a photo caption, in characters after parsing


def retry_after_s(exc: RetryAfter) -> float:
    """Seconds Telegram asked us to wait, whichever type this PTB version gives.

    PTB 22.2+ returns an int (with a deprecation warning) unless PTB_TIMEDELTA
    is set, then a timedelta; both are accepted and the warning is kept quiet.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _detail(exc: TelegramError) -> str:
    # Telegram's descriptions carry no secrets, but redact anyway: a proxy might echo a URL.
    return redact(f"{type(exc).__name__}: {exc.message}")


@dataclass(frozen=True)
class _Outcome:
    """What one chat's delivery came to. `chat_id` is the final one (after a migration)."""

    chat_id: int
    result: Literal["sent", "maybe", "rejected", "deactivated", "retry"]
    retry_after_s: float | None = None
    detail: str = ""

    @property
    def status(self) -> DeliveryStatus | None:
        """What to remember in `deliveries`; None: nothing (try again next time)."""
        return self.result if self.result in ("sent", "maybe", "rejected") else None


@dataclass
class _Send:
    """One chat's delivery in progress: the chat may move, the text fall back to plain."""

    alert_id: str
    chat_id: int
    text: str
    plain: str
    mode: ParseMode | None = ParseMode.HTML
    attempt: int = 0


@dataclass(frozen=True, kw_only=True)
class TelegramSinkOptions:
    """How a `TelegramSink` paces, retries, renders and remembers.

    `send_timeout_s` is the read timeout of one `sendMessage`: past it the
    message counts as maybe delivered. `render_html` / `render_text` make the
    message and its plain-text fallback (default: `daemon.sinks.render` with
    SPY and QQQ as benchmark and comparator; pass a `functools.partial` for others).
    `chart`, when given, makes the PNG sent with an alert (None: text only); the
    alert is then the photo's caption, if it fits in one. `clock`, `monotonic`
    and `sleep` are injectable for tests.
    """

    rate_per_chat_s: float = 1.0
    rate_global_per_s: float = 30.0
    max_attempts: int = 5
    max_wait_s: float = 60.0
    backoff_s: float = 1.0
    send_timeout_s: float = 10.0
    keep_deliveries_s: float = 14 * 86400.0
    render_html: Callable[[Alert], str] = render_html
    render_text: Callable[[Alert], str] = render_text
    chart: Callable[[Alert], bytes | None] | None = None
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def __post_init__(self) -> None:
        if (
            self.max_attempts < 1
            or self.max_wait_s < 0
            or self.backoff_s < 0
            or self.send_timeout_s <= 0
        ):
            raise ValueError(
                "need max_attempts >= 1, max_wait_s >= 0, backoff_s >= 0, send_timeout_s > 0"
            )


class TelegramSink:
    """Delivers alerts to the subscribers in `store` through `bot` (initialised by its
    owner), as `options` say."""

    name = "telegram"

    def __init__(
        self,
        bot: Bot,
        store: SubscriberStore,
        options: TelegramSinkOptions = TelegramSinkOptions(),
    ) -> None:
        o = options
        self._bot = bot
        self._store = store
        self._limiter = RateLimiter(
            o.rate_per_chat_s, o.rate_global_per_s, clock=o.monotonic, sleep=o.sleep
        )
        self._max_attempts = o.max_attempts
        self._max_wait_s = o.max_wait_s
        # Uncapped: `max_attempts` bounds it (1, 2, 4, 8 s with the defaults).
        self._retry = RetryPolicy(base_s=o.backoff_s, cap_s=math.inf)
        self._send_timeout_s = o.send_timeout_s
        self._keep_deliveries_s = o.keep_deliveries_s
        self._render_html = o.render_html
        self._render_text = o.render_text
        self._chart = o.chart
        self._clock = o.clock
        self._sleep = o.sleep
        self._lock = asyncio.Lock()
        self._pruned_at = float("-inf")

    def __repr__(self) -> str:
        # Never the bot: its repr carries the token.
        return "TelegramSink()"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def send(self, alert: Alert) -> None:
        """Deliver `alert` to every chat that wants it and has not had it yet.

        Raises `SinkUnavailable` while some chat is still failing with a
        retryable error, `SinkRejected` when Telegram refused it everywhere.
        """
        async with self._lock:
            await self._send(alert)

    async def _send(self, alert: Alert) -> None:
        now = self._clock()
        self._prune(now)
        served = self._store.served(alert.id)
        targets: list[int] = []
        skipped: Counter[str] = Counter()
        skips: list[tuple[int, DeliveryStatus]] = []
        for sub in self._store.active():
            if sub.chat_id in served:
                continue
            reason = sub.skip_reason(alert, now)
            if reason is None:
                targets.append(sub.chat_id)
            else:
                # Decided once: a retry later must not send it after the quiet hours end.
                skipped[reason] += 1
                skips.append((sub.chat_id, "skipped"))
        self._store.record(alert.id, skips)
        if not targets:
            _log.info("alert.skipped", sink=self.name, alert_id=alert.id, skipped=dict(skipped))
            return

        html, plain = self._render_html(alert), self._render_text(alert)
        # Drawn once for every chat; an alert too long for a caption goes as text.
        photo = self._chart(alert) if self._chart and len(plain) <= CAPTION_MAX else None
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(
                    self._deliver(alert, chat, html, plain, photo), name=f"telegram-{chat}"
                )
                for chat in targets
            ]
        outcomes = [t.result() for t in tasks]
        self._store.record(
            alert.id, [(o.chat_id, o.status) for o in outcomes if o.status is not None]
        )
        counts: Counter[str] = Counter(o.result for o in outcomes)
        _log.info(
            "alert.sent",
            sink=self.name,
            alert_id=alert.id,
            chats=len(targets),
            **counts,
            skipped=dict(skipped),
        )
        failing = [o for o in outcomes if o.result == "retry"]
        if failing:
            waits = [o.retry_after_s for o in failing if o.retry_after_s is not None]
            raise SinkUnavailable(
                self.name,
                f"{len(failing)} of {len(targets)} chats not reached yet ({failing[0].detail})",
                retry_after_s=max(waits) if waits else None,
            )
        rejected = [o for o in outcomes if o.result == "rejected"]
        if rejected and len(rejected) == len(outcomes):
            raise SinkRejected(self.name, rejected[0].detail)

    async def _deliver(
        self, alert: Alert, chat_id: int, html: str, plain: str, photo: bytes | None = None
    ) -> _Outcome:
        """One chat's delivery, with its retries; never raises for a Telegram error."""
        send = _Send(alert.id, chat_id, html, plain)
        while True:
            send.attempt += 1
            await self._limiter.acquire(send.chat_id)
            try:
                await self._post(send.chat_id, send.text, send.mode, photo)
            except TelegramError as exc:
                if outcome := await self._failed(send, exc):
                    return outcome
            else:
                return _Outcome(send.chat_id, "sent")

    async def _failed(self, send: _Send, exc: TelegramError) -> _Outcome | None:
        """What a failed send comes to: an outcome, or None to try the chat again."""
        if isinstance(exc, ChatMigrated | Forbidden | BadRequest):  # BadRequest is a NetworkError
            return self._refused(send, exc)
        if isinstance(exc, RetryAfter):  # flood control: everybody waits, then this chat again
            wait_s = retry_after_s(exc)
            self._limiter.pause(wait_s)
            _log.warning("telegram.flood_wait", chat_id=send.chat_id, retry_after_s=wait_s)
            if send.attempt >= self._max_attempts or wait_s > self._max_wait_s:
                return _Outcome(send.chat_id, "retry", wait_s, "flood control")
            return None
        # TimedOut subclasses NetworkError: one that may have reached Telegram is not resent.
        if isinstance(exc, TimedOut) and not isinstance(exc.__cause__, _NOT_SENT):
            _log.warning(
                "alert.maybe_delivered",
                chat_id=send.chat_id,
                alert_id=send.alert_id,
                timeout_s=self._send_timeout_s,
            )
            return _Outcome(send.chat_id, "maybe")
        if isinstance(exc, InvalidToken | NetworkError):
            return await self._backoff(send.attempt, send.chat_id, exc)
        # Anything else PTB may add: retry later, never crash.
        return _Outcome(send.chat_id, "retry", detail=_detail(exc))

    def _refused(self, send: _Send, exc: ChatMigrated | Forbidden | BadRequest) -> _Outcome | None:
        """The chat moved (follow it), blocked us (deactivate it) or refused this message."""
        if isinstance(exc, ChatMigrated):  # group became a supergroup: follow it
            self._store.migrate(send.chat_id, exc.new_chat_id)
            _log.info("telegram.chat_migrated", chat_id=send.chat_id, new_chat_id=exc.new_chat_id)
            send.chat_id = exc.new_chat_id
            if send.attempt >= self._max_attempts:
                return _Outcome(send.chat_id, "retry", detail="chat migrated again")
            return None
        if isinstance(exc, Forbidden):  # blocked or kicked: stop writing to this chat
            self._store.unsubscribe(send.chat_id)
            _log.info("telegram.subscriber_deactivated", chat_id=send.chat_id, reason=exc.message)
            return _Outcome(send.chat_id, "deactivated")
        if send.mode is not None and _PARSE_ERROR in exc.message.lower():
            _log.warning("telegram.parse_fallback", chat_id=send.chat_id, alert_id=send.alert_id)
            send.text, send.mode = send.plain, None
            return None
        _log.warning(
            "alert.rejected", chat_id=send.chat_id, alert_id=send.alert_id, error=exc.message
        )
        return _Outcome(send.chat_id, "rejected", detail=_detail(exc))

    async def _post(
        self, chat_id: int, text: str, mode: ParseMode | None, photo: bytes | None
    ) -> None:
        """The alert as a message, or as the caption of `photo` (same errors either way)."""
        if photo is None:
            await self._bot.send_message(
                chat_id=chat_id,
                text=text,
                parse_mode=mode,
                link_preview_options=_NO_PREVIEW,
                read_timeout=self._send_timeout_s,
            )
        else:
            await self._bot.send_photo(
                chat_id=chat_id,
                photo=photo,
                caption=text,
                parse_mode=mode,
                read_timeout=self._send_timeout_s,
            )

    async def _backoff(self, attempt: int, chat_id: int, exc: TelegramError) -> _Outcome | None:
        """Wait before the next attempt, or the giving-up outcome after the last one."""
        detail = _detail(exc)
        _log.warning("telegram.send_failed", chat_id=chat_id, attempt=attempt, error=detail)
        if attempt >= self._max_attempts:
            return _Outcome(chat_id, "retry", detail=detail)
        await self._sleep(self._retry.delay_s(attempt))
        return None

    def _prune(self, now: float) -> None:
        # Once an hour is plenty: rows only need to outlive the outbox's retries.
        if now - self._pruned_at >= 3600.0:
            self._pruned_at = now
            self._store.prune(self._keep_deliveries_s)
