"""The Alpaca wire: message structs, stream error codes and what they mean, a bar's fields
validated into a `Bar`, and the text of a rejection or an error (an excerpt, the credentials
scrubbed from it). Shared by the stream protocol (`alpaca.py`) and the REST backfill."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Final

import msgspec

from daemon.feeds.base import FeedAuthFailed, FeedError, FeedFatal, FeedThrottled, FeedUnavailable
from daemon.feeds.reconnect import Rejection
from daemon.feeds.rejects import BarLimits
from signals.bar import Bar, BarRejected

ERROR_MESSAGES: Final[dict[int, str]] = {
    400: "invalid syntax",
    401: "not authenticated",
    402: "auth failed",
    403: "already authenticated",
    404: "auth timeout",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
    407: "slow client",
    408: "v2 not enabled",
    409: "insufficient subscription",
    410: "invalid subscribe action for this feed",
    500: "internal error",
}
"""Alpaca's stream error codes and their documented messages."""

DETAIL_CHARS = 160
_MIN_SCRUB_CHARS = 6  # real keys are 20+ characters; scrubbing "s" would mangle every message

# Wire structs, one per message type. Unknown fields (n, vw...) are ignored.


class Head(msgspec.Struct):
    T: str


class SuccessMsg(msgspec.Struct):
    msg: str


class ErrorMsg(msgspec.Struct):
    code: int
    msg: str = ""


class SubscriptionMsg(msgspec.Struct, rename={"updated": "updatedBars", "daily": "dailyBars"}):
    bars: list[str] = []
    updated: list[str] = []
    daily: list[str] = []


BAR_RENAME: Final = {
    "symbol": "S",
    "time": "t",
    "open": "o",
    "high": "h",
    "low": "l",
    "close": "c",
    "volume": "v",
}


class StreamBar(msgspec.Struct, rename=BAR_RENAME):
    symbol: str
    time: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


class RestBar(msgspec.Struct, rename=BAR_RENAME):
    time: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


def excerpt(data: bytes | str) -> str:
    """The start of `data` as text, for a rejection's detail."""
    text = data if isinstance(data, str) else data[:DETAIL_CHARS].decode("utf-8", "replace")
    return text[:DETAIL_CHARS]


def field_problem(exc: msgspec.ValidationError) -> str:
    """A reason for a bar that did not fit its struct."""
    text = str(exc)
    if "out of range" in text:  # 1e400 and friends: JSON numbers beyond a double
        return "non_finite"
    if "`$.t`" in text:
        return "bad_time"
    return "bad_field"


def bar_or_rejection(
    symbol: str, msg: StreamBar | RestBar, *, minute: bool, limits: BarLimits
) -> Bar | Rejection:
    """A validated `Bar` from decoded fields, or why not."""
    epoch = _epoch(symbol, msg.time, minute=minute, latest_s=limits.latest_s)
    if isinstance(epoch, Rejection):
        return epoch
    try:
        bar = Bar(symbol, epoch, msg.open, msg.high, msg.low, msg.close, msg.volume)
    except BarRejected as exc:
        return Rejection(exc.reason, str(exc))
    if bar.symbol not in limits.symbols:
        return Rejection("unsubscribed_symbol", f"{bar.symbol!r} was not subscribed")
    return bar


def _epoch(symbol: str, stamp: datetime, *, minute: bool, latest_s: float) -> int | Rejection:
    """A bar's start as epoch seconds, or why it is not a valid one."""
    if stamp.tzinfo is None:
        return Rejection("bad_time", f"{symbol[:12]!r}: time without a UTC offset: {stamp}")
    try:
        seconds = stamp.timestamp()
    except (OverflowError, ValueError):
        return Rejection("bad_time", f"{symbol[:12]!r}: time out of range: {stamp}")
    epoch = math.floor(seconds)
    if minute and (stamp.microsecond or epoch % 60):
        return Rejection("bad_time", f"{symbol[:12]!r}: minute bar not on a minute: {stamp}")
    if epoch < 0:
        return Rejection("bad_time", f"{symbol[:12]!r}: time before 1970: {stamp}")
    if epoch > latest_s:
        return Rejection("future_time", f"{symbol[:12]!r}: {stamp} is ahead of the clock")
    return epoch


def scrub(key: str, secret: str, text: str) -> str:
    """`text` with `key` and `secret` replaced by `***` (unless too short to be real keys)."""
    for value in (key, secret):
        if len(value) >= _MIN_SCRUB_CHARS:
            text = text.replace(value, "***")
    return text


def error_for_code(feed: str, code: int, message: str) -> FeedError:
    """The feed error an Alpaca stream error code means: what the reconnect loop must do."""
    detail = f"server error {code} ({ERROR_MESSAGES.get(code, message or 'unknown')})"
    if code in (401, 402):  # refused or lost credentials: a few retries, then fatal
        return FeedAuthFailed(feed, detail)
    if code == 406:  # another session holds our slot; Alpaca frees half-dead ones after ~90 s
        return FeedThrottled(feed, detail)
    if code in (400, 405, 408, 409, 410):  # our request or our plan: retrying cannot fix it
        return FeedFatal(feed, detail)
    return FeedUnavailable(feed, detail)  # 403, 404, 407, 500, unknown: reconnect afresh
