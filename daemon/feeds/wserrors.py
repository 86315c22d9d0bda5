"""What a websocket failure means for the reconnect loop, shared by every provider.

The upgrade's HTTP status, a close code or a bad URL become the `FeedError`
that tells `FeedLoop` what to do. `scrub` removes secrets from any text the
library or the server sent (keys can sit in URLs and echoed frames).
`is_utf8` is the check a protocol runs on a message before decoding it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.frames import CloseCode

from daemon.feeds.base import (
    FeedAuthFailed,
    FeedError,
    FeedFatal,
    FeedThrottled,
    FeedUnavailable,
    FrameRejected,
)
from daemon.retry import parse_retry_after


def retry_after_s(headers: Iterable[tuple[str, str]], now_s: float | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (the daemon's one parser: seconds or an HTTP date,
    counted from `now_s` or else the wall clock), or `X-RateLimit-Reset` (epoch) given `now_s`."""
    values = {k.lower(): v for k, v in headers}
    if "retry-after" in values:
        return parse_retry_after(values["retry-after"], time.time() if now_s is None else now_s)
    try:
        if "x-ratelimit-reset" in values and now_s is not None:
            return max(0.0, float(values["x-ratelimit-reset"]) - now_s)
    except ValueError:
        return None
    return None


def is_utf8(data: bytes | str) -> bool:
    """Whether a message is UTF-8 (bytes) or encodes to it (str: no lone surrogates).

    msgspec checks UTF-8 only inside the strings it decodes and raises
    `UnicodeDecodeError` there, out of a nested decode: protocols check a
    message up front, so a binary frame with a bad byte in a string is one
    rejection, not a crash.
    """
    try:
        if isinstance(data, bytes):
            data.decode("utf-8")
        else:
            data.encode("utf-8")
    except UnicodeError:
        return False
    return True


def websocket_error(
    exc: BaseException,
    *,
    feed: str,
    max_frame_bytes: int,
    scrub: Callable[[str], str],
    now_s: float | None = None,
) -> FeedError:
    """The `FeedError` for a websocket exception (connect, upgrade, or a closed session)."""
    if isinstance(exc, ConnectionClosed):
        return _closed_error(exc, feed, max_frame_bytes, scrub)
    if isinstance(exc, InvalidStatus):
        return _upgrade_error(exc, feed, now_s)
    if isinstance(exc, InvalidURI):
        return FeedFatal(feed, scrub(f"invalid stream URL: {exc}"))
    return FeedUnavailable(feed, scrub(f"{type(exc).__name__}: {exc}"))


def _closed_error(
    exc: ConnectionClosed, feed: str, max_frame_bytes: int, scrub: Callable[[str], str]
) -> FeedError:
    """The error for a session the server or the client closed."""
    if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
        return FrameRejected(
            feed,
            "frame_too_big",
            f"a message exceeded {max_frame_bytes} bytes; closed with 1009",
        )
    if exc.sent is not None and exc.sent.code == CloseCode.INVALID_DATA:
        # A text frame that is not UTF-8: bad input like any other, so counted.
        return FrameRejected(feed, "bad_utf8", "a text message was not UTF-8; closed with 1007")
    return FeedUnavailable(feed, scrub(f"connection closed: {exc}"))


def _upgrade_error(exc: InvalidStatus, feed: str, now_s: float | None) -> FeedError:
    """The error for a websocket upgrade the server refused with an HTTP status."""
    status = exc.response.status_code
    detail = f"websocket upgrade refused with HTTP {status}"
    if status in (401, 403):  # a bad key can be refused at the upgrade (Finnhub does)
        return FeedAuthFailed(feed, detail)
    if status == 429:  # one connection per key: another one holds it
        return FeedThrottled(feed, detail, retry_after_s(exc.response.headers.raw_items(), now_s))
    if status in (400, 404):
        return FeedFatal(feed, f"{detail}: is the stream URL right?")
    return FeedUnavailable(feed, detail)
