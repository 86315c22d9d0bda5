"""Longer bars from 1-minute bars: the regular-session daily bar, and 5m/15m/1h buckets.

Per symbol, the forming bar takes each regular-session minute (first open,
highest high, lowest low, last close, summed volume). A bar closes when its
last minute arrives (so an early close at 13:00 closes the daily bar with the
12:59 minute), when a minute of a later bucket arrives, or when `flush(now)`
passes its end (the last minutes never came).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from signals.arrays import FloatArray, IntArray, RowMemo
from signals.bar import BarBatch
from signals.sessions import SessionTable

NONE = np.iinfo(np.int64).min


@dataclass(frozen=True)
class Timeframe:
    """A bar length: `minutes` per bucket from the session open, or None for the session (daily)."""

    name: str
    minutes: int | None

    @classmethod
    def parse(cls, name: str) -> Timeframe:
        """`1m`, `5m`, `15m`, `30m`, `1h` or `1d`."""
        table = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "1d": None}
        if name not in table:
            raise ValueError(f"unknown timeframe {name!r}; expected one of {', '.join(table)}")
        return cls(name, table[name])


class Aggregator:
    """Forming and closed bars of one timeframe, per symbol, from regular-session 1-minute bars."""

    def __init__(self, timeframe: Timeframe, sessions: SessionTable) -> None:
        if timeframe.minutes == 1:
            raise ValueError("1-minute bars need no aggregation")
        self.timeframe = timeframe
        self.sessions = sessions
        self._rows: dict[str, int] = {}
        self._symbols: list[str] = []
        self._row_memo = RowMemo()
        n = 0
        self._start = np.full(n, NONE, np.int64)  # bar label (time)
        self._end = np.zeros(n, np.int64)  # epoch s when the bar is complete
        self._ohlcv = np.zeros((n, 5))

    def _row(self, symbol: str) -> int:
        row = self._rows.get(symbol)
        if row is None:
            row = self._rows[symbol] = len(self._symbols)
            self._symbols.append(symbol)
            if row >= len(self._start):
                grow = max(8, 2 * len(self._start))
                self._start = np.r_[self._start, np.full(grow, NONE, np.int64)]
                self._end = np.r_[self._end, np.zeros(grow, np.int64)]
                self._ohlcv = np.vstack([self._ohlcv, np.zeros((grow, 5))])
        return row

    def _rows_of(self, symbols: Sequence[str]) -> IntArray:
        key, rows = self._row_memo.get(symbols)
        if rows is None:
            rows = self._row_memo.put(key, np.array([self._row(s) for s in key], dtype=np.int64))
        return rows

    def _bucket(self, times: IntArray) -> tuple[IntArray, IntArray, np.ndarray]:
        """Label and end of each minute's bar, and whether it is in regular hours."""
        loc = self.sessions.locate(times)
        idx = np.maximum(loc.index, 0)
        close = self.sessions.close[idx]
        if self.timeframe.minutes is None:
            return loc.label, close, loc.regular
        span = self.timeframe.minutes * 60
        start = self.sessions.open[idx] + (loc.minute // self.timeframe.minutes) * span
        return start, np.minimum(start + span, close), loc.regular

    def update(self, batch: BarBatch) -> BarBatch:
        """Take closed 1-minute bars (one per symbol; other hours are ignored); return bars that closed."""
        start, end, regular = self._bucket(batch.time)
        keep = np.flatnonzero(regular)
        rows = self._rows_of(batch.symbol)[keep]
        start, end = start[keep], end[keep]
        # A minute of a new bucket closes the bucket it replaces.
        superseded = (self._start[rows] != NONE) & (self._start[rows] != start)
        stale = (self._start[rows] != NONE) & (self._start[rows] > start)
        if stale.any():  # a minute older than the forming bar: drop it
            keep, rows, start, end = keep[~stale], rows[~stale], start[~stale], end[~stale]
            superseded = superseded[~stale]
        closed = [self._emit(rows[superseded])] if superseded.any() else []
        o, h, lo, c, v = (
            batch.open[keep], batch.high[keep], batch.low[keep], batch.close[keep], batch.volume[keep],
        )  # fmt: skip
        new = self._start[rows] != start
        cur = self._ohlcv[rows]
        if new.any():
            self._ohlcv[rows] = np.column_stack(
                [
                    np.where(new, o, cur[:, 0]),
                    np.where(new, h, np.maximum(cur[:, 1], h)),
                    np.where(new, lo, np.minimum(cur[:, 2], lo)),
                    c,
                    np.where(new, v, cur[:, 4] + v),
                ]
            )
        else:  # every bar goes on (the usual minute): the same values, fewer steps
            cur[:, 1] = np.maximum(cur[:, 1], h)
            cur[:, 2] = np.minimum(cur[:, 2], lo)
            cur[:, 3] = c
            cur[:, 4] += v
            self._ohlcv[rows] = cur
        self._start[rows] = start
        self._end[rows] = end
        complete = batch.time[keep] + 60 >= end
        if complete.any():
            closed.append(self._emit(rows[complete]))
        return _concat(closed)

    def flush(self, now: int) -> BarBatch:
        """Close every forming bar whose end has passed by `now` (epoch s)."""
        rows = np.flatnonzero((self._start != NONE) & (self._end <= now))
        return self._emit(rows.astype(np.int64))

    def forming(self, symbols: Sequence[str] | None = None) -> BarBatch:
        """The forming bars (of `symbols`, default all), for a non-mutating peek."""
        _key, known = (None, None) if symbols is None else self._row_memo.get(symbols)
        if known is not None:  # every symbol of a batch seen before has a row
            rows = known
        else:
            names = self._symbols if symbols is None else [s for s in symbols if s in self._rows]
            rows = np.array([self._rows[s] for s in names], dtype=np.int64)
        rows = rows[self._start[rows] != NONE] if len(rows) else rows
        return self._batch(rows)

    def snapshot(self) -> tuple[list[str], dict[str, np.ndarray]]:
        """(symbols, arrays) of the forming bars, for a restart."""
        return list(self._symbols), {
            "start": self._start.copy(),
            "end": self._end.copy(),
            "ohlcv": self._ohlcv.copy(),
        }

    def restore(self, symbols: list[str], arrays: dict[str, np.ndarray]) -> None:
        """Continue from `snapshot()` output."""
        self._symbols = list(symbols)
        self._rows = {s: i for i, s in enumerate(self._symbols)}
        self._row_memo.clear()
        self._start = np.asarray(arrays["start"], dtype=np.int64).copy()
        self._end = np.asarray(arrays["end"], dtype=np.int64).copy()
        self._ohlcv = np.asarray(arrays["ohlcv"], dtype=np.float64).copy()

    def _emit(self, rows: IntArray) -> BarBatch:
        out = self._batch(rows)
        self._start[rows] = NONE
        return out

    def _batch(self, rows: IntArray) -> BarBatch:
        x: FloatArray = self._ohlcv[rows].T.copy()  # one copy, a contiguous row per field
        symbols = self._symbols
        return BarBatch(
            symbol=[symbols[r] for r in rows.tolist()],
            time=self._start[rows],
            open=x[0],
            high=x[1],
            low=x[2],
            close=x[3],
            volume=x[4],
        )


def _concat(batches: list[BarBatch]) -> BarBatch:
    parts = [b for b in batches if len(b)]
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return _EMPTY
    return BarBatch(
        symbol=[s for b in parts for s in b.symbol],
        time=np.concatenate([b.time for b in parts]) if parts else np.zeros(0, np.int64),
        open=np.concatenate([b.open for b in parts]) if parts else np.zeros(0),
        high=np.concatenate([b.high for b in parts]) if parts else np.zeros(0),
        low=np.concatenate([b.low for b in parts]) if parts else np.zeros(0),
        close=np.concatenate([b.close for b in parts]) if parts else np.zeros(0),
        volume=np.concatenate([b.volume for b in parts]) if parts else np.zeros(0),
    )


_EMPTY = BarBatch(
    symbol=(),
    time=np.zeros(0, np.int64),
    open=np.zeros(0),
    high=np.zeros(0),
    low=np.zeros(0),
    close=np.zeros(0),
    volume=np.zeros(0),
)
for _column in (_EMPTY.time, _EMPTY.open, _EMPTY.high, _EMPTY.low, _EMPTY.close, _EMPTY.volume):
    _column.flags.writeable = False  # shared by every call that closes nothing
