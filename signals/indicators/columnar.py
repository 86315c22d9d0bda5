"""The base of every columnar indicator: state arrays that resize and reset."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from signals.arrays import BoolArray, FloatArray, IntArray, as_rows

# A state field's fresh value and its width (None: one value per row;
# k: k values per row, a 2-D array of shape (n_rows, k)).
Fresh = tuple[float | int, int | None]


class Columnar:
    """State held as numpy arrays with one row per symbol.

    Subclasses list their state in `_state_spec` (attribute name -> (fresh
    value, width)) and their sub-indicators in `_children`; this class creates,
    grows and resets those arrays. An int fresh value makes an int64 array.
    """

    def __init__(self, n_rows: int = 0) -> None:
        if n_rows < 0:
            raise ValueError(f"n_rows must be >= 0, got {n_rows}")
        self._n_rows = 0
        for name, (fill, width) in self._state_spec().items():
            setattr(self, name, _fresh_array(0, fill, width))
        self.resize(n_rows)

    def _state_spec(self) -> Mapping[str, Fresh]:
        return {}

    def _children(self) -> Iterator[Columnar]:
        return iter(())

    @property
    def n_rows(self) -> int:
        """How many rows (symbols) this indicator holds state for."""
        return self._n_rows

    def resize(self, n_rows: int) -> None:
        """Grow to `n_rows` rows; new rows are fresh. Never shrinks."""
        if n_rows <= self._n_rows:
            return
        for name, (fill, width) in self._state_spec().items():
            old = getattr(self, name)
            new = _fresh_array(n_rows, fill, width)
            new[: self._n_rows] = old
            setattr(self, name, new)
        for child in self._children():
            child.resize(n_rows)
        self._n_rows = n_rows

    def reset(self, rows: IntArray | None = None) -> None:
        """Make `rows` (default: all rows) equal to fresh rows."""
        idx = np.arange(self._n_rows) if rows is None else as_rows(rows)
        for name, (fill, _width) in self._state_spec().items():
            getattr(self, name)[idx] = fill
        for child in self._children():
            child.reset(idx)

    def state(self) -> dict[str, np.ndarray]:
        """A deep copy of every state array (children prefixed), for snapshots and tests."""
        out = {name: np.array(getattr(self, name), copy=True) for name in self._state_spec()}
        for i, child in enumerate(self._children()):
            for name, arr in child.state().items():
                out[f"{i}.{name}"] = arr
        return out

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Take back what `state()` gave (a snapshot); shapes must match this indicator's."""
        n_rows: int | None = None
        for name, (fill, width) in self._state_spec().items():
            arr = np.asarray(state[name])
            want = _fresh_array(0, fill, width)
            if arr.ndim != want.ndim or (width is not None and arr.shape[1] != width):
                raise ValueError(f"state {name!r} has shape {arr.shape}, expected width {width}")
            if n_rows is not None and arr.shape[0] != n_rows:
                raise ValueError(f"state {name!r} has {arr.shape[0]} rows, others {n_rows}")
            n_rows = arr.shape[0]
            setattr(self, name, arr.astype(want.dtype, copy=True))
        for i, child in enumerate(self._children()):
            prefix = f"{i}."
            child.load_state(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
            n_rows = child.n_rows if n_rows is None else n_rows
        self._n_rows = n_rows or 0


def _fresh_array(n_rows: int, fill: float | int, width: int | None) -> np.ndarray:
    shape: tuple[int, ...] = (n_rows,) if width is None else (n_rows, width)
    dtype = np.int64 if isinstance(fill, int) and not isinstance(fill, bool) else np.float64
    return np.full(shape, fill, dtype=dtype)


class Window(Columnar):
    """The last `size` values per row, oldest first; the building block of lags and rolling windows."""

    _buf: FloatArray
    _pos: IntArray
    _count: IntArray

    def __init__(self, size: int, n_rows: int = 0) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._age_table: IntArray | None = None  # [pos, slot] -> age, built on first use
        super().__init__(n_rows)

    def _state_spec(self) -> Mapping[str, Fresh]:
        return {"_buf": (np.nan, self.size), "_pos": (0, None), "_count": (0, None)}

    def push(self, rows: IntArray, x: FloatArray) -> None:
        """Append one value per row, dropping the oldest once full."""
        pos = self._pos[rows]
        self._buf[rows, pos] = x
        self._pos[rows] = (pos + 1) % self.size
        self._count[rows] = np.minimum(self._count[rows] + 1, self.size)

    def count(self, rows: IntArray) -> IntArray:
        """How many values each row holds (at most `size`)."""
        return self._count[rows]

    def full(self, rows: IntArray) -> BoolArray:
        """Whether each row holds `size` values."""
        return np.asarray(self._count[rows] == self.size, dtype=np.bool_)

    def oldest(self, rows: IntArray) -> FloatArray:
        """The value pushed `size` pushes ago (NaN until full): a lag of `size` bars."""
        out = self._buf[rows, self._pos[rows]]
        return np.where(self.full(rows), out, np.nan)

    def newest(self, rows: IntArray) -> FloatArray:
        """The most recently pushed value (NaN if none)."""
        out = self._buf[rows, (self._pos[rows] - 1) % self.size]
        return np.where(self._count[rows] > 0, out, np.nan)

    def raw(self, rows: IntArray) -> FloatArray:
        """A (len(rows), size) copy in storage order (not time order): enough for max, min, sum.

        Cheaper than `values`: whole rows are copied, no per-element index is built.
        """
        return np.asarray(self._buf[rows], dtype=np.float64)

    def ages(self, rows: IntArray) -> IntArray:
        """Per slot of `raw(rows)`, how many pushes ago it was written (1: the newest)."""
        if self._age_table is None:
            p = np.arange(self.size)
            self._age_table = (p[:, None] - 1 - p[None, :]) % self.size + 1
        return np.asarray(self._age_table[self._pos[rows]], dtype=np.int64)

    def values(self, rows: IntArray) -> FloatArray:
        """A (len(rows), size) copy, oldest first; slots not yet filled are NaN."""
        idx = (self._pos[rows, None] + np.arange(self.size)) % self.size
        return np.asarray(self._buf[rows[:, None], idx], dtype=np.float64)
