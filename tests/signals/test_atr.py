"""ATR: streaming == TA-Lib == polars batch; peek is pure; reset rows equal fresh ones."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from signals.arrays import BoolArray, FloatArray, IntArray
from signals.indicators.atr import ATR, atr_batch, true_range
from tests.signals.walks import (
    Walk,
    assert_close,
    assert_same_state,
    gather,
    random_walk,
    reached,
    stream_rows,
)


def bars(walks: list[Walk], rows: IntArray, idx: IntArray) -> tuple[FloatArray, ...]:
    """(high, low, close) of bar `idx[i]` of walk `rows[i]`, for each i."""
    return tuple(
        gather([getattr(w, f) for w in walks], rows, idx) for f in ("high", "low", "close")
    )


def stream(
    walks: list[Walk], seed: int, skip_prob: float, period: int = 14
) -> tuple[FloatArray, BoolArray]:
    """Each walk is one row, streamed in random batches; returns (values, seen) per row and bar."""
    n_rows, n = len(walks), len(walks[0])
    atr = ATR(period, n_rows=n_rows)
    out = np.full((n_rows, n), np.nan)
    seen = np.zeros((n_rows, n), dtype=np.bool_)

    def step(rows: IntArray, idx: IntArray) -> None:
        out[rows, idx] = atr.update(rows, *bars(walks, rows, idx))
        seen[rows, idx] = True

    stream_rows(n, n_rows, step, seed, skip_prob)
    return out, seen


def talib_atr(w: Walk, period: int = 14) -> FloatArray:
    """The oracle."""
    out: FloatArray = talib.ATR(w.high, w.low, w.close, timeperiod=period)
    return out


# Walk makers by case name, each called with a seed.
CASES: dict[str, Callable[[int], Walk]] = {
    "walk": lambda seed: random_walk(seed, 400),
    "two-dollar": lambda seed: random_walk(seed, 400, start=2.0),
    "long": lambda seed: random_walk(seed, 7000),
    "flat-runs": lambda seed: random_walk(seed, 1500, flat_runs=True),
    "two-dollar-flat": lambda seed: random_walk(seed, 800, start=2.0, flat_runs=True),
}


@pytest.mark.parametrize("case", CASES)
def test_streaming_equals_talib(case: str) -> None:
    walks = [CASES[case](seed) for seed in range(4)]
    out, seen = stream(walks, seed=11, skip_prob=0.25)
    assert all(reached(seen, r) == len(w) for r, w in enumerate(walks)), (
        "every row streams to its end"
    )
    for r, w in enumerate(walks):
        k = reached(seen, r)
        assert_close(out[r, :k], talib_atr(w)[:k])


@pytest.mark.parametrize("case", CASES)
def test_batch_equals_talib(case: str) -> None:
    w = CASES[case](5)
    got = atr_batch(pl.Series(w.high), pl.Series(w.low), pl.Series(w.close)).to_numpy()
    assert_close(got, talib_atr(w))


@pytest.mark.parametrize("period", [1, 2, 7, 30])
def test_other_periods_equal_talib(period: int) -> None:
    walks = [random_walk(seed, 300, flat_runs=True) for seed in range(3)]
    out, _ = stream(walks, seed=3, skip_prob=0.0, period=period)
    for r, w in enumerate(walks):
        want = talib_atr(w, period)
        assert_close(out[r], want)
        got = atr_batch(pl.Series(w.high), pl.Series(w.low), pl.Series(w.close), period)
        assert_close(got.to_numpy(), want)


def test_true_range_equals_talib() -> None:
    w = random_walk(4, 500, start=2.0, flat_runs=True)
    prev = np.concatenate([[np.nan], w.close[:-1]])
    assert_close(true_range(w.high, w.low, prev), talib.TRANGE(w.high, w.low, w.close))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 150),
    seed=st.integers(0, 2**32 - 1),
    start=st.floats(0.5, 1000.0),
    n_rows=st.integers(1, 4),
    skip_prob=st.sampled_from([0.0, 0.3, 0.7]),
    flat_runs=st.booleans(),
    period=st.integers(1, 20),
)
def test_streaming_equals_batch(
    *, n: int, seed: int, start: float, n_rows: int, skip_prob: float, flat_runs: bool, period: int
) -> None:
    walks = [random_walk(seed + r, n, start=start, flat_runs=flat_runs) for r in range(n_rows)]
    out, seen = stream(walks, seed, skip_prob, period)
    for r, w in enumerate(walks):
        k = reached(seen, r)
        want = atr_batch(pl.Series(w.high), pl.Series(w.low), pl.Series(w.close), period)
        assert_close(out[r, :k], want.to_numpy()[:k])


def test_peek_is_pure_and_matches_update() -> None:
    walks = [random_walk(seed, 80) for seed in range(3)]
    atr = ATR(n_rows=3)
    all_rows = np.arange(3)

    def step(rows: IntArray, idx: IntArray) -> None:
        high, low, close = bars(walks, rows, idx)
        before = atr.state()
        atr.peek(rows, high * 1.01, low, close * 1.01)  # a forming bar that later moves
        peeked = atr.peek(rows, high, low, close)
        assert_same_state(atr.state(), before, all_rows)
        np.testing.assert_array_equal(peeked, atr.update(rows, high, low, close))

    stream_rows(80, 3, step, seed=7, skip_prob=0.3)


def test_reset_rows_equal_fresh() -> None:
    old = [random_walk(seed, 100) for seed in range(4)]
    new = random_walk(99, 60)
    atr, control, fresh = ATR(n_rows=4), ATR(n_rows=4), ATR(n_rows=4)
    every = np.arange(4)
    for i in range(40):
        hlc = bars(old, every, np.full(4, i))
        atr.update(every, *hlc)
        control.update(every, *hlc)
    wiped, kept = np.array([1, 3]), np.array([0, 2])
    atr.reset(wiped)
    assert_same_state(atr.state(), fresh.state(), wiped)
    assert_same_state(atr.state(), control.state(), kept)
    # Wiped rows start a new series while kept rows carry on with theirs.
    series = [old[0], new, old[2], new]
    start = np.array([40, 0, 40, 0])
    for i in range(60):
        rows = np.array([2, 1, 0, 3])
        hlc = bars(series, rows, start[rows] + i)
        got = atr.update(rows, *hlc)
        new_hlc = [a[[1, 3]] for a in hlc]
        np.testing.assert_array_equal(got[[1, 3]], fresh.update(wiped, *new_hlc))
        np.testing.assert_array_equal(got[[2, 0]], control.update(kept, *[a[[2, 0]] for a in hlc]))
    assert_same_state(atr.state(), fresh.state(), wiped)
    assert_same_state(atr.state(), control.state(), kept)


@pytest.mark.parametrize("period", [0, -3])
def test_rejects_bad_period(period: int) -> None:
    with pytest.raises(ValueError, match="period must be >= 1"):
        ATR(period)


def test_rejects_negative_rows() -> None:
    with pytest.raises(ValueError, match="n_rows"):
        ATR(14, n_rows=-1)
