"""The swing of the previous `lookback` bars and the close's Fibonacci position in it.

H is the highest high and L the lowest low of the previous `lookback` bars (the
current bar excluded), each at its most recent bar on ties. The swing is up
(+1) when L's bar comes strictly before H's bar, else down (-1). The close is
placed in it as `fib_ratio`: an up-swing's retracement (H - close)/(H - L), a
down-swing's bounce (close - L)/(H - L); 0 at the swing's end, 1 at its start.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from signals.arrays import BoolArray, FloatArray, IntArray
from signals.indicators.columnar import Columnar, Window

FIB_RETRACEMENTS: tuple[float, ...] = (0.236, 0.382, 0.5, 0.618, 0.786)
FIB_EXTENSIONS: tuple[float, ...] = (1.272, 1.618)
FIB_RATIOS: tuple[float, ...] = FIB_RETRACEMENTS + FIB_EXTENSIONS
"""The ratios of `SwingValues.levels`' columns, in order: retracements, then extensions."""
FIB_LEVEL_NAMES: tuple[str, ...] = tuple(f"fib_{round(r * 1000):d}" for r in FIB_RATIOS)
"""Column names of the levels (`fib_236` ... `fib_1618`), as in `swing_batch`."""

_RETRACEMENTS = np.array(FIB_RETRACEMENTS)
_EXTENSIONS = np.array(FIB_EXTENSIONS)


@dataclass(frozen=True)
class SwingValues:
    """One value per row (levels: one row of `len(FIB_RATIOS)` prices per row); NaN until warm.

    `high_age`/`low_age` say how many bars ago H and L were (1: the previous bar).
    `direction` is +1.0 (up-swing) or -1.0 (down-swing). When H == L there is no
    swing to measure against: `fib_ratio` and `levels` are NaN.
    Retracement level k is H - k(H-L) in an up-swing and L + k(H-L) in a
    down-swing; extension e is L + e(H-L) (above H), resp. H - e(H-L) (below L).
    """

    swing_high: FloatArray
    swing_low: FloatArray
    high_age: FloatArray
    low_age: FloatArray
    direction: FloatArray
    fib_ratio: FloatArray
    levels: FloatArray


@dataclass(frozen=True)
class SwingFrame:
    """The swing of the previous bars before a close is placed in it: what `Swing.place` needs.

    It depends on the indicator's state only, so a caller peeking the same rows
    again and again before the next closed bar may keep it. `end` is H in an
    up-swing and L in a down-swing, `sign` -1 up and +1 down, `span` H - L
    (NaN where not positive); the other fields are those of `SwingValues`.
    """

    swing_high: FloatArray
    swing_low: FloatArray
    high_age: FloatArray
    low_age: FloatArray
    direction: FloatArray
    end: FloatArray
    sign: FloatArray
    span: FloatArray
    levels: FloatArray


class Swing(Columnar):
    """Swing high/low, direction, Fibonacci ratio and levels per row over `lookback` bars."""

    def __init__(self, lookback: int = 60, n_rows: int = 0) -> None:
        if lookback < 2:
            raise ValueError(f"lookback must be >= 2 (a swing spans two bars), got {lookback}")
        self.lookback = lookback
        self._highs = Window(lookback)
        self._lows = Window(lookback)
        super().__init__(n_rows)

    def _children(self) -> Iterator[Columnar]:
        yield self._highs
        yield self._lows

    def frame(self, rows: IntArray) -> SwingFrame:
        """The swing of the previous `lookback` bars of each row, for `place`; does not mutate."""
        warm = self._highs.full(rows)
        top, bottom, high_back, low_back = self._extremes(rows, warm)
        if not warm.all():
            return _masked_frame(warm, top, bottom, high_back, low_back)
        # Every row warm (the usual case): `_masked_frame` without its masks.
        high_age, low_age = high_back.astype(np.float64), low_back.astype(np.float64)
        up = low_age > high_age
        direction = np.where(up, 1.0, -1.0)
        return _finish((top, bottom), (high_age, low_age), direction, up, -direction)

    @staticmethod
    def place(frame: SwingFrame, close: FloatArray) -> SwingValues:
        """`close` placed in the swing `frame` (from `frame(rows)` of the same rows)."""
        ratio = frame.sign * (close - frame.end) / frame.span
        return SwingValues(
            frame.swing_high,
            frame.swing_low,
            frame.high_age,
            frame.low_age,
            frame.direction,
            ratio,
            frame.levels,
        )

    def peek(
        self, rows: IntArray, high: FloatArray, low: FloatArray, close: FloatArray
    ) -> SwingValues:
        """The swing valid for the forming bar, with its close placed in it; does not mutate.

        `high` and `low` do not enter the result (the current bar is excluded);
        they are taken so that `peek` and `update` share one signature.
        """
        return self.place(self.frame(rows), close)

    def update(
        self, rows: IntArray, high: FloatArray, low: FloatArray, close: FloatArray
    ) -> SwingValues:
        """The swing for this closed bar, then take the bar into the window."""
        values = self.peek(rows, high, low, close)
        self.push(rows, high, low)
        return values

    def push(self, rows: IntArray, high: FloatArray, low: FloatArray) -> None:
        """Take a closed bar into the window (what `update` does after placing its close)."""
        self._highs.push(rows, high)
        self._lows.push(rows, low)
        self._slide(rows, high, low)

    # -- the extremes of each full window, kept up to date instead of rescanned ----
    #
    # A bar slides every window by one: ages grow by one, the new bar may become
    # the extreme (ties go to it: it is the most recent), and an extreme whose
    # most recent copy slides out leaves no copy behind (all others were older),
    # so only then is the window rescanned, on its next read. Values are exact:
    # the same max/min and ages a full rescan gives. The memo is not state: a
    # resize, reset or load forgets it.

    def _extremes(
        self, rows: IntArray, warm: BoolArray
    ) -> tuple[FloatArray, FloatArray, IntArray, IntArray]:
        """Per row: highest high, lowest low, and their ages (anything where not `warm`)."""
        # A window not yet full is not scanned: its swing is NaN whatever its extremes.
        unknown = rows[~self._known[rows] & warm]
        if len(unknown):
            # Storage order is enough: the extremes by value, and among equal values
            # the most recent by age (ties resolve to the most recent bar).
            highs, lows = self._highs.raw(unknown), self._lows.raw(unknown)
            ages = self._highs.ages(unknown)  # both windows are pushed together
            top, bottom = highs.max(axis=1), lows.min(axis=1)
            never = self.lookback + 1
            self._top[unknown], self._bottom[unknown] = top, bottom
            self._high_back[unknown] = np.where(highs == top[:, None], ages, never).min(axis=1)
            self._low_back[unknown] = np.where(lows == bottom[:, None], ages, never).min(axis=1)
            self._known[unknown] = True
        return self._top[rows], self._bottom[rows], self._high_back[rows], self._low_back[rows]

    def _slide(self, rows: IntArray, high: FloatArray, low: FloatArray) -> None:
        known = self._known[rows]
        every = bool(known.all())  # the usual case: no row to leave out
        r, h, lo = (rows, high, low) if every else (rows[known], high[known], low[known])
        high_back, low_back = self._high_back[r] + 1, self._low_back[r] + 1
        new_top, new_bottom = h >= self._top[r], lo <= self._bottom[r]
        self._top[r] = np.where(new_top, h, self._top[r])
        self._bottom[r] = np.where(new_bottom, lo, self._bottom[r])
        high_back = np.where(new_top, 1, high_back)
        low_back = np.where(new_bottom, 1, low_back)
        self._high_back[r], self._low_back[r] = high_back, low_back
        self._known[r] = (high_back <= self.lookback) & (low_back <= self.lookback)
        if not every:
            self._known[rows[~known]] = False

    def _forget(self) -> None:
        n = self.n_rows
        self._known = np.zeros(n, np.bool_)
        self._top, self._bottom = np.full(n, np.nan), np.full(n, np.nan)
        self._high_back = np.zeros(n, np.int64)
        self._low_back = np.zeros(n, np.int64)

    def resize(self, n_rows: int) -> None:
        """Grow to `n_rows` rows; new rows are fresh. Never shrinks."""
        known = getattr(self, "_known", None)
        super().resize(n_rows)
        if known is None or len(known) != self.n_rows:
            self._forget()

    def reset(self, rows: IntArray | None = None) -> None:
        """Make `rows` (default: all rows) equal to fresh rows."""
        super().reset(rows)
        self._forget()

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Take back what `state()` gave (a snapshot)."""
        super().load_state(state)
        self._forget()


def _masked_frame(
    warm: BoolArray, top: FloatArray, bottom: FloatArray, high_back: IntArray, low_back: IntArray
) -> SwingFrame:
    """The frame of any rows: NaN where not `warm` (the plain path of `Swing.frame`)."""
    h = np.where(warm, top, np.nan)
    lo = np.where(warm, bottom, np.nan)
    high_age = np.where(warm, high_back.astype(np.float64), np.nan)
    low_age = np.where(warm, low_back.astype(np.float64), np.nan)
    up = low_age > high_age
    direction = np.where(warm, np.where(up, 1.0, -1.0), np.nan)
    return _finish((h, lo), (high_age, low_age), direction, up, np.where(up, -1.0, 1.0))


def _finish(
    extremes: tuple[FloatArray, FloatArray],
    ages: tuple[FloatArray, FloatArray],
    direction: FloatArray,
    up: BoolArray,
    sign: FloatArray,
) -> SwingFrame:
    """The frame from the swing's (high, low), their (high, low) ages and its direction."""
    h, lo = extremes
    high_age, low_age = ages
    # The swing's end is H going up and L going down; ratios run back from it.
    end, start = np.where(up, h, lo), np.where(up, lo, h)
    span = h - lo
    span = np.where(span > 0.0, span, np.nan)  # H == L: no swing, no ratio
    # sign * ratio * span: the sign only flips, so its product with span can come first.
    signed = (sign * span)[:, None]
    levels = np.empty((len(h), len(FIB_RATIOS)))
    levels[:, : len(_RETRACEMENTS)] = end[:, None] + signed * _RETRACEMENTS
    levels[:, len(_RETRACEMENTS) :] = start[:, None] - signed * _EXTENSIONS
    return SwingFrame(h, lo, high_age, low_age, direction, end, sign, span, levels)


def swing_batch(
    high: pl.Series, low: pl.Series, close: pl.Series, lookback: int = 60
) -> pl.DataFrame:
    """Batch reference: one row per bar, null until warm and where undefined (H == L).

    Columns: swing_high, swing_low, high_age, low_age, direction (Int64 +1/-1),
    fib_ratio, then the levels named in `FIB_LEVEL_NAMES`.
    """
    frame = pl.DataFrame(
        {"high": high.cast(pl.Float64), "low": low.cast(pl.Float64)}
    ).with_row_index("bar")
    window = frame.rolling(index_column="bar", period=f"{lookback}i").agg(
        pl.len().alias("n"),
        pl.col("high").max().alias("swing_high"),
        pl.col("low").min().alias("swing_low"),
        # arg-extremes of the reversed window: the first hit is the most recent tie.
        (pl.col("high").reverse().arg_max().cast(pl.Int64) + 1).alias("high_age"),
        (pl.col("low").reverse().arg_min().cast(pl.Int64) + 1).alias("low_age"),
    )
    swing_cols = ["swing_high", "swing_low", "high_age", "low_age"]
    # Mask short windows, then shift: the swing of bars up to t-1 belongs to bar t.
    swings = window.select(
        pl.when(pl.col("n") >= lookback).then(pl.col(c)).shift(1).alias(c) for c in swing_cols
    ).with_columns(close=close.cast(pl.Float64))

    up = pl.col("low_age") > pl.col("high_age")
    h, lo = pl.col("swing_high"), pl.col("swing_low")
    span = pl.when(h > lo).then(h - lo)
    n_retracements = len(FIB_RETRACEMENTS)
    retracements = zip(FIB_RETRACEMENTS, FIB_LEVEL_NAMES[:n_retracements], strict=True)
    extensions = zip(FIB_EXTENSIONS, FIB_LEVEL_NAMES[n_retracements:], strict=True)
    return swings.select(
        *swing_cols,
        pl.when(up).then(1).when(~up).then(-1).cast(pl.Int64).alias("direction"),
        pl.when(up)
        .then((h - pl.col("close")) / span)
        .otherwise((pl.col("close") - lo) / span)
        .alias("fib_ratio"),
        *(
            pl.when(up).then(h - r * span).otherwise(lo + r * span).alias(n)
            for r, n in retracements
        ),
        *(pl.when(up).then(lo + e * span).otherwise(h - e * span).alias(n) for e, n in extensions),
    )
