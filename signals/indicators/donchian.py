"""Donchian channel: the highest high and lowest low of the previous `period` bars."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl

from signals.arrays import FloatArray, IntArray
from signals.indicators.columnar import Columnar, Window


class Donchian(Columnar):
    """Breakout levels per row: the channel of the `period` bars before the current one.

    The current bar is excluded, so a close above the upper level is a breakout
    of the prior range. NaN until `period` previous bars exist.
    """

    def __init__(self, period: int = 20, n_rows: int = 0) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period
        self._highs = Window(period)
        self._lows = Window(period)
        super().__init__(n_rows)

    def _children(self) -> Iterator[Columnar]:
        yield self._highs
        yield self._lows

    def levels(self, rows: IntArray) -> tuple[FloatArray, FloatArray]:
        """The (upper, lower) levels of the `period` bars taken so far (NaN until that many)."""
        upper = self._highs.raw(rows).max(axis=1)
        lower = self._lows.raw(rows).min(axis=1)
        full = self._highs.full(rows)
        if not full.all():
            upper, lower = np.where(full, upper, np.nan), np.where(full, lower, np.nan)
        return upper, lower

    def peek(
        self, rows: IntArray, high: FloatArray, low: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """The (upper, lower) levels valid for the forming bar; does not mutate.

        `high` and `low` do not enter the result (the current bar is excluded);
        they are taken so that `peek` and `update` share one signature.
        """
        return self.levels(rows)

    def update(
        self, rows: IntArray, high: FloatArray, low: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """The (upper, lower) levels for this closed bar, then take the bar into the channel."""
        levels = self.levels(rows)
        self.push(rows, high, low)
        return levels

    def push(self, rows: IntArray, high: FloatArray, low: FloatArray) -> None:
        """Take a closed bar into the channel (what `update` does after reading the levels)."""
        self._highs.push(rows, high)
        self._lows.push(rows, low)


def donchian_batch(high: pl.Series, low: pl.Series, period: int = 20) -> pl.DataFrame:
    """Batch reference: rolling max/min over `period` bars, shifted one bar (null until warm)."""
    return pl.DataFrame(
        {
            "donchian_high": high.cast(pl.Float64).rolling_max(window_size=period).shift(1),
            "donchian_low": low.cast(pl.Float64).rolling_min(window_size=period).shift(1),
        }
    )
