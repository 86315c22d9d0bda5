"""The rule state machines: evaluations in, alerts out.

Per (rule, symbol) the book keeps the value at the previous closed bar (for
crossings), whether the rule is armed (hysteresis), the bar it last fired on
(at most one alert per bar), when it last fired (cooldown) and whether an
`only_once` rule is spent. Everything is vectorised per rule across the
symbols of an evaluation; time is passed in.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from signals.alerts import SEVERITIES, Alert, alert_id
from signals.arrays import BoolArray, FloatArray, IntArray, RowMemo
from signals.engine import Evaluation
from signals.indicators.swing import FIB_LEVEL_NAMES, FIB_RATIOS
from signals.rules.spec import RuleSpec
from signals.score import Breakdown

NONE = np.iinfo(np.int64).min

# Context every alert carries so sinks can render the standard message.
CONTEXT_COLUMNS = (
    "close", "prev_close", "rsi14", "macd_hist", "atr_pct", "volume_signal",
    "rs_roc20", "breadth20", "rates_delta20",
)  # fmt: skip

FIB_LABELS = {
    name: f"Fib {r * 100:.1f}%" for name, r in zip(FIB_LEVEL_NAMES, FIB_RATIOS, strict=True)
}
LEVEL_LABELS = {
    "prior_day_high": "prior-day high",
    "prior_day_low": "prior-day low",
    "donchian_high20": "20-day high",
    "donchian_low20": "20-day low",
    **FIB_LABELS,
}

_STATE_FIELDS = ("armed", "prev", "last_fire", "fired_bar", "done")


class _RuleState:
    """Arrays over the book's symbol rows for one rule."""

    def __init__(self, spec: RuleSpec) -> None:
        self.spec = spec
        # Parsed once: the spec's properties parse text on every read.
        self.cooldown_s = spec.cooldown_s
        self.expires_at = spec.expires_at
        self.rearms = spec.rearm_below is not None or spec.rearm_above is not None
        self.armed = np.zeros(0, dtype=np.bool_)
        self.prev = np.zeros(0)
        self.last_fire = np.zeros(0, dtype=np.int64)
        self.fired_bar = np.zeros(0, dtype=np.int64)
        self.done = np.zeros(0, dtype=np.bool_)

    def grow(self, n: int) -> None:
        k = n - len(self.armed)
        if k <= 0:
            return
        self.armed = np.r_[self.armed, np.full(k, self.spec.start_armed)]
        self.prev = np.r_[self.prev, np.full(k, np.nan)]
        self.last_fire = np.r_[self.last_fire, np.full(k, NONE, np.int64)]
        self.fired_bar = np.r_[self.fired_bar, np.full(k, NONE, np.int64)]
        self.done = np.r_[self.done, np.zeros(k, np.bool_)]


class RuleBook:
    """Runs rule specs over engine evaluations and returns the alerts they fire."""

    def __init__(self, specs: Sequence[RuleSpec]) -> None:
        self.specs = tuple(s for s in specs if s.enabled)
        self._rules = {s.name: _RuleState(s) for s in self.specs}
        self._rows: dict[str, int] = {}
        self._symbols: list[str] = []
        self._row_memo = RowMemo()
        self._quiet = False

    @contextmanager
    def quietly(self) -> Iterator[None]:
        """Advance rule state without making alerts (a warm-up's alerts are history).

        Inside, `evaluate` returns no alerts but arms, fires, cools down and
        re-arms exactly as it would outside: only the `Alert` objects, the
        costly part, are not built.
        """
        before, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = before

    def timeframes(self) -> set[str]:
        """The timeframes the enabled rules run on."""
        return {s.timeframe for s in self.specs}

    def _row_of(self, symbols: Sequence[str]) -> IntArray:
        key, rows = self._row_memo.get(symbols)
        if rows is not None:
            return rows
        out = np.empty(len(symbols), dtype=np.int64)
        for i, s in enumerate(key):
            row = self._rows.get(s)
            if row is None:
                row = self._rows[s] = len(self._symbols)
                self._symbols.append(s)
            out[i] = row
        for st in self._rules.values():
            st.grow(len(self._symbols))
        return self._row_memo.put(key, out)

    def evaluate(
        self,
        timeframe: str,
        ev: Evaluation,
        *,
        closed: bool,
        now: int,
        levels: Mapping[str, FloatArray] | None = None,
        regular: BoolArray | None = None,
        context: Mapping[str, Breakdown] | None = None,
        delayed: bool = False,
        only_sessions: str | None = None,
    ) -> list[Alert]:
        """Alerts fired by `ev` (closed bars if `closed`, else forming bars) of `timeframe`.

        `only_sessions` ("regular" or "extended") runs only the rules that say so
        (the pipeline feeds extended-hours rules from their own engine).

        `levels` are breakout levels aligned with `ev` (`prior_day_high`,
        `donchian_high20`, `fib_*`, and the `_low` mirrors); `regular` marks
        bars inside regular hours (default: all); `context` gives the score
        breakdown to attach per symbol (default: the evaluation's own).
        """
        if len(ev) == 0:
            return []
        rows = self._row_of(ev.symbol)
        alerts: list[Alert] = []
        for st in self._rules.values():
            spec = st.spec
            if spec.timeframe != timeframe or (not closed and not spec.evaluates_forming):
                continue
            if only_sessions is not None and spec.sessions != only_sessions:
                continue
            alerts += self._run(st, ev, rows, closed, now, levels, regular, context, delayed)
        return alerts

    def _run(
        self,
        st: _RuleState,
        ev: Evaluation,
        rows: IntArray,
        closed: bool,
        now: int,
        levels: Mapping[str, FloatArray] | None,
        regular: BoolArray | None,
        context: Mapping[str, Breakdown] | None,
        delayed: bool,
    ) -> list[Alert]:
        spec = st.spec
        applies: BoolArray | None = None  # None: every element (the usual case)
        if spec.symbols:
            applies = np.isin(np.asarray(ev.symbol, dtype=object), spec.symbols)
        if spec.sessions == "regular" and regular is not None:
            applies = regular if applies is None else applies & regular
        cur = _column(ev, "close" if spec.operator == "breakout" else spec.value)
        prev = st.prev[rows]
        level: FloatArray | None = None
        level_name: list[str | None] | None = None
        # NaN compares False without a warning: no np.errstate needed.
        if spec.operator == "breakout":
            cond, level, level_name = _breakout(spec, ev, levels)
        else:
            cond = _condition(spec, cur, prev)
        if applies is not None:
            cond &= applies
        expired = st.expires_at is not None and now >= st.expires_at
        if expired or not cond.any():  # most bars: nothing can fire, so skip the bookkeeping
            fire = np.zeros(0, np.int64)
        else:
            ok = cond & st.armed[rows] & ~st.done[rows] & (st.fired_bar[rows] != ev.time)
            if st.cooldown_s:
                last = st.last_fire[rows]
                ok &= (last == NONE) | (now - last >= st.cooldown_s)
            fire = np.flatnonzero(ok)
        alerts = (
            []
            if self._quiet or not len(fire)
            else [
                self._alert(
                    spec,
                    ev,
                    int(i),
                    now,
                    float(cur[i]),
                    np.nan if level is None else float(level[i]),
                    None if level_name is None else level_name[i],
                    context,
                    delayed,
                )
                for i in fire
            ]
        )
        fired_rows = rows[fire]
        if len(fire):
            st.fired_bar[fired_rows] = ev.time[fire]
            st.last_fire[fired_rows] = now
            if st.rearms:
                st.armed[fired_rows] = False
            if spec.frequency == "only_once":
                st.done[fired_rows] = True
        if closed:
            # Hysteresis and the previous value move on closed bars only.
            touch, value = (rows, cur) if applies is None else (rows[applies], cur[applies])
            if spec.rearm_below is not None:
                rearm: BoolArray | None = value <= spec.rearm_below
            elif spec.rearm_above is not None:
                rearm = value >= spec.rearm_above
            else:
                rearm = None
            if rearm is not None:
                if len(fire):
                    rearm &= ~np.isin(touch, fired_rows)
                st.armed[touch[rearm]] = True
            st.prev[touch] = value
        return alerts

    def _alert(
        self,
        spec: RuleSpec,
        ev: Evaluation,
        i: int,
        now: int,
        value: float,
        level: float,
        level_name: str | None,
        context: Mapping[str, Breakdown] | None,
        delayed: bool,
    ) -> Alert:
        symbol = ev.symbol[i]
        bd = context.get(symbol) if context is not None else None
        if bd is None:
            bd = ev.breakdown(i)
        values: dict[str, float | str | None] = {"value": _opt(value)}
        for c in CONTEXT_COLUMNS:
            values[c] = _opt(float(ev.columns[c][i]))
        if context is not None and symbol in context:
            # A rule on a short timeframe explains itself with the daily picture,
            # the same one its score and breakdown come from.
            for part in bd.parts:
                column = ev.signals[part.name].raw
                if column in values and column != "volume_signal":
                    values[column] = _opt(part.raw)
        if spec.operator == "breakout":
            values["rvol"] = values["volume_signal"]
            values["level"] = _opt(level)
            values["level_name"] = level_name
        elif spec.value not in values:
            values[spec.value] = _opt(value)
        severity = spec.severity
        for tier in spec.severity_tiers:
            x = float(_column(ev, tier.value)[i]) if tier.value in ev.columns else np.nan
            if x >= tier.at_least and SEVERITIES.index(tier.level) > SEVERITIES.index(severity):
                severity = tier.level
        return Alert(
            id=alert_id(spec.name, symbol, spec.timeframe, int(ev.time[i])),
            rule=spec.name,
            symbol=symbol,
            timeframe=spec.timeframe,
            bar_time=int(ev.time[i]),
            time=now,
            severity=severity,
            title=_title(spec, symbol, values, level_name),
            values=values,
            score=_opt(bd.score),
            label=bd.label,
            breakdown=bd.as_dict(),
            delayed=delayed,
        )

    # -- persistence --------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Plain data (JSON-able) of every rule's state, for the outbox transaction and snapshots."""
        return {
            "symbols": list(self._symbols),
            "rules": {
                name: {f: getattr(st, f).tolist() for f in _STATE_FIELDS}
                for name, st in self._rules.items()
            },
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load `state()` output; rules no longer defined are dropped, new rules start fresh."""
        self._rows = {s: i for i, s in enumerate(state["symbols"])}
        self._row_memo.clear()
        self._symbols = list(state["symbols"])
        n = len(self._symbols)
        for name, st in self._rules.items():
            saved = state["rules"].get(name)
            st.grow(n)
            if saved is None:
                continue
            st.armed = np.array(saved["armed"], dtype=np.bool_)
            st.prev = np.array(saved["prev"], dtype=np.float64)
            st.last_fire = np.array(saved["last_fire"], dtype=np.int64)
            st.fired_bar = np.array(saved["fired_bar"], dtype=np.int64)
            st.done = np.array(saved["done"], dtype=np.bool_)


def _column(ev: Evaluation, name: str) -> FloatArray:
    col = ev.columns.get(name)
    if col is None:
        raise KeyError(f"rule value {name!r} is not an engine column")
    return col


def _condition(spec: RuleSpec, cur: FloatArray, prev: FloatArray) -> BoolArray:
    op = spec.operator
    if op in ("crossing_up", "crossing_down", "greater_than", "less_than"):
        th = float(spec.threshold)  # type: ignore[arg-type]  # checked by RuleSpec.check
        if op == "crossing_up":
            return (cur > th) & (prev <= th)
        if op == "crossing_down":
            return (cur < th) & (prev >= th)
        return cur > th if op == "greater_than" else cur < th
    lo, hi = float(spec.lower), float(spec.upper)  # type: ignore[arg-type]
    inside_now = (cur >= lo) & (cur <= hi)
    inside_before = (prev >= lo) & (prev <= hi)
    if op == "exiting_channel":
        return inside_before & ~inside_now & ~np.isnan(cur)
    came_from = {"any": ~inside_before & ~np.isnan(prev), "above": prev > hi, "below": prev < lo}
    return inside_now & came_from[spec.entering_from]


def _breakout(
    spec: RuleSpec, ev: Evaluation, levels: Mapping[str, FloatArray] | None
) -> tuple[BoolArray, FloatArray, list[str | None]]:
    """Volume at or above `min_rvol` while the close crosses a level; names the furthest crossed."""
    n = len(ev)
    loud = np.flatnonzero(ev.columns["volume_signal"] >= spec.min_rvol)
    cond = np.zeros(n, np.bool_)
    level = np.full(n, np.nan)
    label: list[str | None] = [None] * n
    if not len(loud):  # the usual minute: no volume to break out with, no level to look at
        return cond, level, label
    # Levels only where the volume is there: every step is per element.
    close, prev = ev.columns["close"][loud], ev.columns["prev_close"][loud]
    lv = {k: v[loud] for k, v in (levels or {}).items()}
    crossed_any, at, names = _crossed(spec, close, prev, lv)
    cond[loud] = crossed_any
    level[loud] = at
    for i, name in zip(loud.tolist(), names, strict=True):
        label[i] = name
    return cond, level, label


def _crossed(
    spec: RuleSpec, close: FloatArray, prev: FloatArray, lv: Mapping[str, FloatArray]
) -> tuple[BoolArray, FloatArray, list[str | None]]:
    """Per element: whether the close crossed a breakout level, the furthest one, its label."""
    n = len(close)
    up = spec.direction == "up"
    names: list[str] = []
    cols: list[FloatArray] = []
    fib_pick: IntArray = np.zeros(n, np.int64)
    fibs: list[str] = []
    side = "high" if up else "low"
    if "prior_day" in spec.levels and f"prior_day_{side}" in lv:
        names.append(f"prior_day_{side}")
        cols.append(lv[f"prior_day_{side}"])
    if "donchian20" in spec.levels and f"donchian_{side}20" in lv:
        names.append(f"donchian_{side}20")
        cols.append(lv[f"donchian_{side}20"])
    if "fib" in spec.levels:
        fibs = [f for f in FIB_LEVEL_NAMES if f in lv]
        if fibs:
            grid = np.column_stack([lv[f] for f in fibs])
            # The nearest Fibonacci level beyond the previous close, in the breakout's direction.
            beyond = np.where(grid > prev[:, None] if up else grid < prev[:, None], grid, np.nan)
            pick = np.all(np.isnan(beyond), axis=1)
            safe = np.where(np.isnan(beyond), np.inf if up else -np.inf, beyond)
            j = np.argmin(safe, axis=1) if up else np.argmax(safe, axis=1)
            nearest = np.where(pick, np.nan, safe[np.arange(n), j])
            names.append("fib")
            cols.append(nearest)
            fib_pick = j
    if not cols:
        return np.zeros(n, np.bool_), np.full(n, np.nan), [None] * n
    grid = np.column_stack(cols)
    crossed = (
        (close[:, None] > grid) & (prev[:, None] <= grid)
        if up
        else (close[:, None] < grid) & (prev[:, None] >= grid)
    )
    masked = np.where(crossed, grid, -np.inf if up else np.inf)
    k = np.argmax(masked, axis=1) if up else np.argmin(masked, axis=1)
    any_cross: BoolArray = np.asarray(crossed.any(axis=1), dtype=np.bool_)
    level = np.where(any_cross, grid[np.arange(n), k], np.nan)
    label: list[str | None] = [None] * n
    for i in np.flatnonzero(any_cross).tolist():  # few: only where a level was crossed
        name = names[k[i]]
        label[i] = LEVEL_LABELS[fibs[fib_pick[i]] if name == "fib" else name]
    return any_cross, level, label


class _SafeValues(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def _title(
    spec: RuleSpec, symbol: str, values: Mapping[str, float | str | None], level_name: str | None
) -> str:
    base = {
        "symbol": symbol,
        "rule": spec.name,
        "timeframe": spec.timeframe,
        "threshold": spec.threshold,
        "level_name": level_name or "",
    }
    template = spec.title or "{symbol} {rule}"
    fields = _SafeValues({k: (v if v is not None else float("nan")) for k, v in values.items()})
    fields.update({k: v for k, v in base.items() if v is not None})
    try:
        return string.Formatter().vformat(template, (), fields)
    except (ValueError, TypeError):
        return f"{symbol} {spec.name}"


def _opt(x: float) -> float | None:
    return None if np.isnan(x) else x
