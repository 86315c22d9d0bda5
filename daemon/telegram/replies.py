"""Command replies as Telegram HTML: every value that comes from outside is escaped.

Tables go in `<pre>` blocks so their columns line up in a monospace font.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import datetime

from daemon.telegram.subscribers import NEW_YORK, Subscriber
from signals.score import Breakdown


def number(value: float | None) -> str:
    """A compact number: `—` when missing, more decimals for small magnitudes."""
    if value is None or not math.isfinite(value):
        return "\N{EM DASH}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.4f}"


def format_subscriber(sub: Subscriber, now: float) -> str:
    """One chat's settings, as /start, /settings and /status show them."""
    symbols = ", ".join(sub.symbols) if sub.symbols else "all"
    parts = [
        f"Symbols: {html.escape(symbols)}",
        f"minimum severity: {html.escape(sub.min_severity)}",
        f"quiet hours: {sub.quiet} ET" if sub.quiet else "quiet hours: off",
    ]
    if sub.muted_until > now:
        until = datetime.fromtimestamp(sub.muted_until, NEW_YORK)
        parts.append(f"muted until {until:%a %H:%M} ET")
    state = "" if sub.active else " (unsubscribed)"
    return " · ".join(parts) + state


def format_breakdown(symbol: str, bd: Breakdown) -> str:
    """/score: the score, then each signal's raw value, sub-score and weight."""
    score = "warming up" if math.isnan(bd.score) else f"{bd.score:.0f}/100 {bd.label}"
    rows = [f"{'signal':<8} {'raw':>10} {'sub':>6} {'weight':>7}"]
    for part in bd.parts:
        weight = f"{part.weight * 100:.1f}%" if part.available else "\N{EM DASH}"
        sub = "\N{EM DASH}" if math.isnan(part.sub) else f"{part.sub:.1f}"
        rows.append(f"{part.name:<8} {number(part.raw):>10} {sub:>6} {weight:>7}")
    table = html.escape("\n".join(rows))
    return f"<b>{html.escape(symbol)}</b> score <b>{html.escape(score)}</b>\n<pre>{table}</pre>"


def format_levels(symbol: str, levels: Mapping[str, float | None], close: float | None) -> str:
    """/levels: the named levels, highest first, with the last close among them."""
    known = sorted(
        ((n, v) for n, v in levels.items() if v is not None and math.isfinite(v)),
        key=lambda item: -item[1],
    )
    rows = [(name, number(value)) for name, value in known]
    if close is not None and math.isfinite(close):
        at = next((i for i, (_, v) in enumerate(known) if v < close), len(known))
        rows.insert(at, ("\N{BLACK RIGHT-POINTING TRIANGLE} close", number(close)))
    rows += [
        (name, "\N{EM DASH}") for name, v in levels.items() if v is None or not math.isfinite(v)
    ]
    if not rows:
        return f"No levels for {html.escape(symbol)} yet."
    width = max(len(name) for name, _ in rows)
    table = html.escape("\n".join(f"{name:<{width}} {value:>10}" for name, value in rows))
    return f"<b>{html.escape(symbol)} levels</b>\n<pre>{table}</pre>"


def format_health(health: Mapping[str, object], active: int, total: int) -> str:
    """/health: the backend's figures and the subscriber counts."""
    rows = [f"{key}: {value}" for key, value in health.items()]
    rows.append(f"subscribers: {active} active of {total}")
    return "<b>Health</b>\n<pre>" + html.escape("\n".join(rows)) + "</pre>"


def format_subscribers(subs: Sequence[Subscriber], active: int, total: int, now: float) -> str:
    """/subscribers: the counts and one line per chat (up to what the caller passed)."""
    rows = []
    for sub in subs:
        flags = [
            "active" if sub.active else "off",
            ",".join(sub.symbols) or "all",
            f">={sub.min_severity}",
        ]
        if sub.quiet:
            flags.append(f"quiet {sub.quiet}")
        if sub.muted_until > now:
            flags.append("muted")
        rows.append(f"{sub.chat_id} {' '.join(flags)}")
    head = f"<b>Subscribers</b>: {active} active of {total}"
    if not rows:
        return head
    more = f"\n… and {total - len(rows)} more" if total > len(rows) else ""
    return head + "\n<pre>" + html.escape("\n".join(rows)) + "</pre>" + more
