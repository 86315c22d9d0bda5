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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from signals.arrays import BoolArray, FloatArray, IntArray, RowMemo
from signals.bar import BarBatch
from signals.config import EngineConfig, Links
from signals.evaluation import (
    COLUMNS,
    FIB_COLUMNS,
    RAW_COLUMN,
    Breakdowns,
    Evaluation,
    JoinedColumns,
    Rejection,
    join,
)
from signals.indicators.atr import ATR
from signals.indicators.columnar import Columnar, Window
from signals.indicators.donchian import Donchian
from signals.indicators.ema import EMA
from signals.indicators.macd import MACD
from signals.indicators.rsi import RSI
from signals.indicators.rvol import RelativeVolume
from signals.indicators.swing import Swing
from signals.indicators.volume_ratio import VolumeRatio
from signals.rates import RatesSeries
from signals.ring import Rings
from signals.score import (
    Composite,
    sub_atr,
    sub_breadth,
    sub_fib,
    sub_macd,
    sub_rates,
    sub_rs,
    sub_rsi,
    sub_volume,
)
from signals.step_inputs import StepInputs
from signals.time_runs import run_part, time_runs

__all__ = [
    "COLUMNS",
    "FIB_COLUMNS",
    "RAW_COLUMN",
    "Breakdowns",
    "Engine",
    "EngineConfig",
    "Evaluation",
    "JoinedColumns",
    "Links",
    "Rejection",
    "join",
    "proxy_yield",
]


def proxy_yield(price: float | FloatArray, duration: float) -> FloatArray:
    """A yield level (percentage points, up to a constant) implied by a bond ETF's price:
    dy = -dP/P / duration, so y = -100 * ln(P) / duration. NaN where there is no price."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(-100.0 * np.log(price) / duration, dtype=np.float64)


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
        order, runs = time_runs(batch.time)
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
                sub = batch if b - a == n and idx is None else run_part(batch, a, b, idx)
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
        lag_rates = self._rates_lag.oldest(rows)
        rates_delta = None if y is None else y - lag_rates
        before = StepInputs(
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
