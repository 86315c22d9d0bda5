"""The pre-market and close digests: one message with every symbol's score and the day's alerts.

A digest is an `Alert` (rule `premarket_digest` / `close_digest`, symbol
`ALL`), so it goes through the outbox to every sink with the same
at-least-once delivery and the same id-based deduplication: a restart that
runs the job twice still sends one digest per session.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from daemon.backend import DaemonBackend
from signals.alerts import Alert, alert_id

DIGEST_SYMBOL = "ALL"
TITLES = {"premarket_digest": "Pre-market digest", "close_digest": "Close digest"}


def digest_alert(kind: str, backend: DaemonBackend, now: float, recent: Sequence[Alert]) -> Alert:
    """The digest of `kind` for the session of `now` (epoch s)."""
    if kind not in TITLES:
        raise ValueError(f"unknown digest {kind!r}; expected one of {sorted(TITLES)}")
    day = int(now) // 86_400 * 86_400
    today = [a for a in recent if a.rule not in TITLES and a.time >= day]
    parts: list[str] = []
    values: dict[str, float | str | None] = {}
    first = None
    for sym in backend.symbols():
        bd = backend.breakdown(sym)
        first = first or bd
        if bd is None or math.isnan(bd.score):
            parts.append(f"{sym} warming up")
            values[f"{sym}_score"] = None
        else:
            parts.append(f"{sym} {bd.score:.0f}/100 {bd.label}")
            values[f"{sym}_score"] = round(bd.score, 2)
        values[f"{sym}_alerts_today"] = float(sum(1 for a in today if a.symbol == sym))
    if today:
        rules = sorted({a.rule for a in today})
        values["rules_today"] = ", ".join(rules)
    when = datetime.fromtimestamp(now, UTC).date().isoformat()
    title = f"{TITLES[kind]} {when}: " + " · ".join(parts) + f" · {len(today)} alerts today"
    return Alert(
        id=alert_id(kind, DIGEST_SYMBOL, "1d", day),
        rule=kind,
        symbol=DIGEST_SYMBOL,
        timeframe="1d",
        bar_time=day,
        time=int(now),
        title=title,
        values=values,
        score=None if first is None or math.isnan(first.score) else first.score,
        label="warming up" if first is None else first.label,
        breakdown={} if first is None else first.as_dict(),
    )
