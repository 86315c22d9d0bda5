"""Exponential moving average, seeded with the SMA of the first `period` inputs (TA-Lib)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from signals.arrays import BoolArray, FloatArray, IntArray
from signals.indicators.columnar import Columnar, Fresh


class EMA(Columnar):
    """EMA per row with smoothing `alpha` (default 2/(period+1)); NaN until `period` inputs.

    `alpha = 1/period` gives Wilder's smoothing with TA-Lib's SMA seed.
    """

    _count: np.ndarray
    _seed: FloatArray
    _value: FloatArray

    def __init__(self, period: int, n_rows: int = 0, *, alpha: float | None = None) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period
        self.alpha = 2.0 / (period + 1) if alpha is None else alpha
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        super().__init__(n_rows)

    def _state_spec(self) -> Mapping[str, Fresh]:
        return {"_count": (0, None), "_seed": (0.0, None), "_value": (np.nan, None)}

    def peek(self, rows: IntArray, x: FloatArray) -> FloatArray:
        """The EMA if the forming inputs `x` closed now; does not mutate."""
        prev = self._value[rows]
        if not np.isnan(prev).any():  # every row warm (the usual case): the recursion alone
            return prev + self.alpha * (x - prev)
        return self._seeding(rows, x, prev)

    def _seeding(self, rows: IntArray, x: FloatArray, prev: FloatArray) -> FloatArray:
        seeded = (self._seed[rows] + x) / self.period
        at_seed = self._count[rows] + 1 == self.period
        return np.where(
            np.isnan(prev), np.where(at_seed, seeded, np.nan), prev + self.alpha * (x - prev)
        )

    def update(self, rows: IntArray, x: FloatArray) -> FloatArray:
        """Advance `rows` by one closed input each; returns their EMA."""
        prev = self._value[rows]
        cold = np.isnan(prev)
        if cold.any():
            value = self._seeding(rows, x, prev)
            self._seed[rows] += np.where(cold, x, 0.0)
        else:  # warm rows no longer add to their seed (adding 0.0 changes nothing)
            value = prev + self.alpha * (x - prev)
        self._count[rows] += 1
        self._value[rows] = value
        return value

    def step_where(
        self, rows: IntArray, x: FloatArray, mask: BoolArray, *, advance: bool
    ) -> FloatArray:
        """Feed `x` to the rows in `mask` only (NaN elsewhere): `update` if `advance`, else `peek`.

        For composites whose input does not exist yet on some rows (a first
        bar has no change, a MACD line is not yet defined).
        """
        step = self.update if advance else self.peek
        if mask.all():  # the usual case once warm: no rows to leave out
            return step(rows, x)
        out = np.full(len(rows), np.nan)
        out[mask] = step(rows[mask], x[mask])
        return out

    def value(self, rows: IntArray) -> FloatArray:
        """The current (last closed) EMA of `rows`."""
        return self._value[rows]


def ema_batch(x: pl.Series, period: int, *, alpha: float | None = None) -> pl.Series:
    """Batch reference: EMA seeded with the SMA of the first `period` values, as TA-Lib does.

    polars' `ewm_mean(adjust=False)` starts from the first value instead; so the
    first `period` values are replaced by their mean, and the recursion runs from there.
    """
    a = 2.0 / (period + 1) if alpha is None else alpha
    x = x.cast(pl.Float64)
    if x.len() < period:
        return pl.Series(x.name, [None] * x.len(), dtype=pl.Float64)
    seed = pl.Series([x.head(period).mean()], dtype=pl.Float64)
    tail = pl.concat([seed, x.slice(period)]).ewm_mean(alpha=a, adjust=False)
    return pl.concat([pl.Series([None] * (period - 1), dtype=pl.Float64), tail]).rename(x.name)
