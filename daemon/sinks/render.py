"""Alerts for people: Telegram HTML and plain text, from one layout (DESIGN section 8).

Five lines: emoji and title; price and the level it broke; score, RSI, MACD
direction and ATR%; relative strength, breadth and the 2-year yield change
over 20 days; the bar's time (ET) and the rule.

A value the alert does not carry (None, NaN, not a number) is left out with
its label, never shown as 0. Every string that comes from data (symbol,
title, level name, label, rule) is treated as hostile: control characters
become spaces, lone surrogates `?`, overlong ones are cut with "…", and in
HTML `&`, `<`, `>` are escaped; the only tags are our own `<b>`, `<i>` and
`<code>`. Output is at most `max_length` UTF-16 code units (Telegram's
4096 by default), cut between whole tags and entities, ending with "…".
"""

from __future__ import annotations

import html
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from signals.aggregate import Timeframe
from signals.alerts import Alert

TELEGRAM_LIMIT: Final = 4096
ALLOWED_TAGS: Final = frozenset({"b", "i", "code"})
ET: Final = ZoneInfo("America/New_York")

ELLIPSIS: Final = "…"
MINUS: Final = "\N{MINUS SIGN}"
SEP: Final = " · "

# Caps per field, in characters, so that one runaway string cannot crowd out the rest.
_MAX_TITLE = 512
_MAX_NAME = 128
_MAX_SYMBOL = 32

# C0/C1 controls and the Unicode line/paragraph separators: they would break the layout.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

Segment = tuple[str, str | None]  # (text, our tag or None)
Line = list[Segment]


def render_html(
    alert: Alert,
    *,
    benchmark: str = "SPY",
    comparator: str = "QQQ",
    max_length: int = TELEGRAM_LIMIT,
) -> str:
    """The alert as Telegram HTML (parse mode "HTML"), at most `max_length` UTF-16 units.

    `benchmark` and `comparator` name what `rs_roc20` and `breadth20` were
    measured against (the alert itself does not say); "" gives generic wording.
    """
    return _compose(_layout(alert, benchmark, comparator), as_html=True, limit=max_length)


def render_text(
    alert: Alert,
    *,
    benchmark: str = "SPY",
    comparator: str = "QQQ",
    max_length: int = TELEGRAM_LIMIT,
) -> str:
    """The alert as plain text (console, and Telegram's fallback when HTML is refused)."""
    return _compose(_layout(alert, benchmark, comparator), as_html=False, limit=max_length)


# -- layout -----------------------------------------------------------------------------


def _layout(alert: Alert, benchmark: str, comparator: str) -> list[Line]:
    symbol = clean(alert.symbol, _MAX_SYMBOL)
    head: Line = [(f"{_emoji(alert)} ", None), (clean(alert.title, _MAX_TITLE), "b")]
    if alert.delayed:
        head += [(SEP, None), ("⏱ delayed", "i")]
    lines = [
        head,
        _price_line(alert),
        _score_line(alert),
        _relative_line(
            alert, symbol, clean(benchmark, _MAX_SYMBOL), clean(comparator, _MAX_SYMBOL)
        ),
        _footer(alert),
    ]
    return [line for line in lines if line]


def _price_line(alert: Alert) -> Line:
    close = _number(alert, "close")
    level = _number(alert, "level")
    raw_name = alert.values.get("level_name")
    name = clean(raw_name, _MAX_NAME) if isinstance(raw_name, str) and raw_name.strip() else None
    line: Line = []
    if close is not None:
        line.append((f"Price {_price(close)}", None))
    if name is not None:
        line += [(" broke the " if line else "Broke the ", None), (name, None)]
        if level is not None:
            line.append((f" {_price(level)}", None))
    elif level is not None and close is not None:
        line.append((f" through {_price(level)}", None))
    elif close is not None and alert.timeframe == "1d":
        prev = _number(alert, "prev_close")
        if prev is not None and prev > 0:
            line.append((f" ({_signed(100.0 * (close / prev - 1.0), 1)}% on the day)", None))
    return line


def _score_line(alert: Alert) -> Line:
    parts: list[Line] = []
    score = alert.score
    if score is not None and math.isfinite(score):
        label = clean(alert.label, _MAX_NAME).strip()
        parts.append([(f"Score {score:.0f}/100" + (f" {label}" if label else ""), None)])
    rsi = _number(alert, "rsi14")
    if rsi is not None:
        parts.append([(f"RSI {rsi:.0f}", None)])
    macd = _number(alert, "macd_hist")
    if macd is not None:
        parts.append([("MACD " + ("▲" if macd > 0 else "▼" if macd < 0 else "flat"), None)])
    atr = _number(alert, "atr_pct")
    if atr is not None:
        parts.append([(f"ATR {atr:.1f}%", None)])
    return _joined(parts)


def _relative_line(alert: Alert, symbol: str, benchmark: str, comparator: str) -> Line:
    parts: list[Line] = []
    rs = _number(alert, "rs_roc20")
    if rs is not None:
        pair = f"{symbol}/{benchmark}" if benchmark else f"{symbol} rel. strength"
        parts.append([(f"{pair} {_signed(100.0 * rs, 1)}% (20d)", None)])
    breadth = _number(alert, "breadth20")
    if breadth is not None:
        pair = f"{symbol}{MINUS}{comparator}" if comparator else f"{symbol} breadth"
        parts.append([(f"{pair} {_signed(100.0 * breadth, 1)}% (20d)", None)])
    rates = _number(alert, "rates_delta20")
    if rates is not None:  # percentage points; a basis point is 0.01 of one
        parts.append([(f"2Y {_signed(100.0 * rates, 0)}bp (20d)", None)])
    return _joined(parts)


def _footer(alert: Alert) -> Line:
    line: Line = []
    when = _when(alert)
    if when:
        line.append((when + SEP, None))
    line += [("rule ", None), (clean(alert.rule, _MAX_NAME), "code")]
    return line


def _joined(parts: list[Line]) -> Line:
    line: Line = []
    for i, part in enumerate(parts):
        if i:
            line.append((SEP, None))
        line += part
    return line


# First match wins; `whole_word` needles must be a word of the rule's name, not part of one.
# A score rule's emoji (None here) depends on its direction: see `_score_emoji`.
_RULE_EMOJI: tuple[tuple[str, bool, str | None], ...] = (
    ("breakdown", False, "🔻"),
    ("breakout", False, "🚀"),
    ("rsi", True, "📉"),
    ("score", False, None),
    ("flip", False, "🔄"),
)


def _emoji(alert: Alert) -> str:
    rule = alert.rule.lower()
    words = set(re.split(r"[^a-z0-9]+", rule))
    for needle, whole_word, emoji in _RULE_EMOJI:
        if needle in (words if whole_word else rule):
            return emoji or _score_emoji(alert, words)
    return "🔔"


def _score_emoji(alert: Alert, words: set[str]) -> str:
    """Up or down as the rule's name says, else by the score's side of 50."""
    if "down" in words:
        return "📉"
    if "up" in words:
        return "📈"
    value = _number(alert, "value")
    if value is None:
        return "🔔"
    return "📈" if value >= 50 else "📉"


def _when(alert: Alert) -> str:
    """Bar close in New York time (HH:MM ET, with the date if delayed); the date for daily bars."""
    try:
        minutes = Timeframe.parse(alert.timeframe).minutes
    except ValueError:
        minutes = 0  # unknown timeframe: show the bar's own time
    try:
        start = datetime.fromtimestamp(alert.bar_time, UTC)
        if minutes is None:
            # A daily bar's time is its session date at 00:00 UTC.
            return start.date().isoformat()
        close = (start + timedelta(minutes=minutes)).astimezone(ET)
    except (OverflowError, ValueError, OSError):
        return ""  # a time no calendar can show: leave it out
    return f"{close:%Y-%m-%d %H:%M} ET" if alert.delayed else f"{close:%H:%M} ET"


# -- values and text --------------------------------------------------------------------


def _number(alert: Alert, key: str) -> float | None:
    value = alert.values.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _price(x: float) -> str:
    return f"{x:.2f}" if abs(x) >= 1 else f"{x:.4g}"


def _signed(x: float, digits: int) -> str:
    """`+1.2`, U+2212 minus then `18`, or `0.0` without a sign once rounded to nothing."""
    text = f"{abs(x):.{digits}f}"
    if float(text) == 0:
        return text
    return ("+" if x > 0 else MINUS) + text


def clean(text: str, limit: int) -> str:
    """Hostile text made fit to show: controls as spaces, lone surrogates as `?`, at most
    `limit` characters (cut with "…"). Not escaped: that is the caller's format's business."""
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates cannot be sent
    text = _CONTROL.sub(" ", text)
    if len(text) > limit:
        text = text[: limit - 1] + ELLIPSIS
    return text


def _units(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts (an emoji outside the BMP is 2)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _piece(text: str, tag: str | None, as_html: bool) -> str:
    if not as_html:
        return text
    escaped = html.escape(text, quote=False)
    return f"<{tag}>{escaped}</{tag}>" if tag else escaped


def _compose(lines: list[Line], *, as_html: bool, limit: int) -> str:
    if limit < 1:
        raise ValueError(f"max_length must be >= 1, got {limit}")
    segments: list[Segment] = []
    for i, line in enumerate(lines):
        if i:
            segments.append(("\n", None))
        segments += line
    pieces = [_piece(text, tag, as_html) for text, tag in segments]
    whole = "".join(pieces)
    if _units(whole) <= limit:
        return whole
    # Whole pieces while they fit with room for a final "…"; then as much of the next
    # piece's text as fits, re-escaped and re-tagged, so no tag or entity is ever cut.
    out: list[str] = []
    used = 0
    for (text, tag), piece in zip(segments, pieces, strict=True):
        size = _units(piece)
        if used + size <= limit - 1:
            out.append(piece)
            used += size
            continue
        out.append(_fit(text, tag, as_html, limit - used))
        break
    return "".join(out)


def _fit(text: str, tag: str | None, as_html: bool, room: int) -> str:
    """The longest prefix of `text` + "…" that fits `room` as a piece; at worst a bare "…"."""
    lo, hi = 0, len(text)
    while lo < hi:  # largest n with the piece of text[:n] + "…" fitting
        mid = (lo + hi + 1) // 2
        if _units(_piece(text[:mid] + ELLIPSIS, tag, as_html)) <= room:
            lo = mid
        else:
            hi = mid - 1
    piece = _piece(text[:lo] + ELLIPSIS, tag, as_html)
    return piece if _units(piece) <= room else ELLIPSIS
