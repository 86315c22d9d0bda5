"""MACD: streaming == TA-Lib == polars batch; peek is pure; reset rows equal fresh ones."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from signals.arrays import BoolArray, FloatArray, IntArray
from signals.indicators.macd import MACD, macd_batch
from tests.signals.walks import (
    Walk,
    assert_close,
    assert_same_state,
    gather,
    random_walk,
    reached,
    stream_rows,
)

COLUMNS = ("macd", "macd_signal", "macd_hist")
Params = tuple[int, int, int]


def stream(
    walks: list[Walk], seed: int, skip_prob: float, params: Params = (12, 26, 9)
) -> tuple[FloatArray, BoolArray]:
    """Each walk is one row, streamed in random batches.

    Returns values shaped (output, row, bar), outputs in COLUMNS order, and seen per row and bar.
    """
    n_rows, n = len(walks), len(walks[0])
    macd = MACD(*params, n_rows=n_rows)
    closes = [w.close for w in walks]
    out = np.full((3, n_rows, n), np.nan)
    seen = np.zeros((n_rows, n), dtype=np.bool_)

    def step(rows: IntArray, idx: IntArray) -> None:
        out[:, rows, idx] = macd.update(rows, gather(closes, rows, idx))
        seen[rows, idx] = True

    stream_rows(n, n_rows, step, seed, skip_prob)
    return out, seen


def talib_macd(close: FloatArray, params: Params = (12, 26, 9)) -> FloatArray:
    """The oracle, shaped (output, bar)."""
    fast, slow, signal = params
    return np.array(talib.MACD(close, fastperiod=fast, slowperiod=slow, signalperiod=signal))


def batch(close: FloatArray, params: Params = (12, 26, 9)) -> FloatArray:
    """The polars reference, shaped (output, bar)."""
    df = macd_batch(pl.Series(close), *params)
    assert df.columns == list(COLUMNS)
    return df.to_numpy().T


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
        want = talib_macd(w.close)
        for o in range(3):
            assert_close(out[o, r, :k], want[o, :k])


@pytest.mark.parametrize("case", CASES)
def test_batch_equals_talib(case: str) -> None:
    w = CASES[case](5)
    got, want = batch(w.close), talib_macd(w.close)
    for o in range(3):
        assert_close(got[o], want[o])


@pytest.mark.parametrize("params", [(5, 35, 5), (2, 3, 1), (3, 10, 20)])
def test_other_periods_equal_talib(params: Params) -> None:
    walks = [random_walk(seed, 300, flat_runs=True) for seed in range(3)]
    out, _ = stream(walks, seed=3, skip_prob=0.0, params=params)
    for r, w in enumerate(walks):
        want, got = talib_macd(w.close, params), batch(w.close, params)
        for o in range(3):
            assert_close(out[o, r], want[o])
            assert_close(got[o], want[o])


def test_first_output_at_slow_plus_signal_minus_two() -> None:
    # TA-Lib starts both EMAs at bar slow - 1; the signal then needs `signal` MACD values.
    out, _ = stream([random_walk(1, 60)], seed=0, skip_prob=0.0)
    for o in range(3):
        assert np.flatnonzero(~np.isnan(out[o, 0]))[0] == 26 + 9 - 2


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 150),
    seed=st.integers(0, 2**32 - 1),
    start=st.floats(0.5, 1000.0),
    n_rows=st.integers(1, 4),
    skip_prob=st.sampled_from([0.0, 0.3, 0.7]),
    flat_runs=st.booleans(),
    fast=st.integers(2, 12),
    extra=st.integers(1, 20),
    signal=st.integers(1, 12),
)
def test_streaming_equals_batch(
    *,
    n: int,
    seed: int,
    start: float,
    n_rows: int,
    skip_prob: float,
    flat_runs: bool,
    fast: int,
    extra: int,
    signal: int,
) -> None:
    params = (fast, fast + extra, signal)
    walks = [random_walk(seed + r, n, start=start, flat_runs=flat_runs) for r in range(n_rows)]
    out, seen = stream(walks, seed, skip_prob, params)
    for r, w in enumerate(walks):
        k = reached(seen, r)
        want = batch(w.close, params)
        for o in range(3):
            assert_close(out[o, r, :k], want[o, :k])


def test_peek_is_pure_and_matches_update() -> None:
    walks = [random_walk(seed, 80) for seed in range(3)]
    closes = [w.close for w in walks]
    macd = MACD(n_rows=3)
    all_rows = np.arange(3)

    def step(rows: IntArray, idx: IntArray) -> None:
        close = gather(closes, rows, idx)
        before = macd.state()
        macd.peek(rows, close * 1.01)  # a forming bar that later moves
        peeked = macd.peek(rows, close)
        assert_same_state(macd.state(), before, all_rows)
        for p, u in zip(peeked, macd.update(rows, close), strict=True):
            np.testing.assert_array_equal(p, u)

    stream_rows(80, 3, step, seed=7, skip_prob=0.3)


def test_reset_rows_equal_fresh() -> None:
    old = [random_walk(seed, 100) for seed in range(4)]
    new = random_walk(99, 60).close
    macd, control, fresh = MACD(n_rows=4), MACD(n_rows=4), MACD(n_rows=4)
    for i in range(40):
        rows = np.arange(4)
        x = np.array([w.close[i] for w in old])
        macd.update(rows, x)
        control.update(rows, x)
    wiped, kept = np.array([1, 3]), np.array([0, 2])
    macd.reset(wiped)
    assert_same_state(macd.state(), fresh.state(), wiped)
    assert_same_state(macd.state(), control.state(), kept)
    for i in range(60):
        # Wiped rows start a new series while kept rows carry on with theirs.
        rows = np.array([2, 1, 0, 3])
        x = np.array([old[2].close[40 + i], new[i], old[0].close[40 + i], new[i]])
        got = macd.update(rows, x)
        from_fresh = fresh.update(wiped, new[[i, i]])
        from_control = control.update(kept, x[[2, 0]])
        for o in range(3):
            np.testing.assert_array_equal(got[o][[1, 3]], from_fresh[o])
            np.testing.assert_array_equal(got[o][[2, 0]], from_control[o])
    assert_same_state(macd.state(), fresh.state(), wiped)
    assert_same_state(macd.state(), control.state(), kept)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ((1, 26, 9), "fast must be >= 2"),
        ((12, 12, 9), "slow must be > fast"),
        ((26, 12, 9), "slow must be > fast"),
        ((12, 26, 0), "signal must be >= 1"),
    ],
)
def test_rejects_bad_periods(params: Params, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MACD(*params)


def test_rejects_negative_rows() -> None:
    with pytest.raises(ValueError, match="n_rows"):
        MACD(n_rows=-1)
