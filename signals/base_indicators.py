"""The built-in indicators of one engine, by name, and the base columns they make.

Every symbol's own columns (prices, RSI, MACD, ATR, volume, Donchian and
swing levels) come from `own`; the columns measured against another symbol or
a yield (returns, relative strength, breadth, rates) from `linked`. Both take
the state-only inputs of the step (`StepInputs`) and, with `commit`, advance
the indicators; the lags of `close`, the RS ratio and the rates are pushed by
the engine once a step is done.
"""

from __future__ import annotations

import numpy as np

from signals.arrays import FloatArray, IntArray
from signals.bar import BarBatch
from signals.config import EngineConfig
from signals.evaluation import FIB_COLUMNS
from signals.indicators.atr import ATR
from signals.indicators.columnar import Columnar, Window
from signals.indicators.donchian import Donchian
from signals.indicators.ema import EMA
from signals.indicators.macd import MACD
from signals.indicators.rsi import RSI
from signals.indicators.rvol import RelativeVolume
from signals.indicators.swing import Swing
from signals.indicators.volume_ratio import VolumeRatio
from signals.step_inputs import StepInputs


def proxy_yield(price: float | FloatArray, duration: float) -> FloatArray:
    """A yield level (percentage points, up to a constant) implied by a bond ETF's price:
    dy = -dP/P / duration, so y = -100 * ln(P) / duration. NaN where there is no price."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(-100.0 * np.log(price) / duration, dtype=np.float64)


class BaseIndicators:
    """The indicators behind the base columns, one row per symbol."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.rsi = RSI(cfg.rsi_period)
        self.macd = MACD(cfg.macd_fast, cfg.macd_slow, cfg.macd_signal)
        self.atr = ATR(cfg.atr_period)
        self.donchian = Donchian(cfg.donchian_period)
        self.swing = Swing(cfg.swing_lookback)
        self.volume_ratio = VolumeRatio(cfg.volume_period)
        # Intraday, volume is measured against the same minute of past sessions.
        self.rvol = (
            RelativeVolume(cfg.rvol_sessions, cfg.minutes_per_session) if cfg.intraday else None
        )
        self.rs_fast = EMA(cfg.rs_ema_fast)
        self.rs_slow = EMA(cfg.rs_ema_slow)
        self.close_lag = Window(cfg.change_period)
        self.ratio_lag = Window(cfg.change_period)
        self.rates_lag = Window(cfg.change_period)

    def named(self) -> dict[str, Columnar]:
        """Every indicator by name: what snapshots key its state by."""
        states: dict[str, Columnar] = {
            "rsi": self.rsi, "macd": self.macd, "atr": self.atr, "donchian": self.donchian,
            "swing": self.swing, "volume_ratio": self.volume_ratio, "close_lag": self.close_lag,
            "ratio_lag": self.ratio_lag, "rates_lag": self.rates_lag,
            "rs_ema_fast": self.rs_fast, "rs_ema_slow": self.rs_slow,
        }  # fmt: skip
        if self.rvol is not None:
            states["rvol"] = self.rvol
        return states

    def own(
        self, rows: IntArray, b: BarBatch, pre: StepInputs, commit: bool
    ) -> dict[str, FloatArray]:
        """The columns of each symbol's own bars: prices, RSI, MACD, ATR, volume, levels."""
        c, h, lo, v = b.close, b.high, b.low, b.volume
        if commit:
            rsi = self.rsi.update(rows, c)
            macd, macd_sig, macd_hist = self.macd.update(rows, c)
            atr = self.atr.update(rows, h, lo, c)
            self.donchian.push(rows, h, lo)
            self.swing.push(rows, h, lo)
            self.volume_ratio.push(rows, v)
        else:
            rsi = self.rsi.peek(rows, c)
            macd, macd_sig, macd_hist = self.macd.peek(rows, c)
            atr = self.atr.peek(rows, h, lo, c)
        don_hi, don_lo = pre.donchian
        sw = Swing.place(pre.swing, c)
        vratio = np.asarray(v / pre.volume_normal, dtype=np.float64)
        rvol = pre.nan
        if self.rvol is not None:
            assert b.session is not None and b.minute is not None
            step = self.rvol.update if commit else self.rvol.peek
            rvol = step(rows, b.session, b.minute, v)
        with np.errstate(divide="ignore", invalid="ignore"):
            atr_pct = 100.0 * atr / c
        cols: dict[str, FloatArray] = {  # in the order of BASE_COLUMNS
            "open": b.open, "high": h, "low": lo, "close": c, "volume": v,
            "prev_close": pre.prev_close,
            "rsi14": rsi, "macd": macd, "macd_signal": macd_sig, "macd_hist": macd_hist,
            "atr14": atr, "atr_pct": atr_pct,
            "volume_ratio": vratio, "rvol": rvol,
            "volume_signal": vratio if self.rvol is None else rvol,
            "donchian_high20": don_hi, "donchian_low20": don_lo,
            "swing_high": sw.swing_high, "swing_low": sw.swing_low,
            "swing_dir": sw.direction, "fib_ratio": sw.fib_ratio,
        }  # fmt: skip
        for j, name in enumerate(FIB_COLUMNS):
            cols[name] = sw.levels[:, j]
        return cols

    def linked(
        self,
        rows: IntArray,
        b: BarBatch,
        pre: StepInputs,
        commit: bool,
        proxy: tuple[int, float] | None,
    ) -> dict[str, FloatArray]:
        """The columns measured against other symbols or a yield: returns, RS, breadth, rates.

        `proxy` is the (row, duration) of a rates proxy when the yield comes from its close.
        """
        c = b.close
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
                assert proxy is not None
                row, duration = proxy
                y = np.full(len(rows), proxy_yield(close_now[row], duration))
                rates_delta = y - pre.lag_rates
            else:
                assert pre.rates_delta is not None
                y, rates_delta = pre.y, pre.rates_delta
            has_ratio = ~np.isnan(ratio)
            rs_fast = self.rs_fast.step_where(rows, ratio, has_ratio, advance=commit)
            rs_slow = self.rs_slow.step_where(rows, ratio, has_ratio, advance=commit)
            rs_spread = rs_fast / rs_slow - 1.0
        return {
            "ret20": ret20, "rs_ratio": ratio, "rs_roc20": rs_roc,
            "rs_ema_fast": rs_fast, "rs_ema_slow": rs_slow, "rs_ema_spread": rs_spread,
            "breadth20": breadth, "rates": y, "rates_delta20": rates_delta,
        }  # fmt: skip
