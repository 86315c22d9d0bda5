"""Average true range, Wilder's smoothing with TA-Lib's seeding."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import polars as pl

from signals.arrays import FloatArray, IntArray
from signals.indicators.columnar import Columnar, Fresh
from signals.indicators.ema import EMA, ema_batch


def true_range(high: FloatArray, low: FloatArray, prev_close: FloatArray) -> FloatArray:
    """The bar's range widened to include the previous close; NaN where that is NaN."""
    return np.maximum(high - low, np.maximum(np.abs(high - prev_close), np.abs(low - prev_close)))


class ATR(Columnar):
    """Wilder ATR per row, equal to TA-Lib's ATR; NaN until `period + 1` bars.

    True range needs the previous close, so it starts at a row's second bar;
    the first ATR is the mean of the first `period` true ranges, later ones
    smooth with Wilder's `(atr * (period - 1) + tr) / period`.
    """

    _prev: FloatArray

    def __init__(self, period: int = 14, n_rows: int = 0) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period
        # Wilder's smoothing is an EMA with alpha = 1/period and an SMA seed.
        self._avg = EMA(period, alpha=1.0 / period)
        super().__init__(n_rows)

    def _state_spec(self) -> Mapping[str, Fresh]:
        return {"_prev": (np.nan, None)}

    def _children(self) -> Iterator[Columnar]:
        yield self._avg

    def _step(
        self, rows: IntArray, high: FloatArray, low: FloatArray, *, advance: bool
    ) -> FloatArray:
        prev = self._prev[rows]
        tr = true_range(high, low, prev)
        return self._avg.step_where(rows, tr, ~np.isnan(prev), advance=advance)

    def update(
        self, rows: IntArray, high: FloatArray, low: FloatArray, close: FloatArray
    ) -> FloatArray:
        """Advance `rows` by one closed bar each; returns their ATR."""
        value = self._step(rows, high, low, advance=True)
        self._prev[rows] = close
        return value

    def peek(
        self, rows: IntArray, high: FloatArray, low: FloatArray, close: FloatArray
    ) -> FloatArray:
        """The ATR if the forming bars closed now; does not mutate.

        `close` is unused (a bar's ATR depends on the previous close) but kept
        so that `peek` takes what `update` takes.
        """
        return self._step(rows, high, low, advance=False)


def atr_batch(high: pl.Series, low: pl.Series, close: pl.Series, period: int = 14) -> pl.Series:
    """Batch reference: TA-Lib ATR (null until `period + 1` bars)."""
    bars = pl.DataFrame({"high": high, "low": low, "close": close}).cast(pl.Float64)
    prev = pl.col("close").shift(1)
    tr = bars.select(
        pl.max_horizontal(
            pl.col("high") - pl.col("low"),
            (pl.col("high") - prev).abs(),
            (pl.col("low") - prev).abs(),
        )
    ).to_series()
    atr = ema_batch(tr.slice(1), period, alpha=1.0 / period)
    # The first bar has no previous close, hence no true range.
    lead = pl.Series([None] * min(tr.len(), 1), dtype=pl.Float64)
    return pl.concat([lead, atr]).rename(close.name)
