"""Test data: random-walk OHLCV series and a driver that streams them in random batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from signals.arrays import FloatArray, IntArray


@dataclass(frozen=True)
class Walk:
    """One symbol's OHLCV series."""

    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray

    def __len__(self) -> int:
        return len(self.close)


def random_walk(
    seed: int, n: int, start: float = 100.0, vol: float = 0.015, flat_runs: bool = False
) -> Walk:
    """A geometric random walk with consistent OHLC and integer volumes.

    `start=2.0` gives the ~$2 stock; `flat_runs` inserts stretches of identical
    bars (zero range, zero change), where divisions by zero hide.
    """
    rng = np.random.default_rng(seed)
    close = start * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    open_ = np.concatenate([[start], close[:-1]]) * np.exp(rng.normal(0.0, vol / 4, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, vol / 2, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, vol / 2, n)))
    volume = np.round(rng.lognormal(13.0, 0.5, n))
    if flat_runs and n > 1:
        for s in rng.integers(1, max(n - 40, 2), size=max(n // 200, 1)):
            e = min(s + int(rng.integers(5, 40)), n)
            close[s:e] = open_[s:e] = high[s:e] = low[s:e] = close[s - 1]
    return Walk(open_, high, low, close, volume)


def stream_rows(
    n_bars: int,
    n_rows: int,
    step: Callable[[IntArray, IntArray], None],
    seed: int,
    skip_prob: float = 0.0,
) -> None:
    """Drive `step(rows, bar_index)` over `n_rows` symbols until each has seen `n_bars` bars.

    Each bar time, the rows present (each skipped with `skip_prob`, so rows
    advance unevenly) are cut into random batches, each batch one `step` call;
    row order inside a batch is shuffled. `bar_index[i]` is the position in row
    `rows[i]`'s own series.
    """
    if not 0.0 <= skip_prob < 1.0:
        raise ValueError(f"skip_prob must be in [0, 1), got {skip_prob}")
    rng = np.random.default_rng(seed)
    next_bar = np.zeros(n_rows, dtype=np.int64)
    while (next_bar < n_bars).any():
        present = np.flatnonzero((rng.random(n_rows) >= skip_prob) & (next_bar < n_bars))
        rng.shuffle(present)
        n_cuts = min(max(len(present) - 1, 0), int(rng.integers(0, 3)))
        cuts: IntArray = np.sort(
            rng.choice(np.arange(1, max(len(present), 2)), size=n_cuts, replace=False)
        ).astype(np.int64)
        for batch in np.split(present, cuts):
            if len(batch):
                step(batch.astype(np.int64), next_bar[batch].copy())
                next_bar[batch] += 1


def gather(series: Sequence[FloatArray], rows: IntArray, idx: IntArray) -> FloatArray:
    """Element `idx[i]` of `series[rows[i]]` for each i."""
    return np.array([series[r][i] for r, i in zip(rows, idx, strict=True)], dtype=np.float64)


TOL = 1e-9


def assert_close(got: FloatArray, want: FloatArray, tol: float = TOL) -> None:
    """NaN exactly where `want` has NaN, and within `tol` (absolute and relative) elsewhere."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rows: IntArray) -> None:
    """Every state array (children included) is equal on `rows`, NaN equal to NaN."""
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name][rows], b[name][rows], equal_nan=True), name


def reached(seen: npt.NDArray[np.bool_], row: int) -> int:
    """How many bars `row` got; rows advance in order, so they are a prefix."""
    k = int(seen[row].sum())
    assert seen[row, :k].all()
    return k


def shift1(x: npt.ArrayLike) -> FloatArray:
    """The value of the previous bar: what TA-Lib computes through bar t-1, placed at t."""
    return np.concatenate([[np.nan], np.asarray(x, dtype=np.float64)[:-1]])
