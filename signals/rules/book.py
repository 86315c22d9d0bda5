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
from dataclasses import dataclass
from typing import Any

import numpy as np

from signals.alerts import SEVERITIES, Alert, alert_id
from signals.arrays import BoolArray, FloatArray, IntArray, RowMemo
from signals.engine import Evaluation
from signals.rules.conditions import breakout, condition
from signals.rules.spec import RuleSpec
from signals.score import Breakdown

NONE = np.iinfo(np.int64).min

# Context every alert carries so sinks can render the standard message.
CONTEXT_COLUMNS = (
    "close", "prev_close", "rsi14", "macd_hist", "atr_pct", "volume_signal",
    "rs_roc20", "breadth20", "rates_delta20",
)  # fmt: skip

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

    def fired(self, rows: IntArray, bar_time: IntArray, now: int) -> None:
        """The rule fired at `rows` for bars of `bar_time`, at `now`."""
        self.fired_bar[rows] = bar_time
        self.last_fire[rows] = now
        if self.rearms:
            self.armed[rows] = False
        if self.spec.frequency == "only_once":
            self.done[rows] = True

    def close(self, rows: IntArray, value: FloatArray, fired_rows: IntArray) -> None:
        """Closed bars of `value` at `rows`: re-arm past the hysteresis, remember the value."""
        spec = self.spec
        rearm: BoolArray | None = None
        if spec.rearm_below is not None:
            rearm = value <= spec.rearm_below
        elif spec.rearm_above is not None:
            rearm = value >= spec.rearm_above
        if rearm is not None:
            if len(fired_rows):
                rearm &= ~np.isin(rows, fired_rows)
            self.armed[rows[rearm]] = True
        self.prev[rows] = value


@dataclass(frozen=True)
class RuleOptions:
    """What an evaluation of the rules may come with besides its values.

    `levels` are breakout levels aligned with the evaluation (`prior_day_high`,
    `donchian_high20`, `fib_*`, and the `_low` mirrors); `regular` marks bars
    inside regular hours (default: all); `context` gives the score breakdown to
    attach per symbol (default: the evaluation's own); `delayed` marks the
    alerts as late; `only_sessions` ("regular" or "extended") runs only the
    rules that say so (the pipeline feeds extended-hours rules from their own
    engine).
    """

    levels: Mapping[str, FloatArray] | None = None
    regular: BoolArray | None = None
    context: Mapping[str, Breakdown] | None = None
    delayed: bool = False
    only_sessions: str | None = None


_PLAIN = RuleOptions()


@dataclass(frozen=True)
class _Run:
    """One `RuleBook.evaluate` call: closed or forming bars, at `now`, with its options."""

    closed: bool
    now: int
    options: RuleOptions


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
        options: RuleOptions = _PLAIN,
    ) -> list[Alert]:
        """Alerts fired by `ev` (closed bars if `closed`, else forming bars) of `timeframe`."""
        if len(ev) == 0:
            return []
        rows = self._row_of(ev.symbol)
        run = _Run(closed, now, options)
        alerts: list[Alert] = []
        for st in self._rules.values():
            spec = st.spec
            if spec.timeframe != timeframe or (not closed and not spec.evaluates_forming):
                continue
            if options.only_sessions is not None and spec.sessions != options.only_sessions:
                continue
            alerts += self._run(st, ev, rows, run)
        return alerts

    def _run(self, st: _RuleState, ev: Evaluation, rows: IntArray, run: _Run) -> list[Alert]:
        spec = st.spec
        applies: BoolArray | None = None  # None: every element (the usual case)
        if spec.symbols:
            applies = np.isin(np.asarray(ev.symbol, dtype=object), spec.symbols)
        regular = run.options.regular
        if spec.sessions == "regular" and regular is not None:
            applies = regular if applies is None else applies & regular
        cur = _column(ev, "close" if spec.operator == "breakout" else spec.value)
        level: FloatArray | None = None
        level_name: list[str | None] | None = None
        # NaN compares False without a warning: no np.errstate needed.
        if spec.operator == "breakout":
            cond, level, level_name = breakout(spec, ev, run.options.levels)
        else:
            cond = condition(spec, cur, st.prev[rows])
        if applies is not None:
            cond &= applies
        fire = _firing(st, ev, rows, cond, run.now)
        alerts = (
            []
            if self._quiet or not len(fire)
            else [
                self._alert(
                    spec,
                    ev,
                    int(i),
                    run,
                    (
                        float(cur[i]),
                        np.nan if level is None else float(level[i]),
                        None if level_name is None else level_name[i],
                    ),
                )
                for i in fire
            ]
        )
        fired_rows = rows[fire]
        if len(fire):
            st.fired(fired_rows, ev.time[fire], run.now)
        if run.closed:
            # Hysteresis and the previous value move on closed bars only.
            touch, value = (rows, cur) if applies is None else (rows[applies], cur[applies])
            st.close(touch, value, fired_rows)
        return alerts

    def _alert(
        self,
        spec: RuleSpec,
        ev: Evaluation,
        i: int,
        run: _Run,
        hit: tuple[float, float, str | None],
    ) -> Alert:
        """The alert of element `i`; `hit` is (value, level, level name) where it fired."""
        value, level, level_name = hit
        context = run.options.context
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
        return Alert(
            id=alert_id(spec.name, symbol, spec.timeframe, int(ev.time[i])),
            rule=spec.name,
            symbol=symbol,
            timeframe=spec.timeframe,
            bar_time=int(ev.time[i]),
            time=run.now,
            severity=_severity(spec, ev, i),
            title=_title(spec, symbol, values, level_name),
            values=values,
            score=_opt(bd.score),
            label=bd.label,
            breakdown=bd.as_dict(),
            delayed=run.options.delayed,
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


def _firing(st: _RuleState, ev: Evaluation, rows: IntArray, cond: BoolArray, now: int) -> IntArray:
    """Positions where the rule fires: its condition holds, it is armed, not spent or cooling down."""
    expired = st.expires_at is not None and now >= st.expires_at
    if expired or not cond.any():  # most bars: nothing can fire, so skip the bookkeeping
        return np.zeros(0, np.int64)
    ok = cond & st.armed[rows] & ~st.done[rows] & (st.fired_bar[rows] != ev.time)
    if st.cooldown_s:
        last = st.last_fire[rows]
        ok &= (last == NONE) | (now - last >= st.cooldown_s)
    return np.flatnonzero(ok)


def _severity(spec: RuleSpec, ev: Evaluation, i: int) -> str:
    """The spec's severity, raised by any tier whose value at element `i` reaches it."""
    severity = spec.severity
    for tier in spec.severity_tiers:
        x = float(_column(ev, tier.value)[i]) if tier.value in ev.columns else np.nan
        if x >= tier.at_least and SEVERITIES.index(tier.level) > SEVERITIES.index(severity):
            severity = tier.level
    return severity


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
