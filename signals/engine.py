"""The columnar engine: bars in, every indicator, sub-score and the score out.

One `Engine` serves one timeframe. It holds a row per symbol in every
indicator and in the rings; `on_bars` advances the rows a batch touches
(closed bars), `peek` evaluates forming bars without changing anything. A batch
may hold several bar times: it is processed time by time, vectorised across
the symbols of each time.

Each step makes the base columns, then the signals of `EngineConfig.signals`
in order: their own columns, their sub-scores and the composite score.

Cross-symbol signals (relative strength against a benchmark, breadth against a
comparator) need the other symbol's bar of the same time: it must come in the
same batch or an earlier one, else the signal is unavailable for that bar.
The daemon batches a minute's bars to keep it so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from signals.arrays import BoolArray, FloatArray, IntArray, RowMemo
from signals.bar import BarBatch
from signals.base_indicators import BaseIndicators
from signals.config import EngineConfig, Links
from signals.engine_snapshot import SCHEMA, check, settings_of, state_arrays, state_of
from signals.evaluation import (
    COLUMNS,
    FIB_COLUMNS,
    Breakdowns,
    Evaluation,
    JoinedColumns,
    Rejection,
    check_signals,
    columns_of,
    join,
)
from signals.rates import RatesSeries
from signals.ring import Rings
from signals.score import Composite
from signals.signal import Signal, SignalStep
from signals.step_inputs import StepInputs
from signals.time_runs import run_part, time_runs

__all__ = [
    "COLUMNS",
    "FIB_COLUMNS",
    "Breakdowns",
    "Engine",
    "EngineConfig",
    "Evaluation",
    "JoinedColumns",
    "Links",
    "Rejection",
    "join",
]


class Engine:
    """Incremental indicators and the score for every symbol of one timeframe."""

    def __init__(
        self, config: EngineConfig | None = None, rates: RatesSeries | None = None
    ) -> None:
        self.config = cfg = config or EngineConfig()
        self.rates = rates
        self._rows: dict[str, int] = {}
        self._row_memo = RowMemo()
        self._symbols: list[str] = []
        self._bench = np.zeros(0, dtype=np.int64)
        self._comp = np.zeros(0, dtype=np.int64)
        self._last_time = np.zeros(0, dtype=np.int64)
        self._last_close = np.zeros(0)
        self._last_ret = np.zeros(0)
        self.rings = Rings(cfg.ring_capacity)
        self._ind = BaseIndicators(cfg)
        check_signals(cfg.signals)
        self._composite = Composite(cfg.weights, cfg.min_signals)
        self.signals: Mapping[str, Signal] = cfg.signals  # in composite order
        self.columns = columns_of(cfg.signals)  # every output column, in order
        self._signal_state = {
            name: s.state(cfg) for name, s in cfg.signals.items() if s.state is not None
        }
        # Every piece of per-row state by name: what snapshots key it by.
        self._states = self._ind.named() | {
            f"signal.{n}": st for n, st in self._signal_state.items()
        }
        self.rejected_total: dict[str, int] = {}
        # Bumped by every change of state; a peek's state-only inputs are kept
        # for the rows they were made for until it moves (see `_before`).
        self._version = 0
        self._peek_memo: tuple[IntArray, int, int, RatesSeries | None, StepInputs] | None = None

    @property
    def version(self) -> int:
        """A counter that moves with every change of state (closed bars, new rows, a restore)."""
        return self._version

    # -- symbols -----------------------------------------------------------------
    @property
    def symbols(self) -> Sequence[str]:
        """Every symbol with a row, in row order."""
        return tuple(self._symbols)

    def row(self, symbol: str) -> int:
        """The row of `symbol`, adding it (and its benchmark and comparator) if new."""
        row = self._rows.get(symbol)
        return self._add(symbol) if row is None else row

    def rows_of(self, symbols: Sequence[str]) -> IntArray:
        """Rows of many symbols at once (new symbols are added); read-only, memoised."""
        key, rows = self._row_memo.get(symbols)
        if rows is not None:
            return rows
        known = self._rows
        new = [s for s in dict.fromkeys(key) if s not in known]  # each new symbol once
        if new:
            # Room for exactly the new symbols (and their links), not the next power of two:
            # a 2,000-symbol start would otherwise carry 2,558 rows of every array.
            links = [self.config.links_for(s) for s in new]
            extra = {x for k in links for x in (k.benchmark, k.comparator) if x is not None}
            need = len(self._symbols) + len(set(new) | (extra - known.keys()))
            if need > len(self._bench):
                self._grow(need)
            for s in new:
                self.row(s)
        rows = np.fromiter(map(known.__getitem__, key), dtype=np.int64, count=len(key))
        return self._row_memo.put(key, rows)

    def _link_row(self, symbol: str, other: str | None) -> int:
        if other is None or other == symbol:
            return -1
        return self._rows[other] if other in self._rows else self._add(other)

    def _add(self, symbol: str) -> int:
        self._version += 1
        row = len(self._symbols)
        self._rows[symbol] = row
        self._symbols.append(symbol)
        n = row + 1
        if n > len(self._bench):
            self._grow(max(8, 2 * n))
        # Registered before linking, so a benchmark that links back finds this row.
        links = self.config.links_for(symbol)
        self._bench[row] = self._link_row(symbol, links.benchmark)
        self._comp[row] = self._link_row(symbol, links.comparator)
        return row

    def _grow(self, n: int) -> None:
        self._version += 1
        old = len(self._bench)
        self._bench = np.concatenate([self._bench, np.full(n - old, -1, np.int64)])
        self._comp = np.concatenate([self._comp, np.full(n - old, -1, np.int64)])
        self._last_time = np.concatenate(
            [self._last_time, np.full(n - old, np.iinfo(np.int64).min)]
        )
        self._last_close = np.concatenate([self._last_close, np.full(n - old, np.nan)])
        self._last_ret = np.concatenate([self._last_ret, np.full(n - old, np.nan)])
        self.rings.resize(n)
        for state in self._states.values():
            state.resize(n)

    # -- snapshots -------------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays): everything needed to continue exactly where this engine is.

        All arrays share their first dimension (the allocated rows), so they fit
        one table. State is keyed by name (see `signals.engine_snapshot`);
        restoring needs an engine with the same settings and named state.
        """
        meta = {
            "schema": SCHEMA,
            "settings": settings_of(self.config),
            "state": list(self._states),
            "symbols": list(self._symbols),
            "rejected_total": dict(self.rejected_total),
        }
        arrays: dict[str, np.ndarray] = {
            "bench": self._bench.copy(),
            "comp": self._comp.copy(),
            "last_time": self._last_time.copy(),
            "last_close": self._last_close.copy(),
            "last_ret": self._last_ret.copy(),
            **self.rings.state(),
        }
        arrays.update(state_arrays(self._states))
        return meta, arrays

    def check(self, meta: Mapping[str, Any]) -> None:
        """`ValueError` (saying what differs) unless `restore` can take this snapshot."""
        check(meta, self.config, list(self._states))

    def restore(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Continue from `snapshot()` output; `ValueError`, changing nothing, if `check` refuses it."""
        self.check(meta)
        self._version += 1
        self._symbols = list(meta["symbols"])
        self._rows = {sym: i for i, sym in enumerate(self._symbols)}
        self._row_memo.clear()
        self.rejected_total = dict(meta["rejected_total"])
        self._bench = np.asarray(arrays["bench"], dtype=np.int64).copy()
        self._comp = np.asarray(arrays["comp"], dtype=np.int64).copy()
        self._last_time = np.asarray(arrays["last_time"], dtype=np.int64).copy()
        self._last_close = np.asarray(arrays["last_close"], dtype=np.float64).copy()
        self._last_ret = np.asarray(arrays["last_ret"], dtype=np.float64).copy()
        self.rings.load_state(dict(arrays))
        for name, state in self._states.items():
            state.load_state(state_of(name, arrays))

    def newest_time(self) -> int | None:
        """Start time of the newest closed bar of any symbol, or None before the first."""
        n = len(self._symbols)
        newest = int(self._last_time[:n].max()) if n else np.iinfo(np.int64).min
        return None if newest == np.iinfo(np.int64).min else newest

    def last_time(self, symbol: str) -> int | None:
        """Start time of the last closed bar of `symbol`, or None."""
        row = self._rows.get(symbol)
        if row is None or self._last_time[row] == np.iinfo(np.int64).min:
            return None
        return int(self._last_time[row])

    # -- bars --------------------------------------------------------------------
    def on_bars(self, batch: BarBatch) -> Evaluation:
        """Advance every symbol in `batch` by its closed bar(s); returns their values."""
        return self._run(batch, commit=True)

    def peek(self, batch: BarBatch) -> Evaluation:
        """Evaluate forming bars as if they closed now. Changes nothing."""
        return self._run(batch, commit=False)

    def _run(self, batch: BarBatch, commit: bool) -> Evaluation:
        if self.config.intraday and (batch.session is None or batch.minute is None):
            raise ValueError("an intraday engine needs session and minute columns in every batch")
        rows = self.rows_of(batch.symbol)
        unique = self._row_memo.unique(rows)
        n = len(batch)
        order, runs = time_runs(batch.time)
        rejected: list[Rejection] = []
        parts: list[Evaluation] = []
        for a, b in runs:
            idx = None if order is None else order[a:b]  # None: positions a..b-1 as they are
            group = rows[a:b] if idx is None else rows[idx]
            if idx is None and b - a == n:
                group = rows  # the whole batch: the memoised rows themselves (see `_before`)
            t = int(batch.time[a] if idx is None else batch.time[idx[0]])
            ok, refused = self._accept(group, t, unique)
            for j, reason in refused:
                pos = a + j if idx is None else int(idx[j])
                rejected.append(Rejection(batch.symbol[pos], t, reason))
            if ok is None:  # every bar of this time is new: the common case
                sub = batch if b - a == n and idx is None else run_part(batch, a, b, idx)
            else:
                if not ok.any():
                    continue
                group = group[ok]
                sub = batch.take(np.arange(a, b)[ok] if idx is None else idx[ok])
            parts.append(
                self._evaluation(tuple(sub.symbol), sub.time, self._step(group, t, sub, commit))
            )
        for r in rejected:
            self.rejected_total[r.reason] = self.rejected_total.get(r.reason, 0) + 1
        if not parts:
            empty = {c: np.zeros(0) for c in self.columns}
            return self._evaluation((), np.zeros(0, np.int64), empty, tuple(rejected))
        return join(parts, tuple(rejected))

    def _evaluation(
        self,
        symbol: tuple[str, ...],
        time: IntArray,
        columns: Mapping[str, FloatArray],
        rejected: tuple[Rejection, ...] = (),
    ) -> Evaluation:
        cfg = self.config
        return Evaluation(
            symbol, time, columns, rejected, cfg.weights, cfg.min_signals, signals=self.signals
        )

    def _accept(
        self, group: IntArray, t: int, unique: bool
    ) -> tuple[BoolArray | None, list[tuple[int, str]]]:
        """Which bars of one time may advance their symbol: newer than its last bar, once each.

        The mask is None when all of them may (the common case); the refused ones
        come as (position in `group`, reason).
        """
        last = self._last_time[group]
        newer = last < t
        if unique and newer.all():
            return None, []
        first = np.ones(len(group), dtype=np.bool_)
        if not unique:
            first[:] = False
            first[np.unique(group, return_index=True)[1]] = True  # a repeat is a duplicate
        ok = first & newer
        refused = [
            (j, "out_of_order" if first[j] and last[j] > t else "duplicate")
            for j in np.flatnonzero(~ok).tolist()
        ]
        return (None if ok.all() else ok), refused

    def _before(self, rows: IntArray, t: int, keep: bool) -> StepInputs:
        """What the bars of time `t` at `rows` are measured against: the state only.

        A peek with the same (memoised, read-only) rows and time as the last one,
        with nothing changed since, finds it kept (`keep`): the forming daily bar is
        peeked every minute against a daily state that moves once a day.
        """
        memo = self._peek_memo
        if (
            memo is not None
            and memo[0] is rows
            and memo[1] == t
            and memo[2] == self._version
            and memo[3] is self.rates
        ):
            return memo[4]
        cfg = self.config
        n = len(rows)
        last_time = self._last_time
        here = last_time == t
        if self.rates is not None:
            y: FloatArray | None = np.full(n, self.rates.asof(t)[()])
        elif cfg.rates_proxy is not None and cfg.rates_proxy in self._rows:
            y = None  # the proxy's close at this time may come with the batch
        else:
            y = np.full(n, np.nan)
        lag_rates = self._ind.rates_lag.oldest(rows)
        rates_delta = None if y is None else y - lag_rates
        before = StepInputs(
            prev_close=np.where(
                last_time[rows] > np.iinfo(np.int64).min, self._last_close[rows], np.nan
            ),
            lag_close=self._ind.close_lag.oldest(rows),
            lag_ratio=self._ind.ratio_lag.oldest(rows),
            lag_rates=lag_rates,
            here_close=np.where(here, self._last_close, np.nan),
            here_ret=np.where(here, self._last_ret, np.nan),
            bench=self._bench[rows],
            comp=self._comp[rows],
            y=y,
            rates_delta=rates_delta,
            donchian=self._ind.donchian.levels(rows),
            swing=self._ind.swing.frame(rows),
            volume_normal=self._ind.volume_ratio.normal(rows),
            nan=np.full(n, np.nan),
        )
        if keep and not rows.flags.writeable and rows.base is None:
            before.freeze()
            self._peek_memo = (rows, t, self._version, self.rates, before)
        return before

    def _step(self, rows: IntArray, t: int, b: BarBatch, commit: bool) -> dict[str, FloatArray]:
        """Every output column for the bars `b` of time `t` at `rows`; `commit` advances the state."""
        pre = self._before(rows, t, keep=not commit)
        if commit:
            self._version += 1
        cfg = self.config
        proxy = None
        if pre.y is None:  # the yield comes from the proxy's close
            assert cfg.rates_proxy is not None
            proxy = (self._rows[cfg.rates_proxy], cfg.rates_proxy_duration)
        cols = self._ind.own(rows, b, pre, commit)
        cols.update(self._ind.linked(rows, b, pre, commit, proxy))
        if commit:
            self._commit(rows, t, b, cols)
        step = SignalStep(rows, t, b, MappingProxyType(cols), commit)  # a live, read-only view
        for name, s in self.signals.items():
            if s.step is not None:
                made = s.step(step, self._signal_state.get(name))
                cols.update({c: np.asarray(made[c], dtype=np.float64) for c in s.columns})
        subs = {n: s.score(*(cols[c] for c in s.inputs)) for n, s in self.signals.items()}
        cols.update({f"sub_{n}": arr for n, arr in subs.items()})
        cols["score"] = self._composite(subs)
        return cols

    def _commit(self, rows: IntArray, t: int, b: BarBatch, cols: Mapping[str, FloatArray]) -> None:
        """Advance the lags, the last bar of each row and the rings past the bars of time `t`."""
        c = b.close
        self._ind.close_lag.push(rows, c)
        self._ind.ratio_lag.push(rows, cols["rs_ratio"])
        self._ind.rates_lag.push(rows, cols["rates"])
        self._last_time[rows] = t
        self._last_close[rows] = c
        self._last_ret[rows] = cols["ret20"]
        self.rings.push(rows, {
            "time": np.full(len(rows), t), "open": b.open, "high": b.high, "low": b.low,
            "close": c, "volume": b.volume,
        })  # fmt: skip
