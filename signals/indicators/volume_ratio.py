"""Volume ratio: a bar's volume over the mean volume of the previous `period` bars."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl

from signals.arrays import FloatArray, IntArray
from signals.indicators.columnar import Columnar, Window


class VolumeRatio(Columnar):
    """volume / mean(volume of the previous `period` bars) per row.

    NaN until `period` previous bars exist, and NaN when their mean is 0 (no
    normal volume to compare with).
    """

    def __init__(self, period: int = 20, n_rows: int = 0) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period
        self._volumes = Window(period)
        super().__init__(n_rows)

    def _children(self) -> Iterator[Columnar]:
        yield self._volumes

    def normal(self, rows: IntArray) -> FloatArray:
        """The mean volume of the `period` bars taken so far; NaN until that many, or if it is 0."""
        # Summed afresh each bar rather than kept as a running total, so a huge
        # volume leaving the window leaves no rounding residue behind.
        mean = self._volumes.raw(rows).sum(axis=1) / self.period
        return np.where(self._volumes.full(rows) & (mean > 0.0), mean, np.nan)

    def peek(self, rows: IntArray, volume: FloatArray) -> FloatArray:
        """The ratio if the forming bar closed with `volume`; does not mutate."""
        return np.asarray(volume / self.normal(rows), dtype=np.float64)

    def update(self, rows: IntArray, volume: FloatArray) -> FloatArray:
        """The ratio of this closed bar, then take its volume into the window."""
        ratio = self.peek(rows, volume)
        self.push(rows, volume)
        return ratio

    def push(self, rows: IntArray, volume: FloatArray) -> None:
        """Take a closed bar's volume into the window (what `update` does after the ratio)."""
        self._volumes.push(rows, volume)


def volume_ratio_batch(volume: pl.Series, period: int = 20) -> pl.Series:
    """Batch reference: volume over its rolling mean shifted one bar (null until warm or mean 0)."""
    v = volume.cast(pl.Float64)
    mean = v.rolling_mean(window_size=period).shift(1)
    ratio = pl.select(pl.when(mean > 0.0).then(v / mean)).to_series()
    return ratio.rename("volume_ratio")
