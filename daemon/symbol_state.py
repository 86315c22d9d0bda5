"""The per-symbol state MQTT publishes retained as `<base>/<SYMBOL>/state`.

Each regular-session minute brings the price, RVOL and the breakout flag. The
daily values (score, label, RSI, ATR %, relative strength) belong to the
daily bar: the forming one during the session, the closed one at the
session's last minute. After the close, overnight and over weekends no daily
bar is forming, so the last known values are carried on, together with the
session they belong to (`daily_time`, the session date) and whether that bar
is final (`daily_closed`): a Home Assistant sensor never turns `unknown` just
because the market closed. The last alert of each symbol rides along
(`last_alert` and its rule, severity and time).

Everything here lives as long as the process (the `Ingest` that owns it); the
last alerts are seeded from the outbox at start-up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from signals.alerts import Alert
from signals.evaluation import Evaluation
from signals.pipeline import Step
from signals.score import label

State = dict[str, float | str | bool | None]

# The breakout binary sensor stays on this long after a volume breakout alert.
BREAKOUT_FLAG_S = 1800
# Home Assistant keeps at most 255 characters of a sensor's state.
LAST_ALERT_CHARS = 255


@dataclass(frozen=True)
class _Daily:
    time: int  # the daily bar's label: its session date at 00:00 UTC
    closed: bool
    values: State

    def newer_than(self, other: _Daily | None) -> bool:
        """A later session, or the same session's closed bar over its forming peek."""
        if other is None or self.time > other.time:
            return True
        return self.time == other.time and (self.closed or not other.closed)


class SymbolStates:
    """The last known values of each symbol, and the state to publish after each step."""

    def __init__(self, breakout_flag_s: int = BREAKOUT_FLAG_S) -> None:
        self._breakout_flag_s = breakout_flag_s
        self._daily: dict[str, _Daily] = {}
        self._alerts: dict[str, Alert] = {}

    def note_alerts(self, alerts: Iterable[Alert]) -> None:
        """Remember each symbol's latest alert (by decision time; a late one does not
        replace a newer one)."""
        for alert in alerts:
            known = self._alerts.get(alert.symbol)
            if known is None or alert.time >= known.time:
                self._alerts[alert.symbol] = alert

    def compose(self, step: Step, breakouts: Mapping[str, int]) -> dict[str, State]:
        """The state of each symbol with a regular-session minute in `step`.

        `breakouts` maps a symbol to the time of its last volume breakout alert.
        """
        self._note_daily(step.forming_daily, closed=False)
        self._note_daily(step.closed.get("1d"), closed=True)
        minute = step.closed.get("1m")
        if minute is None:
            return {}
        out: dict[str, State] = {}
        close, rvol = minute.columns["close"], minute.columns["rvol"]
        for i, sym in enumerate(minute.symbol):  # a burst of minutes: the last one wins
            end = int(minute.time[i]) + 60
            state: State = {"price": _num(close[i]), "rvol": _num(rvol[i]), "time": _iso(end)}
            daily = self._daily.get(sym)
            if daily is not None:
                state.update(daily.values)
            alert = self._alerts.get(sym)
            if alert is not None:
                state.update(_last_alert(alert))
            last = breakouts.get(sym)
            state["breakout"] = last is not None and end - last < self._breakout_flag_s
            out[sym] = state
        return out

    def _note_daily(self, ev: Evaluation | None, *, closed: bool) -> None:
        if ev is None or not len(ev):
            return
        c = ev.columns
        latest: dict[str, int] = {}  # symbol -> its row of the latest bar in `ev`
        for j, sym in enumerate(ev.symbol):
            if sym not in latest or ev.time[j] >= ev.time[latest[sym]]:
                latest[sym] = j
        for sym, j in latest.items():
            t, score = int(ev.time[j]), float(c["score"][j])
            values: State = {
                "score": _num(score), "label": label(score), "rsi14": _num(c["rsi14"][j]),
                "atr_pct": _num(c["atr_pct"][j]), "rs_roc20": _num(c["rs_roc20"][j]),
                "daily_time": datetime.fromtimestamp(t, UTC).date().isoformat(),
                "daily_closed": closed,
            }  # fmt: skip
            daily = _Daily(t, closed, values)
            if daily.newer_than(self._daily.get(sym)):
                self._daily[sym] = daily


def _last_alert(alert: Alert) -> State:
    return {
        "last_alert": alert.title[:LAST_ALERT_CHARS],
        "last_alert_rule": alert.rule,
        "last_alert_severity": alert.severity,
        "last_alert_time": _iso(alert.time),
    }


def _iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
