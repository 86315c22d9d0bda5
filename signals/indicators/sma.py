"""Simple moving average: the mean of the last `period` closed inputs (TA-Lib SMA)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import polars as pl

from signals.arrays import FloatArray, IntArray
from signals.indicators.columnar import Columnar, Fresh, Window


class SMA(Columnar):
    """SMA per row; NaN until `period` inputs have been seen."""

    _sum: FloatArray

    def __init__(self, period: int, n_rows: int = 0) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period
        self._window = Window(period)
        super().__init__(n_rows)

    def _state_spec(self) -> Mapping[str, Fresh]:
        return {"_sum": (0.0, None)}

    def _children(self) -> Iterator[Columnar]:
        yield self._window

    def _step(self, rows: IntArray, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        full = self._window.full(rows)
        total = self._sum[rows] + x - np.where(full, self._window.oldest(rows), 0.0)
        warm = self._window.count(rows) + 1 >= self.period
        return total, np.where(warm, total / self.period, np.nan)

    def update(self, rows: IntArray, x: FloatArray) -> FloatArray:
        """Advance `rows` by one closed input each; returns their SMA."""
        total, value = self._step(rows, x)
        self._sum[rows] = total
        self._window.push(rows, x)
        return value

    def peek(self, rows: IntArray, x: FloatArray) -> FloatArray:
        """The SMA if the forming inputs `x` closed now; does not mutate."""
        return self._step(rows, x)[1]


def sma_batch(x: pl.Series, period: int) -> pl.Series:
    """Batch reference: TA-Lib SMA (null until `period` values)."""
    return x.cast(pl.Float64).rolling_mean(window_size=period)
