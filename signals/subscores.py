"""The sub-score mappings of the built-in signals: raw values to a 0-100 score.

Every function here is vectorised over numpy arrays and maps NaN (signal not
available: warming up, missing benchmark, no rates source) to NaN. 50 is
neutral; above 50 favours the symbol long.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from signals.arrays import FloatArray

# RSI(14) -> sub-score, piecewise linear: the 35-42 dip zone scores highest.
RSI_POINTS: tuple[tuple[float, float], ...] = (
    (0, 60),
    (30, 75),
    (35, 90),
    (42, 90),
    (50, 55),
    (60, 45),
    (70, 20),
    (80, 5),
    (100, 0),
)
_RSI_X = np.array([p[0] for p in RSI_POINTS], dtype=np.float64)
_RSI_Y = np.array([p[1] for p in RSI_POINTS], dtype=np.float64)


def _f(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def sub_rsi(rsi: npt.ArrayLike) -> FloatArray:
    """RSI(14) through the piecewise-linear points of `RSI_POINTS`."""
    r = _f(rsi)
    return np.where(np.isnan(r), np.nan, np.interp(r, _RSI_X, _RSI_Y))


def sub_macd(hist: npt.ArrayLike, atr: npt.ArrayLike) -> FloatArray:
    """50 + 50*tanh(h / (0.25*ATR14)); unavailable when ATR is not positive (no range to scale by)."""
    h, a = _f(hist), _f(atr)
    scaled = a > 0.0
    # Divided only where ATR is positive: no 0/0 to silence (np.errstate costs more than this).
    x = np.zeros(np.broadcast(h, a).shape)
    np.divide(h, 0.25 * a, out=x, where=scaled)
    return np.where(scaled, 50.0 + 50.0 * np.tanh(x), np.nan)


# Fibonacci position -> sub-score, for an up-swing retracement r; a down-swing
# bounce b uses the same intervals and scores 100 minus these.
_FIB_UP_BELOW_ZERO = 75.0
_FIB_UP = np.array([_FIB_UP_BELOW_ZERO, 60.0, 80.0, 45.0, 20.0])
_FIB_SCORES = np.concatenate([100.0 - _FIB_UP, _FIB_UP])  # down-swing bands, then up-swing bands
# The band of r: one step at each edge r reaches (0 and .382 count as reached, .618
# and .786 only once passed), so [.382, .618] is one closed band.
_FIB_REACHED = np.array([0.0, 0.382])
_FIB_PASSED = np.array([0.618, 0.786])


def sub_fib(direction: npt.ArrayLike, ratio: npt.ArrayLike) -> FloatArray:
    """Up-swing (+1): r<0 75, [0,.382) 60, [.382,.618] 80, (.618,.786] 45, >.786 20; down-swing (-1): 100 minus."""
    d, r = _f(direction), _f(ratio)
    # A table lookup, not np.select: this runs twice a minute on the hot path.
    band = np.searchsorted(_FIB_REACHED, r, side="right") + np.searchsorted(
        _FIB_PASSED, r, side="left"
    )
    score = _FIB_SCORES[band + len(_FIB_UP) * (d > 0)]
    return np.where(np.isnan(r) | np.isnan(d), np.nan, score)


def sub_volume(ratio: npt.ArrayLike, close: npt.ArrayLike, prev_close: npt.ArrayLike) -> FloatArray:
    """50 + 50*tanh(max(ratio-1, 0))*sign(close - previous close)."""
    v, c, p = _f(ratio), _f(close), _f(prev_close)
    return 50.0 + 50.0 * np.tanh(np.maximum(v - 1.0, 0.0)) * np.sign(c - p)


_ATR_X = np.array([1.5, 2.5, 4.0])
_ATR_Y = np.array([50.0, 50.0, 20.0])


def sub_atr(atr_pct: npt.ArrayLike) -> FloatArray:
    """55 below 1.5 %; 50 up to 2.5 %; linear to 20 at 4.0 %; 20 above."""
    a = _f(atr_pct)
    out = np.interp(a, _ATR_X, _ATR_Y)
    out = np.where(a < 1.5, 55.0, out)
    return np.where(np.isnan(a), np.nan, out)


def _tanh_score(x: npt.ArrayLike, scale: float, sign: float = 1.0) -> FloatArray:
    return 50.0 + sign * 50.0 * np.tanh(_f(x) / scale)


def sub_rs(rs_roc20: npt.ArrayLike) -> FloatArray:
    """50 + 50*tanh(rs_roc20 / 0.03)."""
    return _tanh_score(rs_roc20, 0.03)


def sub_breadth(breadth20: npt.ArrayLike) -> FloatArray:
    """50 + 50*tanh(breadth20 / 0.03)."""
    return _tanh_score(breadth20, 0.03)


def sub_rates(rates_delta20: npt.ArrayLike) -> FloatArray:
    """50 - 50*tanh(rates_delta20 / 0.25): rising 2-year yields weigh on small caps."""
    return _tanh_score(rates_delta20, 0.25, sign=-1.0)
