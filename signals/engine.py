"""The columnar engine: bars in, every indicator, sub-score and the score out.

One `Engine` serves one timeframe. It holds a row per symbol in every
indicator and in the rings; `on_bars` advances the rows a batch touches
(closed bars), `peek` evaluates forming bars without changing anything. A batch
may hold several bar times: it is processed time by time, vectorised across
the symbols of each time.

Cross-symbol signals (relative strength against a benchmark, breadth against a
comparator) need the other symbol's bar of the same time: it must come in the
same batch or an earlier one, else the signal is unavailable for that bar.
The daemon batches a minute's bars to keep it so.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain, pairwise
from types import MappingProxyType
from typing import Any

import numpy as np
import polars as pl

from signals.arrays import BoolArray, FloatArray, IntArray, RowMemo
from signals.bar import BarBatch
from signals.indicators.atr import ATR
from signals.indicators.columnar import Columnar, Window
from signals.indicators.donchian import Donchian
from signals.indicators.ema import EMA
from signals.indicators.macd import MACD
from signals.indicators.rsi import RSI
from signals.indicators.rvol import RelativeVolume
from signals.indicators.swing import FIB_RATIOS, Swing, SwingFrame
from signals.indicators.volume_ratio import VolumeRatio
from signals.rates import RatesSeries
from signals.ring import Rings
from signals.score import (
    MIN_SIGNALS,
    SIGNALS,
    Breakdown,
    Composite,
    breakdown,
    sub_atr,
    sub_breadth,
    sub_fib,
    sub_macd,
    sub_rates,
    sub_rs,
    sub_rsi,
    sub_volume,
)

FIB_COLUMNS = tuple(f"fib_{round(r * 1000):d}" for r in FIB_RATIOS)

# Which output column holds each signal's raw value.
RAW_COLUMN: Mapping[str, str] = MappingProxyType(
    {
        "rsi": "rsi14",
        "macd": "macd_hist",
        "fib": "fib_ratio",
        "volume": "volume_signal",
        "atr": "atr_pct",
        "rs": "rs_roc20",
        "breadth": "breadth20",
        "rates": "rates_delta20",
    }
)

COLUMNS: tuple[str, ...] = (
    "open", "high", "low", "close", "volume", "prev_close",
    "rsi14", "macd", "macd_signal", "macd_hist", "atr14", "atr_pct",
    "volume_ratio", "rvol", "volume_signal",
    "donchian_high20", "donchian_low20",
    "swing_high", "swing_low", "swing_dir", "fib_ratio", *FIB_COLUMNS,
    "ret20", "rs_ratio", "rs_roc20", "rs_ema_fast", "rs_ema_slow", "rs_ema_spread",
    "breadth20", "rates", "rates_delta20",
    *(f"sub_{s}" for s in SIGNALS), "score",
)  # fmt: skip


@dataclass(frozen=True)
class Links:
    """A symbol's relative-strength benchmark and breadth comparator (None: no such signal)."""

    benchmark: str | None = "SPY"
    comparator: str | None = "QQQ"


@dataclass(frozen=True)
class EngineConfig:
    """Periods, links and weights. Every number of DESIGN section 5 is here to change."""

    intraday: bool = False
    rsi_period: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    atr_period: int = 14
    donchian_period: int = 20
    swing_lookback: int = 60
    volume_period: int = 20
    rvol_sessions: int = 20
    minutes_per_session: int = 390
    change_period: int = 20
    rs_ema_fast: int = 10
    rs_ema_slow: int = 40
    links: Links = Links()
    symbol_links: Mapping[str, Links] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    min_signals: int = MIN_SIGNALS
    ring_capacity: int = 300
    # Without a yield series, a short-Treasury ETF's price can stand in for the
    # 2-year yield: its log price over its duration (years), in points, inverted.
    rates_proxy: str | None = None
    rates_proxy_duration: float = 1.9

    def links_for(self, symbol: str) -> Links:
        """The links of `symbol`: its own entry, else the default."""
        return self.symbol_links.get(symbol, self.links)


@dataclass(frozen=True)
class Rejection:
    """A bar the engine refused, and why (`duplicate`, `out_of_order`, `missing_session`)."""

    symbol: str
    time: int
    reason: str


@dataclass(frozen=True)
class Evaluation:
    """What a batch produced: one element per accepted bar, in processing (time) order."""

    symbol: tuple[str, ...]
    time: IntArray
    columns: Mapping[str, FloatArray]
    rejected: tuple[Rejection, ...]
    weights: Mapping[str, float]
    min_signals: int
    # The same elements as evaluations of one bar time each, in order, when the
    # engine made them so (a batch of several times): `by_time` hands them out.
    parts: tuple[Evaluation, ...] = field(default=(), repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.symbol)

    def to_polars(self) -> pl.DataFrame:
        """One row per symbol-bar: `symbol`, `time` (epoch seconds) and every column (NaN as null)."""
        data: dict[str, object] = {"symbol": list(self.symbol), "time": self.time}
        data.update(self.columns)
        return pl.DataFrame(data).fill_nan(None)

    def take(self, idx: IntArray) -> Evaluation:
        """The elements at positions `idx` (rejections stay with the whole)."""
        symbol = self.symbol
        return Evaluation(
            symbol=tuple([symbol[i] for i in np.asarray(idx).tolist()]),
            time=self.time[idx],
            columns={c: v[idx] for c, v in self.columns.items()},
            rejected=(),
            weights=self.weights,
            min_signals=self.min_signals,
        )

    def by_time(self) -> list[Evaluation]:
        """The elements split by bar time, in time order: one evaluation per time."""
        if self.parts:
            return list(self.parts)
        times = np.unique(self.time)
        if len(times) <= 1:
            return [self]
        return [self.take(np.flatnonzero(self.time == t)) for t in times]

    def breakdown(self, i: int) -> Breakdown:
        """The score of element `i` with each signal's raw value, sub-score and weight."""
        raw = {s: float(self.columns[RAW_COLUMN[s]][i]) for s in SIGNALS}
        subs = {s: float(self.columns[f"sub_{s}"][i]) for s in SIGNALS}
        return breakdown(raw, subs, self.weights, self.min_signals)


def join(evs: Sequence[Evaluation], rejected: tuple[Rejection, ...] | None = None) -> Evaluation:
    """`evs` end to end as one evaluation (its `by_time` gives their parts back).

    Columns are joined when first read: a warm-up or backtest chunk makes
    hundreds of thousands of values per column that often nobody reads whole.
    """
    if len(evs) == 1:
        return evs[0] if rejected is None else replace(evs[0], rejected=rejected)
    parts = tuple(p for ev in evs for p in (ev.parts or (ev,)))
    first = evs[0]
    return Evaluation(
        symbol=tuple(chain.from_iterable(ev.symbol for ev in evs)),
        time=np.concatenate([ev.time for ev in evs]),
        columns=JoinedColumns([ev.columns for ev in evs]),
        rejected=tuple(r for ev in evs for r in ev.rejected) if rejected is None else rejected,
        weights=first.weights,
        min_signals=first.min_signals,
        parts=parts,
    )


class JoinedColumns(Mapping[str, FloatArray]):
    """The columns of several evaluations end to end, each concatenated on its first read."""

    def __init__(self, parts: Sequence[Mapping[str, FloatArray]]) -> None:
        self._parts = list(parts)
        self._names = tuple(self._parts[0]) if self._parts else ()
        self._joined: dict[str, FloatArray] = {}

    def __getitem__(self, name: str) -> FloatArray:
        col = self._joined.get(name)
        if col is None:
            if name not in self._names:
                raise KeyError(name)
            col = self._joined[name] = np.concatenate([p[name] for p in self._parts])
            if len(self._joined) == len(self._names):
                self._parts = []  # every column joined: the parts' arrays can go
        return col

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def proxy_yield(price: float | FloatArray, duration: float) -> FloatArray:
    """A yield level (percentage points, up to a constant) implied by a bond ETF's price:
    dy = -dP/P / duration, so y = -100 * ln(P) / duration. NaN where there is no price."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(-100.0 * np.log(price) / duration, dtype=np.float64)


class Breakdowns(Mapping[str, Breakdown]):
    """The breakdowns of an evaluation by symbol, each built only when asked for.

    Building one is Python work per symbol; a minute at 2,000 symbols asks for a
    handful (the alerts that fire), so they are made on demand.
    """

    def __init__(self, ev: Evaluation) -> None:
        self._ev = ev
        self._index: dict[str, int] | None = None

    @property
    def _pos(self) -> dict[str, int]:
        if self._index is None:  # built on the first lookup: most minutes make none
            self._index = {s: i for i, s in enumerate(self._ev.symbol)}
        return self._index

    def __getitem__(self, symbol: str) -> Breakdown:
        return self._ev.breakdown(self._pos[symbol])

    def __iter__(self) -> Iterator[str]:
        return iter(self._pos)

    def __len__(self) -> int:
        return len(self._pos)


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
        self._rsi = RSI(cfg.rsi_period)
        self._macd = MACD(cfg.macd_fast, cfg.macd_slow, cfg.macd_signal)
        self._atr = ATR(cfg.atr_period)
        self._donchian = Donchian(cfg.donchian_period)
        self._swing = Swing(cfg.swing_lookback)
        self._vratio = VolumeRatio(cfg.volume_period)
        self._rvol = (
            RelativeVolume(cfg.rvol_sessions, cfg.minutes_per_session) if cfg.intraday else None
        )
        self._rs_fast = EMA(cfg.rs_ema_fast)
        self._rs_slow = EMA(cfg.rs_ema_slow)
        self._close_lag = Window(cfg.change_period)
        self._ratio_lag = Window(cfg.change_period)
        self._rates_lag = Window(cfg.change_period)
        self._composite = Composite(cfg.weights, cfg.min_signals)
        self.rejected_total: dict[str, int] = {}
        # Bumped by every change of state; a peek's state-only inputs are kept
        # for the rows they were made for until it moves (see `_before`).
        self._version = 0
        self._peek_memo: tuple[IntArray, int, int, RatesSeries | None, _Before] | None = None

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
        for ind in self._indicators():
            ind.resize(n)

    def _indicators(self) -> list[Columnar]:
        inds: list[Columnar] = [
            self._rsi, self._macd, self._atr, self._donchian, self._swing, self._vratio,
            self._close_lag, self._ratio_lag, self._rates_lag, self._rs_fast, self._rs_slow,
        ]  # fmt: skip
        if self._rvol is not None:
            inds.append(self._rvol)
        return inds

    # -- snapshots -------------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays): everything needed to continue exactly where this engine is.

        All arrays share their first dimension (the allocated rows), so they fit
        one table. Restoring needs an engine built with the same config.
        """
        meta = {
            "symbols": list(self._symbols),
            "config": repr(self.config),
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
        for i, ind in enumerate(self._indicators()):
            arrays.update({f"ind{i}.{k}": v for k, v in ind.state().items()})
        return meta, arrays

    def restore(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Continue from `snapshot()` output; `ValueError` if it came from another config."""
        if meta["config"] != repr(self.config):
            raise ValueError("the snapshot was taken with another engine configuration")
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
        for i, ind in enumerate(self._indicators()):
            prefix = f"ind{i}."
            ind.load_state({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})

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
        order, runs = _time_runs(batch.time)
        rejected: list[Rejection] = []
        parts: list[Evaluation] = []
        for a, b in runs:
            idx = None if order is None else order[a:b]  # None: positions a..b-1 as they are
            group = rows[a:b] if idx is None else rows[idx]
            if idx is None and b - a == n:
                group = rows  # the whole batch: the memoised rows themselves (see `_before`)
            t = int(batch.time[a] if idx is None else batch.time[idx[0]])
            ok = self._accept(group, t, unique, rejected, batch, a if idx is None else idx)
            if ok is None:  # every bar of this time is new: the common case
                sub = batch if b - a == n and idx is None else _part(batch, a, b, idx)
            else:
                if not ok.any():
                    continue
                group = group[ok]
                sub = batch.take(np.arange(a, b)[ok] if idx is None else idx[ok])
            parts.append(
                Evaluation(
                    symbol=tuple(sub.symbol),
                    time=sub.time,
                    columns=self._step(group, t, sub, commit),
                    rejected=(),
                    weights=self.config.weights,
                    min_signals=self.config.min_signals,
                )
            )
        for r in rejected:
            self.rejected_total[r.reason] = self.rejected_total.get(r.reason, 0) + 1
        if not parts:
            return Evaluation(
                symbol=(),
                time=np.zeros(0, np.int64),
                columns={c: np.zeros(0) for c in COLUMNS},
                rejected=tuple(rejected),
                weights=self.config.weights,
                min_signals=self.config.min_signals,
            )
        return join(parts, tuple(rejected))

    def _accept(
        self,
        group: IntArray,
        t: int,
        unique: bool,
        rejected: list[Rejection],
        batch: BarBatch,
        where: int | IntArray,
    ) -> BoolArray | None:
        """Which bars of one time may advance their symbol: newer than its last bar, once each.

        None when all of them may (the common case). `where` locates the group in
        `batch` for the rejections: its first position, or the positions themselves.
        """
        last = self._last_time[group]
        newer = last < t
        if unique and newer.all():
            return None
        first = np.ones(len(group), dtype=np.bool_)
        if not unique:
            first[:] = False
            first[np.unique(group, return_index=True)[1]] = True  # a repeat is a duplicate
        ok = first & newer
        for j in np.flatnonzero(~ok).tolist():
            reason = "out_of_order" if first[j] and last[j] > t else "duplicate"
            pos = where + j if isinstance(where, int) else int(where[j])
            rejected.append(Rejection(batch.symbol[pos], t, reason))
        return None if ok.all() else ok

    def _before(self, rows: IntArray, t: int, keep: bool) -> _Before:
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
        lag_rates = self._rates_lag.oldest(rows)
        rates_delta = None if y is None else y - lag_rates
        before = _Before(
            prev_close=np.where(
                last_time[rows] > np.iinfo(np.int64).min, self._last_close[rows], np.nan
            ),
            lag_close=self._close_lag.oldest(rows),
            lag_ratio=self._ratio_lag.oldest(rows),
            lag_rates=lag_rates,
            here_close=np.where(here, self._last_close, np.nan),
            here_ret=np.where(here, self._last_ret, np.nan),
            bench=self._bench[rows],
            comp=self._comp[rows],
            y=y,
            rates_delta=rates_delta,
            sub_rates=None if rates_delta is None else sub_rates(rates_delta),
            donchian=self._donchian.levels(rows),
            swing=self._swing.frame(rows),
            volume_normal=self._vratio.normal(rows),
            nan=np.full(n, np.nan),
        )
        if keep and not rows.flags.writeable and rows.base is None:
            before.freeze()
            self._peek_memo = (rows, t, self._version, self.rates, before)
        return before

    def _step(self, rows: IntArray, t: int, b: BarBatch, commit: bool) -> dict[str, FloatArray]:
        cfg = self.config
        c, h, lo, v = b.close, b.high, b.low, b.volume
        n = len(rows)
        pre = self._before(rows, t, keep=not commit)
        if commit:
            self._version += 1
            rsi = self._rsi.update(rows, c)
            macd, macd_sig, macd_hist = self._macd.update(rows, c)
            atr = self._atr.update(rows, h, lo, c)
            self._donchian.push(rows, h, lo)
            self._swing.push(rows, h, lo)
            self._vratio.push(rows, v)
        else:
            rsi = self._rsi.peek(rows, c)
            macd, macd_sig, macd_hist = self._macd.peek(rows, c)
            atr = self._atr.peek(rows, h, lo, c)
        don_hi, don_lo = pre.donchian
        sw = Swing.place(pre.swing, c)
        vratio = np.asarray(v / pre.volume_normal, dtype=np.float64)
        rvol = pre.nan
        if self._rvol is not None:
            assert b.session is not None and b.minute is not None
            step = self._rvol.update if commit else self._rvol.peek
            rvol = step(rows, b.session, b.minute, v)
        volume_signal = rvol if cfg.intraday else vratio
        prev_close = pre.prev_close

        with np.errstate(divide="ignore", invalid="ignore"):
            ret20 = c / pre.lag_close - 1.0
            # Closes and 20-bar returns of every symbol at this bar time, for the links.
            close_now = pre.here_close.copy()
            ret_now = pre.here_ret.copy()
            close_now[rows] = c
            ret_now[rows] = ret20
            bench, comp = pre.bench, pre.comp
            ratio = np.where(bench >= 0, c / close_now[bench], np.nan)
            rs_roc = ratio / pre.lag_ratio - 1.0
            breadth = np.where(comp >= 0, ret20 - ret_now[comp], np.nan)
            y: FloatArray
            if pre.y is None:
                assert cfg.rates_proxy is not None
                y = np.full(
                    n, proxy_yield(close_now[self._rows[cfg.rates_proxy]], cfg.rates_proxy_duration)
                )
                rates_delta = y - pre.lag_rates
                rates_sub = sub_rates(rates_delta)
            else:
                assert pre.rates_delta is not None and pre.sub_rates is not None
                y, rates_delta, rates_sub = pre.y, pre.rates_delta, pre.sub_rates
            has_ratio = ~np.isnan(ratio)
            rs_fast = self._rs_fast.step_where(rows, ratio, has_ratio, advance=commit)
            rs_slow = self._rs_slow.step_where(rows, ratio, has_ratio, advance=commit)
            rs_spread = rs_fast / rs_slow - 1.0
            atr_pct = 100.0 * atr / c

        if commit:
            self._close_lag.push(rows, c)
            self._ratio_lag.push(rows, ratio)
            self._rates_lag.push(rows, y)
            self._last_time[rows] = t
            self._last_close[rows] = c
            self._last_ret[rows] = ret20
            self.rings.push(
                rows,
                {
                    "time": np.full(n, t),
                    "open": b.open,
                    "high": h,
                    "low": lo,
                    "close": c,
                    "volume": v,
                },
            )

        subs = {
            "rsi": sub_rsi(rsi),
            "macd": sub_macd(macd_hist, atr),
            "fib": sub_fib(sw.direction, sw.fib_ratio),
            "volume": sub_volume(volume_signal, c, prev_close),
            "atr": sub_atr(atr_pct),
            "rs": sub_rs(rs_roc),
            "breadth": sub_breadth(breadth),
            "rates": rates_sub,
        }
        cols: dict[str, FloatArray] = {  # in the order of COLUMNS
            "open": b.open, "high": h, "low": lo, "close": c, "volume": v, "prev_close": prev_close,
            "rsi14": rsi, "macd": macd, "macd_signal": macd_sig, "macd_hist": macd_hist,
            "atr14": atr, "atr_pct": atr_pct,
            "volume_ratio": vratio, "rvol": rvol, "volume_signal": volume_signal,
            "donchian_high20": don_hi, "donchian_low20": don_lo,
            "swing_high": sw.swing_high, "swing_low": sw.swing_low,
            "swing_dir": sw.direction, "fib_ratio": sw.fib_ratio,
        }  # fmt: skip
        for j, name in enumerate(FIB_COLUMNS):
            cols[name] = sw.levels[:, j]
        cols.update({
            "ret20": ret20, "rs_ratio": ratio, "rs_roc20": rs_roc,
            "rs_ema_fast": rs_fast, "rs_ema_slow": rs_slow, "rs_ema_spread": rs_spread, "breadth20": breadth,
            "rates": y, "rates_delta20": rates_delta,
        })  # fmt: skip
        for s, arr in subs.items():
            cols[f"sub_{s}"] = arr
        cols["score"] = self._composite(subs)
        return cols


@dataclass
class _Before:
    """The state-only inputs of one step (see `Engine._before`); `freeze` makes them read-only."""

    prev_close: FloatArray
    lag_close: FloatArray
    lag_ratio: FloatArray
    lag_rates: FloatArray
    here_close: FloatArray  # every row's close at this bar time (NaN: none yet)
    here_ret: FloatArray
    bench: IntArray
    comp: IntArray
    y: FloatArray | None  # None: from the proxy's close, per step
    rates_delta: FloatArray | None
    sub_rates: FloatArray | None
    donchian: tuple[FloatArray, FloatArray]
    swing: SwingFrame
    volume_normal: FloatArray
    nan: FloatArray

    def freeze(self) -> None:
        """Make every array read-only: kept ones are shared by the evaluations of many peeks."""
        arrays: list[np.ndarray | None] = [
            self.prev_close, self.lag_close, self.lag_ratio, self.lag_rates, self.here_close,
            self.here_ret, self.bench, self.comp, self.y, self.rates_delta, self.sub_rates,
            *self.donchian, self.volume_normal, self.nan,
            *(getattr(self.swing, f) for f in SwingFrame.__dataclass_fields__),
        ]  # fmt: skip
        for a in arrays:
            if a is not None:
                a.flags.writeable = False


def _time_runs(time: IntArray) -> tuple[IntArray | None, list[tuple[int, int]]]:
    """(order, runs): the batch in runs of one bar time each, in time order.

    `order` is None when the batch already is in time order; else the runs are
    ranges of `order` (a stable sort, so each time keeps its bars' batch order).
    """
    n = len(time)
    if n == 0:
        return None, []
    if time[0] == time[-1] and bool((time == time[0]).all()):  # one minute: the common case
        return None, [(0, n)]
    order: IntArray | None = None
    if not bool((time[1:] >= time[:-1]).all()):
        order = np.argsort(time, kind="stable")
        time = time[order]
    cuts = (np.flatnonzero(time[1:] != time[:-1]) + 1).tolist()
    bounds = [0, *cuts, n]
    return order, list(pairwise(bounds))


def _part(batch: BarBatch, a: int, b: int, idx: IntArray | None) -> BarBatch:
    """The bars of one run: positions a..b-1 (views), or `idx`."""
    return batch.window(a, b) if idx is None else batch.take(idx)
