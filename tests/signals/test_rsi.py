"""RSI: streaming == TA-Lib == polars batch; peek is pure; reset rows equal fresh ones."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from signals.arrays import BoolArray, FloatArray, IntArray
from signals.indicators.rsi import RSI, rsi_batch
from tests.signals.walks import (
    Walk,
    assert_close,
    assert_same_state,
    gather,
    random_walk,
    reached,
    stream_rows,
)


def stream(
    walks: list[Walk], seed: int, skip_prob: float, period: int = 14
) -> tuple[FloatArray, BoolArray]:
    """Each walk is one row, streamed in random batches; returns (values, seen) per row and bar."""
    n_rows, n = len(walks), len(walks[0])
    rsi = RSI(period, n_rows=n_rows)
    closes = [w.close for w in walks]
    out = np.full((n_rows, n), np.nan)
    seen = np.zeros((n_rows, n), dtype=np.bool_)

    def step(rows: IntArray, idx: IntArray) -> None:
        out[rows, idx] = rsi.update(rows, gather(closes, rows, idx))
        seen[rows, idx] = True

    stream_rows(n, n_rows, step, seed, skip_prob)
    return out, seen


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
        assert_close(out[r, :k], talib.RSI(w.close, timeperiod=14)[:k])


@pytest.mark.parametrize("case", CASES)
def test_batch_equals_talib(case: str) -> None:
    w = CASES[case](5)
    assert_close(rsi_batch(pl.Series(w.close)).to_numpy(), talib.RSI(w.close, timeperiod=14))


@pytest.mark.parametrize("period", [2, 5, 30])
def test_other_periods_equal_talib(period: int) -> None:
    walks = [random_walk(seed, 300, flat_runs=True) for seed in range(3)]
    out, _ = stream(walks, seed=3, skip_prob=0.0, period=period)
    for r, w in enumerate(walks):
        want = talib.RSI(w.close, timeperiod=period)
        assert_close(out[r], want)
        assert_close(rsi_batch(pl.Series(w.close), period).to_numpy(), want)


def test_no_movement_reads_zero_like_talib() -> None:
    # TA-Lib reads 0.0, not NaN, when average gain and loss are both zero.
    close = np.concatenate([np.full(20, 5.0), random_walk(9, 40, start=5.0).close])
    want = talib.RSI(close, timeperiod=14)
    assert want[14] == 0.0
    out, _ = stream([Walk(close, close, close, close, close)], seed=0, skip_prob=0.0)
    assert_close(out[0], want)
    assert_close(rsi_batch(pl.Series(close)).to_numpy(), want)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 150),
    seed=st.integers(0, 2**32 - 1),
    start=st.floats(0.5, 1000.0),
    n_rows=st.integers(1, 4),
    skip_prob=st.sampled_from([0.0, 0.3, 0.7]),
    flat_runs=st.booleans(),
    period=st.integers(2, 20),
)
def test_streaming_equals_batch(
    *, n: int, seed: int, start: float, n_rows: int, skip_prob: float, flat_runs: bool, period: int
) -> None:
    walks = [random_walk(seed + r, n, start=start, flat_runs=flat_runs) for r in range(n_rows)]
    out, seen = stream(walks, seed, skip_prob, period)
    for r, w in enumerate(walks):
        k = reached(seen, r)
        assert_close(out[r, :k], rsi_batch(pl.Series(w.close), period).to_numpy()[:k])


def test_peek_is_pure_and_matches_update() -> None:
    walks = [random_walk(seed, 80) for seed in range(3)]
    closes = [w.close for w in walks]
    rsi = RSI(n_rows=3)
    all_rows = np.arange(3)

    def step(rows: IntArray, idx: IntArray) -> None:
        close = gather(closes, rows, idx)
        before = rsi.state()
        rsi.peek(rows, close * 1.01)  # a forming bar that later moves
        peeked = rsi.peek(rows, close)
        assert_same_state(rsi.state(), before, all_rows)
        np.testing.assert_array_equal(peeked, rsi.update(rows, close))

    stream_rows(80, 3, step, seed=7, skip_prob=0.3)


def test_reset_rows_equal_fresh() -> None:
    old = [random_walk(seed, 100) for seed in range(4)]
    new = random_walk(99, 60).close
    rsi, control, fresh = RSI(n_rows=4), RSI(n_rows=4), RSI(n_rows=4)
    for i in range(40):
        rows = np.arange(4)
        x = np.array([w.close[i] for w in old])
        rsi.update(rows, x)
        control.update(rows, x)
    wiped, kept = np.array([1, 3]), np.array([0, 2])
    rsi.reset(wiped)
    assert_same_state(rsi.state(), fresh.state(), wiped)
    assert_same_state(rsi.state(), control.state(), kept)
    for i in range(60):
        # Wiped rows start a new series while kept rows carry on with theirs.
        rows = np.array([2, 1, 0, 3])
        x = np.array([old[2].close[40 + i], new[i], old[0].close[40 + i], new[i]])
        got = rsi.update(rows, x)
        np.testing.assert_array_equal(got[[1, 3]], fresh.update(wiped, new[[i, i]]))
        np.testing.assert_array_equal(got[[2, 0]], control.update(kept, x[[2, 0]]))
    assert_same_state(rsi.state(), fresh.state(), wiped)
    assert_same_state(rsi.state(), control.state(), kept)


@pytest.mark.parametrize("period", [1, 0, -3])
def test_rejects_bad_period(period: int) -> None:
    with pytest.raises(ValueError, match="period must be >= 2"):
        RSI(period)


def test_rejects_negative_rows() -> None:
    with pytest.raises(ValueError, match="n_rows"):
        RSI(14, n_rows=-1)
