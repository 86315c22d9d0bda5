"""The whole signal path: bars in, evaluations per timeframe and alerts out.

Two ways in. Daily bars (a daily backtest) go straight to the daily engine and
the daily rules. One-minute bars (live, replay, intraday backtest) go to the
1-minute engine (with the time-of-day relative volume), and are aggregated
into the regular-session daily bar (and any 5m/15m/1h a rule asks for). Daily
rules look at the forming daily bar through a non-mutating peek after every
minute, unless they only look at closed bars; the 1-minute breakout rule
takes its levels (prior-day high, 20-day high, Fibonacci) from the daily
timeframe, and every alert carries the daily score's breakdown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from signals.aggregate import Aggregator, Timeframe
from signals.alerts import Alert
from signals.arrays import BoolArray, FloatArray, IntArray
from signals.bar import BarBatch
from signals.engine import Breakdowns, Engine, EngineConfig, Evaluation, join
from signals.indicators.swing import FIB_LEVEL_NAMES
from signals.rates import RatesSeries
from signals.rules.book import RuleBook, RuleOptions
from signals.rules.spec import RuleSpec
from signals.sessions import DAY_S, SessionTable


@dataclass
class Step:
    """What one call produced: closed-bar evaluations by timeframe, the forming daily peek, alerts."""

    closed: dict[str, Evaluation] = field(default_factory=dict)
    forming_daily: Evaluation | None = None
    alerts: list[Alert] = field(default_factory=list)
    outside_hours: int = 0


@dataclass(frozen=True)
class RuleChanges:
    """What `Pipeline.replace_rules` changed, by rule name."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    total: int


class Pipeline:
    """Engines per timeframe, aggregators, and the rule book, fed in time order."""

    def __init__(
        self,
        config: EngineConfig,
        rules: Sequence[RuleSpec],
        *,
        sessions: SessionTable | None = None,
        rates: RatesSeries | None = None,
        delayed_after_s: int | None = None,
    ) -> None:
        self.config = config
        self.book = RuleBook(rules)
        self.sessions = sessions
        self.delayed_after_s = delayed_after_s
        self.daily = Engine(replace(config, intraday=False), rates)
        self.minute: Engine | None = None
        self.extended: Engine | None = None
        self._aggregators: dict[str, Aggregator] = {}
        self._engines: dict[str, Engine] = {"1d": self.daily}
        self._prior_day: tuple[IntArray, int, FloatArray, FloatArray] | None = None
        if sessions is not None:
            self.minute = Engine(replace(config, intraday=True), rates)
            self._engines["1m"] = self.minute
            if any(r.timeframe == "1m" and r.sessions == "extended" for r in self.book.specs):
                self.extended = Engine(replace(config, intraday=False), rates)
            wanted = {"1d"} | {t for t in self.book.timeframes() if t not in ("1m", "1d")}
            for name in sorted(wanted):
                self._aggregators[name] = Aggregator(Timeframe.parse(name), sessions)
                if name != "1d":
                    self._engines[name] = Engine(replace(config, intraday=False), rates)

    def snapshot(self) -> dict[str, Any]:
        """Engines, aggregators and rule state: plain data for `daemon.snapshot` to store."""
        engines = dict(self._engines)
        if self.extended is not None:
            engines["extended"] = self.extended
        return {
            "engines": {name: e.snapshot() for name, e in engines.items()},
            "aggregators": {name: a.snapshot() for name, a in self._aggregators.items()},
            "book": self.book.state(),
        }

    def restore(self, snap: Mapping[str, Any]) -> None:
        """Continue from `snapshot()` output (taken by a pipeline with the same config)."""
        engines = dict(self._engines)
        if self.extended is not None:
            engines["extended"] = self.extended
        if set(snap["engines"]) != set(engines) or set(snap["aggregators"]) != set(
            self._aggregators
        ):
            raise ValueError("the snapshot has other timeframes than this pipeline")
        for name, engine in engines.items():  # every engine checked before any is loaded
            engine.check(snap["engines"][name][0])
        for name, engine in engines.items():
            engine.restore(*snap["engines"][name])
        for name, agg in self._aggregators.items():
            agg.restore(*snap["aggregators"][name])
        self.book.restore(snap["book"])

    def replace_rules(self, rules: Sequence[RuleSpec]) -> RuleChanges:
        """Run `rules` from the next bar on; rules kept by name keep their state.

        Changed rules (same name, other definition) start fresh, as new ones do.
        Raises `ValueError` (and changes nothing) when the new rules need what this
        pipeline was not built with: a timeframe without an engine, or
        extended-hours rules without the extended engine. Those need a restart.
        """
        book = RuleBook(rules)
        missing = sorted(t for t in book.timeframes() if t not in self._engines)
        if missing:
            raise ValueError(
                f"the new rules need timeframe(s) {', '.join(missing)}, which this running "
                "pipeline does not compute: restart the daemon to add them"
            )
        if self.extended is None and any(
            r.timeframe == "1m" and r.sessions == "extended" for r in book.specs
        ):
            raise ValueError(
                "the new rules add extended-hours rules, which need the extended-hours "
                "engine: restart the daemon to add them"
            )
        old = {s.name: s for s in self.book.specs}
        new = {s.name: s for s in book.specs}
        changed = {n for n in new.keys() & old.keys() if new[n] != old[n]}
        # A changed rule starts fresh: its previous value or arming may mean
        # something else under the new definition (another column, threshold).
        state = self.book.state()
        state["rules"] = {n: v for n, v in state["rules"].items() if n not in changed}
        book.restore(state)
        self.book = book
        return RuleChanges(
            added=tuple(sorted(new.keys() - old.keys())),
            removed=tuple(sorted(old.keys() - new.keys())),
            changed=tuple(sorted(changed)),
            total=len(book.specs),
        )

    def timeframes(self) -> set[str]:
        """The timeframes this pipeline computes (`1d`, and with sessions `1m` and the rest)."""
        return set(self._engines)

    def set_rates(self, rates: RatesSeries | None) -> None:
        """A new 2-year yield series (the daily fetch) for every engine from now on."""
        for engine in (*self._engines.values(), *((self.extended,) if self.extended else ())):
            engine.rates = rates

    def engine(self, timeframe: str) -> Engine:
        """The engine of `timeframe` (`1m`, `1d`, ...)."""
        return self._engines[timeframe]

    # -- daily input ---------------------------------------------------------------
    def on_daily_bars(self, batch: BarBatch, wall_now: int | None = None) -> Step:
        """Closed daily bars (time = session date at 00:00 UTC): daily engine and daily rules."""
        ev = self.daily.on_bars(batch)
        step = Step(closed={"1d": ev})
        step.alerts = self._closed_alerts("1d", ev, wall_now)
        return step

    # -- minute input --------------------------------------------------------------
    def on_minute_bars(self, batch: BarBatch, wall_now: int | None = None) -> Step:
        """Closed 1-minute bars: every timeframe, the forming daily bar, and all rules.

        A batch spanning several minutes (a backfill burst) is run minute by
        minute, so rules see every minute in order, exactly as live.
        """
        if self.minute is None or self.sessions is None:
            raise ValueError("minute bars need a session table")
        time = batch.time
        if not len(time) or bool((time == time[0]).all()):  # one minute: the live case
            return self._one_minute(batch, wall_now)
        order = np.argsort(time, kind="stable")
        cuts = np.flatnonzero(np.diff(time[order])) + 1
        merged = Step()
        closed: dict[str, list[Evaluation]] = {}
        for idx in np.split(order, cuts):
            step = self._one_minute(batch.take(idx), wall_now)
            merged.alerts += step.alerts
            merged.outside_hours += step.outside_hours
            merged.forming_daily = step.forming_daily or merged.forming_daily
            for name, ev in step.closed.items():
                closed.setdefault(name, []).append(ev)
        # Joined once at the end (lazily, column by column), not minute by minute.
        merged.closed = {name: join(evs) for name, evs in closed.items()}
        return merged

    def _one_minute(self, batch: BarBatch, wall_now: int | None) -> Step:
        assert self.minute is not None and self.sessions is not None
        loc = self.sessions.locate(batch.time)
        regular = np.flatnonzero(loc.regular)
        step = Step(outside_hours=len(batch) - len(regular))
        if self.extended is not None:
            step.alerts += self._extended_alerts(batch, loc.regular, wall_now)
        if not len(regular):
            return step
        if len(regular) == len(batch):  # the usual case: nothing to leave out
            sub = replace(batch, session=loc.label // DAY_S, minute=loc.minute)
        else:
            sub = batch.take(regular)
            sub = replace(sub, session=loc.label[regular] // DAY_S, minute=loc.minute[regular])
        ev = self.minute.on_bars(sub)
        step.closed["1m"] = ev
        accepted = _bars_of(ev)
        for name, agg in self._aggregators.items():
            done = agg.update(accepted)
            if len(done):
                closed_ev = self._engines[name].on_bars(done)
                step.closed[name] = closed_ev
                step.alerts += self._closed_alerts(name, closed_ev, wall_now)
        # One minute's evaluation names each symbol once (the engine rejects repeats).
        forming = self._aggregators["1d"].forming(ev.symbol)
        peek = self.daily.peek(forming)
        step.forming_daily = peek
        context = Breakdowns(peek)
        levels = self._levels(ev, peek)
        now = int(ev.time.max()) + 60 if len(ev) else 0
        delayed = self._delayed(now, wall_now)
        step.alerts += self.book.evaluate(
            "1m", ev, closed=True, now=now,
            options=RuleOptions(levels, None, context, delayed, only_sessions="regular"),
        )  # fmt: skip
        step.alerts += self.book.evaluate(
            "1d", peek, closed=False, now=now,
            options=RuleOptions(context=context, delayed=delayed),
        )  # fmt: skip
        return step

    def _extended_alerts(
        self, batch: BarBatch, regular: BoolArray, wall_now: int | None
    ) -> list[Alert]:
        """1-minute rules that opted into extended hours see every bar, from their own engine
        (no time-of-day RVOL outside the session: their volume signal is the 20-bar ratio)."""
        assert self.extended is not None
        ev = self.extended.on_bars(batch)
        if not len(ev):
            return []
        forming = self._aggregators["1d"].forming(list(dict.fromkeys(ev.symbol)))
        peek = self.daily.peek(forming)
        context = Breakdowns(peek)
        pos = {
            (s, int(t)): i for i, (s, t) in enumerate(zip(batch.symbol, batch.time, strict=True))
        }
        mask = np.array(
            [bool(regular[pos[(s, int(t))]]) for s, t in zip(ev.symbol, ev.time, strict=True)]
        )
        now = int(ev.time.max()) + 60
        options = RuleOptions(
            self._levels(ev, peek), mask, context, self._delayed(now, wall_now), "extended"
        )
        return self.book.evaluate("1m", ev, closed=True, now=now, options=options)

    def flush(self, now: int, wall_now: int | None = None) -> Step:
        """Close aggregated bars whose end has passed by `now` (their last minutes never came)."""
        step = Step()
        for name, agg in self._aggregators.items():
            done = agg.flush(now)
            if len(done):
                ev = self._engines[name].on_bars(done)
                step.closed[name] = ev
                step.alerts += self._closed_alerts(name, ev, wall_now)
        return step

    # -- helpers -------------------------------------------------------------------
    def _closed_alerts(self, timeframe: str, ev: Evaluation, wall_now: int | None) -> list[Alert]:
        alerts: list[Alert] = []
        # One evaluation may span several bar times (a backtest chunk): rules see them in order.
        for part in ev.by_time():
            if not len(part):
                continue
            now = self._bar_end(timeframe, int(part.time[0]))
            context = self._daily_context(part) if timeframe != "1d" else None
            options = RuleOptions(context=context, delayed=self._delayed(now, wall_now))
            alerts += self.book.evaluate(timeframe, part, closed=True, now=now, options=options)
        return alerts

    def _bar_end(self, timeframe: str, start: int) -> int:
        if timeframe == "1d":
            if self.sessions is not None:
                i = int(np.searchsorted(self.sessions.label, start))
                if i < len(self.sessions) and self.sessions.label[i] == start:
                    return int(self.sessions.close[i])
            return start + DAY_S
        minutes = Timeframe.parse(timeframe).minutes
        return start + 60 * (minutes or 1)

    def _daily_context(self, ev: Evaluation) -> Breakdowns | None:
        if "1d" not in self._aggregators:
            return None
        return Breakdowns(self.daily.peek(self._aggregators["1d"].forming(list(ev.symbol))))

    def _levels(self, ev: Evaluation, peek: Evaluation) -> dict[str, FloatArray]:
        """Daily breakout levels aligned with the 1-minute evaluation `ev`."""
        names = ("donchian_high20", "donchian_low20", *FIB_LEVEL_NAMES)
        if peek.symbol == ev.symbol:  # the usual case: every symbol has its forming day
            out = {k: peek.columns[k] for k in names}
        else:
            pos = {s: i for i, s in enumerate(peek.symbol)}
            j = np.array([pos.get(s, -1) for s in ev.symbol], dtype=np.int64)
            found = j >= 0
            out = {
                k: np.where(found, peek.columns[k][np.maximum(j, 0)], np.nan)
                if len(peek)
                else np.full(len(ev), np.nan)
                for k in names
            }
        rows = self.daily.rows_of(ev.symbol)
        memo = self._prior_day
        if memo is None or memo[0] is not rows or memo[1] != self.daily.version:
            # The prior day moves once a day: kept for the (memoised) rows until then.
            high, low = self.daily.rings.last(rows, "high"), self.daily.rings.last(rows, "low")
            high.flags.writeable = low.flags.writeable = False
            memo = self._prior_day = (rows, self.daily.version, high, low)
        out["prior_day_high"], out["prior_day_low"] = memo[2], memo[3]
        return out

    def _delayed(self, event_end: int, wall_now: int | None) -> bool:
        return (
            wall_now is not None
            and self.delayed_after_s is not None
            and wall_now - event_end > self.delayed_after_s
        )


def _bars_of(ev: Evaluation) -> BarBatch:
    c = ev.columns
    return BarBatch(
        symbol=list(ev.symbol),
        time=ev.time,
        open=c["open"],
        high=c["high"],
        low=c["low"],
        close=c["close"],
        volume=c["volume"],
    )
