"""Test data: random-walk OHLCV series and a driver that streams them in random batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

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
    if flat_runs:
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
    """Drive `step(rows, bar_index)` over `n_rows` symbols for `n_bars` bars.

    Each bar time, the rows present (each skipped with `skip_prob`) are cut into
    random batches, each batch one `step` call; row order inside a batch is
    shuffled. `bar_index[i]` is the position in row `rows[i]`'s own series.
    """
    rng = np.random.default_rng(seed)
    next_bar = np.zeros(n_rows, dtype=np.int64)
    for _ in range(n_bars):
        present = np.flatnonzero(rng.random(n_rows) >= skip_prob)
        present = present[next_bar[present] < n_bars]
        rng.shuffle(present)
        cuts = np.sort(rng.choice(np.arange(1, max(len(present), 1)), size=min(len(present) - 1, int(rng.integers(0, 3))) if len(present) > 1 else 0, replace=False))
        for batch in np.split(present, cuts):
            if len(batch):
                step(batch.astype(np.int64), next_bar[batch].copy())
                next_bar[batch] += 1


def gather(series: Sequence[FloatArray], rows: IntArray, idx: IntArray) -> FloatArray:
    """Element `idx[i]` of `series[rows[i]]` for each i."""
    return np.array([series[r][i] for r, i in zip(rows, idx, strict=True)], dtype=np.float64)
