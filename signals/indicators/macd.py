"""Moving average convergence/divergence, seeded exactly as TA-Lib's MACD."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import polars as pl

from signals.arrays import FloatArray, IntArray
from signals.indicators.columnar import Columnar, Fresh
from signals.indicators.ema import EMA, ema_batch

Outputs = tuple[FloatArray, FloatArray, FloatArray]


class MACD(Columnar):
    """MACD line, signal line and histogram per row, equal to TA-Lib's MACD.

    TA-Lib starts both EMAs at the same bar (`slow - 1`), so the fast EMA is
    seeded with the SMA of the `fast` closes ending there: a row's first
    `slow - fast` closes never reach it. The signal EMA is seeded with the SMA
    of the first `signal` MACD values, and all three outputs stay NaN until the
    signal is warm, at a row's bar `slow + signal - 2`.
    """

    _count: IntArray

    def __init__(self, fast: int = 12, slow: int = 26, signal: int = 9, n_rows: int = 0) -> None:
        if fast < 2:
            raise ValueError(f"fast must be >= 2, got {fast}")
        if slow <= fast:
            raise ValueError(f"slow must be > fast, got fast={fast}, slow={slow}")
        if signal < 1:
            raise ValueError(f"signal must be >= 1, got {signal}")
        self.fast, self.slow, self.signal = fast, slow, signal
        self._fast = EMA(fast)
        self._slow = EMA(slow)
        self._signal = EMA(signal)
        super().__init__(n_rows)

    def _state_spec(self) -> Mapping[str, Fresh]:
        return {"_count": (0, None)}

    def _children(self) -> Iterator[Columnar]:
        yield self._fast
        yield self._slow
        yield self._signal

    def _step(self, rows: IntArray, close: FloatArray, *, advance: bool) -> Outputs:
        slow = (self._slow.update if advance else self._slow.peek)(rows, close)
        late = self._count[rows] >= self.slow - self.fast
        fast = self._fast.step_where(rows, close, late, advance=advance)
        line = fast - slow
        signal = self._signal.step_where(rows, line, ~np.isnan(line), advance=advance)
        macd = np.where(np.isnan(signal), np.nan, line)
        return macd, signal, macd - signal

    def update(self, rows: IntArray, close: FloatArray) -> Outputs:
        """Advance `rows` by one closed bar each; returns their (macd, signal, hist)."""
        out = self._step(rows, close, advance=True)
        self._count[rows] += 1
        return out

    def peek(self, rows: IntArray, close: FloatArray) -> Outputs:
        """The (macd, signal, hist) if the forming bars closed at `close`; does not mutate."""
        return self._step(rows, close, advance=False)


def _after(x: pl.Series, skip: int, period: int) -> pl.Series:
    """`ema_batch` of `x` without its first `skip` values, null-padded back to full length."""
    lead = pl.Series([None] * min(skip, x.len()), dtype=pl.Float64)
    return pl.concat([lead, ema_batch(x.slice(skip), period)])


def macd_batch(close: pl.Series, fast: int = 12, slow: int = 26, signal: int = 9) -> pl.DataFrame:
    """Batch reference: TA-Lib MACD as columns macd, macd_signal, macd_hist."""
    close = close.cast(pl.Float64)
    line = _after(close, slow - fast, fast) - ema_batch(close, slow)
    sig = _after(line, slow - 1, signal)
    return pl.DataFrame({"line": line, "macd_signal": sig}).select(
        macd=pl.when(pl.col("macd_signal").is_not_null()).then(pl.col("line")),
        macd_signal=pl.col("macd_signal"),
        macd_hist=pl.col("line") - pl.col("macd_signal"),
    )
