"""Relative strength index, Wilder's smoothing with TA-Lib's seeding."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import polars as pl

from signals.arrays import FloatArray, IntArray
from signals.indicators.columnar import Columnar, Fresh
from signals.indicators.ema import EMA, ema_batch

# TA-Lib's TA_IS_ZERO: below this, average gain + loss counts as no movement.
_ZERO = 1e-14


class RSI(Columnar):
    """Wilder RSI per row, equal to TA-Lib's RSI; NaN until `period + 1` closes.

    The first value averages the first `period` gains and losses; later ones
    smooth them with Wilder's `(avg * (period - 1) + x) / period`. Like TA-Lib,
    a row whose average gain and loss are both zero (no movement at all) reads 0.0.
    """

    _prev: FloatArray

    def __init__(self, period: int = 14, n_rows: int = 0) -> None:
        if period < 2:
            raise ValueError(f"period must be >= 2, got {period}")
        self.period = period
        # Wilder's smoothing is an EMA with alpha = 1/period and an SMA seed.
        self._gain = EMA(period, alpha=1.0 / period)
        self._loss = EMA(period, alpha=1.0 / period)
        super().__init__(n_rows)

    def _state_spec(self) -> Mapping[str, Fresh]:
        return {"_prev": (np.nan, None)}

    def _children(self) -> Iterator[Columnar]:
        yield self._gain
        yield self._loss

    def _step(self, rows: IntArray, close: FloatArray, *, advance: bool) -> FloatArray:
        # A row's first close has no change: its averages start at the next one.
        prev = self._prev[rows]
        moved = ~np.isnan(prev)
        change = close - prev
        if moved.all():  # the usual case: every row has a previous close
            gain = (self._gain.update if advance else self._gain.peek)(
                rows, np.maximum(change, 0.0)
            )
            loss = (self._loss.update if advance else self._loss.peek)(
                rows, np.maximum(-change, 0.0)
            )
        else:
            gain = self._gain.step_where(rows, np.maximum(change, 0.0), moved, advance=advance)
            loss = self._loss.step_where(rows, np.maximum(-change, 0.0), moved, advance=advance)
        total = gain + loss
        flat = total < _ZERO
        return np.where(flat, 0.0, 100.0 * (gain / np.where(flat, 1.0, total)))

    def update(self, rows: IntArray, close: FloatArray) -> FloatArray:
        """Advance `rows` by one closed bar each; returns their RSI."""
        value = self._step(rows, close, advance=True)
        self._prev[rows] = close
        return value

    def peek(self, rows: IntArray, close: FloatArray) -> FloatArray:
        """The RSI if the forming bars closed at `close`; does not mutate."""
        return self._step(rows, close, advance=False)


def rsi_batch(close: pl.Series, period: int = 14) -> pl.Series:
    """Batch reference: TA-Lib RSI (null until `period + 1` closes)."""
    close = close.cast(pl.Float64)
    change = close.diff().slice(1)
    gain = ema_batch(change.clip(lower_bound=0.0), period, alpha=1.0 / period)
    loss = ema_batch((-change).clip(lower_bound=0.0), period, alpha=1.0 / period)
    avg = pl.DataFrame({"gain": gain, "loss": loss})
    total = pl.col("gain") + pl.col("loss")
    rsi = avg.select(
        pl.when(total < _ZERO).then(0.0).otherwise(100.0 * (pl.col("gain") / total))
    ).to_series()
    # The first close has no change: it is null, as are the seeding ones.
    lead = pl.Series([None] * min(close.len(), 1), dtype=pl.Float64)
    return pl.concat([lead, rsi]).rename(close.name)
