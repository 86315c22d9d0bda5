"""Columnar ring buffers: the last N bars of every symbol in preallocated arrays.

One (n_rows, capacity) array per column; pushing a batch writes one slot per
touched row and moves that row's head, so nothing is appended or stacked per
bar. `frame(row)` hands a window out as a `polars.DataFrame`, oldest first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from signals.arrays import FloatArray, IntArray, as_rows

OHLCV = ("time", "open", "high", "low", "close", "volume")


class Rings:
    """The last `capacity` values of each named column, per row."""

    def __init__(self, capacity: int, columns: Sequence[str] = OHLCV, n_rows: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if len(set(columns)) != len(columns) or not columns:
            raise ValueError(f"columns must be distinct and non-empty, got {list(columns)}")
        self.capacity = capacity
        self.columns = tuple(columns)
        self._n_rows = 0
        self._data: dict[str, np.ndarray] = {
            c: np.empty((0, capacity), dtype=np.int64 if c == "time" else np.float64)
            for c in columns
        }
        self._head = np.zeros(0, dtype=np.int64)
        self._count = np.zeros(0, dtype=np.int64)
        self.resize(n_rows)

    @property
    def n_rows(self) -> int:
        """How many rows (symbols) the rings hold."""
        return self._n_rows

    def resize(self, n_rows: int) -> None:
        """Grow to `n_rows` empty-or-kept rows. Never shrinks."""
        if n_rows <= self._n_rows:
            return
        for c, old in self._data.items():
            new = np.zeros((n_rows, self.capacity), dtype=old.dtype)
            new[: self._n_rows] = old
            self._data[c] = new
        self._head = np.concatenate([self._head, np.zeros(n_rows - self._n_rows, np.int64)])
        self._count = np.concatenate([self._count, np.zeros(n_rows - self._n_rows, np.int64)])
        self._n_rows = n_rows

    def push(self, rows: IntArray, values: Mapping[str, np.ndarray]) -> None:
        """Write one value per column for each of `rows` (unique), overwriting the oldest when full."""
        rows = as_rows(rows)
        missing = set(self.columns) - set(values)
        if missing:
            raise ValueError(f"push is missing columns {sorted(missing)}")
        head = self._head[rows]
        for c in self.columns:
            self._data[c][rows, head] = values[c]
        self._head[rows] = (head + 1) % self.capacity
        self._count[rows] = np.minimum(self._count[rows] + 1, self.capacity)

    def replace_last(self, rows: IntArray, values: Mapping[str, np.ndarray]) -> None:
        """Overwrite the newest slot of each row (a corrected bar); rows must hold a bar."""
        rows = as_rows(rows)
        if np.any(self._count[rows] == 0):
            raise ValueError("replace_last on a row with no bars")
        last = (self._head[rows] - 1) % self.capacity
        for c in self.columns:
            if c in values:
                self._data[c][rows, last] = values[c]

    def last(self, rows: IntArray, name: str) -> FloatArray:
        """The newest value of column `name` for each of `rows` (NaN where a row holds none)."""
        rows = as_rows(rows)
        values = self._data[name][rows, (self._head[rows] - 1) % self.capacity].astype(np.float64)
        return np.where(self._count[rows] > 0, values, np.nan)

    def count(self, row: int) -> int:
        """How many bars row `row` holds."""
        return int(self._count[row])

    def column(self, row: int, name: str, last: int | None = None) -> np.ndarray:
        """The newest `last` (default all held) values of one column for one row, oldest first (a copy)."""
        n = self.count(row) if last is None else min(last, self.count(row))
        idx = (self._head[row] - n + np.arange(n)) % self.capacity
        return np.asarray(self._data[name][row, idx])

    def frame(self, row: int, last: int | None = None) -> pl.DataFrame:
        """The newest `last` bars of one row as a DataFrame, oldest first.

        A snapshot, not a live view: the ring keeps moving under it, so handing
        out references into it would let readers see torn windows.
        """
        return pl.DataFrame({c: self.column(row, c, last) for c in self.columns})

    def state(self) -> dict[str, np.ndarray]:
        """Copies of every array, for snapshots."""
        out = {f"ring.{c}": a.copy() for c, a in self._data.items()}
        out["ring.head"], out["ring.count"] = self._head.copy(), self._count.copy()
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Take back what `state()` gave."""
        for c in self.columns:
            arr = np.asarray(state[f"ring.{c}"])
            if arr.ndim != 2 or arr.shape[1] != self.capacity:
                raise ValueError(
                    f"ring column {c!r} has shape {arr.shape}, capacity {self.capacity}"
                )
            self._data[c] = arr.astype(self._data[c].dtype, copy=True)
        self._head = np.asarray(state["ring.head"], dtype=np.int64).copy()
        self._count = np.asarray(state["ring.count"], dtype=np.int64).copy()
        self._n_rows = len(self._head)
