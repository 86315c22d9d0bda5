"""What the Massive stream and REST decoders share: a minute aggregate validated into a `Bar`,
and the text of a rejection or an error (an excerpt, the key scrubbed from it)."""

from __future__ import annotations

import msgspec

from daemon.feeds.reconnect import Rejection
from daemon.feeds.rejects import BarLimits
from signals.bar import Bar, BarRejected

DETAIL_CHARS = 160
_MIN_SCRUB_CHARS = 6  # real keys are 20+ characters; scrubbing "s" would mangle every message


def excerpt(data: bytes | str) -> str:
    """The start of `data` as text, for a rejection's detail."""
    text = data if isinstance(data, str) else data[:DETAIL_CHARS].decode("utf-8", "replace")
    return text[:DETAIL_CHARS]


def field_problem(exc: msgspec.ValidationError, time_field: str) -> str:
    """A reason for an aggregate that did not fit its struct."""
    text = str(exc)
    if f"`$.{time_field}`" in text:
        return "bad_time"
    if "out of range" in text:  # 1e400 and friends: JSON numbers beyond a double
        return "non_finite"
    return "bad_field"


def minute_bar(
    symbol: str,
    start_ms: int,
    ohlcv: tuple[float, float, float, float, float],
    *,
    limits: BarLimits,
) -> Bar | Rejection:
    """A validated minute `Bar` starting at `start_ms` (epoch ms), or why not."""
    name = f"{symbol[:12]!r}"
    if start_ms < 0:
        return Rejection("bad_time", f"{name}: start {start_ms} ms is before 1970")
    if start_ms % 60_000:
        return Rejection("bad_time", f"{name}: start {start_ms} ms is not on a minute")
    # Compared in ms: `start_ms / 1000` overflows a float for a huge (but whole-minute) int.
    if start_ms > limits.latest_s * 1000:
        return Rejection("future_time", f"{name}: start {start_ms} ms is ahead of the clock")
    try:
        bar = Bar(symbol, start_ms // 1000, *ohlcv)
    except BarRejected as exc:
        return Rejection(exc.reason, str(exc))
    if bar.symbol not in limits.symbols:
        return Rejection("unsubscribed_symbol", f"{name} was not subscribed")
    return bar


def scrub(secret: str, text: str) -> str:
    """`text` with `secret` replaced by `***` (unless too short to be a real key)."""
    return text.replace(secret, "***") if len(secret) >= _MIN_SCRUB_CHARS else text
