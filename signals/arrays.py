"""Array type aliases shared by the columnar core."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def as_rows(rows: npt.ArrayLike) -> IntArray:
    """Row indices as an int64 array (what every columnar `update` takes)."""
    return np.asarray(rows, dtype=np.int64)


def as_floats(values: npt.ArrayLike) -> FloatArray:
    """Values as a float64 array."""
    return np.asarray(values, dtype=np.float64)


class RowMemo:
    """Remembers the rows of recent whole batches of symbols.

    Symbol-to-row maps here only ever grow (a restore builds a new map and must
    `clear()` this), so the rows of a symbol list, once found, stay right. A
    daemon sees the same few symbol lists every minute; looking 2,000 symbols
    up one by one was a large part of each minute's cost. The arrays handed
    out are read-only: they are shared between calls.
    """

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._memo: dict[tuple[str, ...], IntArray] = {}
        # id -> (rows, no symbol twice): the array is held, so its id is not reused meanwhile.
        self._unique: dict[int, tuple[IntArray, bool]] = {}

    def get(self, symbols: Sequence[str]) -> tuple[tuple[str, ...], IntArray | None]:
        """(key, rows or None): pass the key to `put` after a miss."""
        key = symbols if type(symbols) is tuple else tuple(symbols)
        return key, self._memo.get(key)

    def put(self, key: tuple[str, ...], rows: IntArray) -> IntArray:
        """Remember `rows` for `key`; returns them, read-only."""
        if len(self._memo) >= self._size:
            self.clear()
        rows.flags.writeable = False
        self._memo[key] = rows
        self._unique[id(rows)] = (rows, len(set(key)) == len(key))
        return rows

    def unique(self, rows: IntArray) -> bool:
        """Whether `rows`, handed out by this memo, name no symbol twice (False: not known)."""
        hit = self._unique.get(id(rows))
        return hit is not None and hit[0] is rows and hit[1]

    def clear(self) -> None:
        """Forget everything (the map was rebuilt)."""
        self._memo.clear()
        self._unique.clear()
