"""Donchian: streaming == polars batch == TA-Lib MAX/MIN of the previous bars."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from signals.arrays import FloatArray, IntArray
from signals.indicators.donchian import Donchian, donchian_batch
from tests.signals.walks import Walk, assert_close, gather, random_walk, shift1, stream_rows


def oracle(walk: Walk, period: int) -> tuple[FloatArray, FloatArray]:
    return (
        shift1(talib.MAX(walk.high, timeperiod=period)),
        shift1(talib.MIN(walk.low, timeperiod=period)),
    )


def stream(
    ind: Donchian, walks: list[Walk], seed: int, skip_prob: float
) -> tuple[FloatArray, FloatArray, np.ndarray]:
    """Stream every walk as one row in random batches; (upper, lower, seen) per row and bar."""
    n = len(walks[0])
    upper, lower = np.full((len(walks), n), np.nan), np.full((len(walks), n), np.nan)
    seen = np.zeros((len(walks), n), dtype=bool)
    highs, lows = [w.high for w in walks], [w.low for w in walks]

    def step(rows: IntArray, idx: IntArray) -> None:
        up, lo = ind.update(rows, gather(highs, rows, idx), gather(lows, rows, idx))
        upper[rows, idx], lower[rows, idx], seen[rows, idx] = up, lo, True

    stream_rows(n, len(walks), step, seed, skip_prob)
    return upper, lower, seen


@pytest.mark.parametrize(
    ("n", "start", "flat_runs", "period"),
    [(6000, 100.0, False, 20), (2000, 2.0, True, 20), (1500, 100.0, True, 7)],
)
def test_streaming_equals_talib(n: int, start: float, flat_runs: bool, period: int) -> None:
    walks = [random_walk(seed, n, start=start, flat_runs=flat_runs) for seed in range(4)]
    ind = Donchian(period, n_rows=len(walks))
    upper, lower, seen = stream(ind, walks, seed=n, skip_prob=0.2)
    for row, walk in enumerate(walks):
        exp_up, exp_lo = oracle(walk, period)
        mask = seen[row]
        assert mask.sum() > n // 2
        assert_close(upper[row, mask], exp_up[mask])
        assert_close(lower[row, mask], exp_lo[mask])


@pytest.mark.parametrize(("start", "flat_runs"), [(100.0, False), (2.0, True)])
def test_batch_equals_talib(start: float, flat_runs: bool) -> None:
    walk = random_walk(11, 5000, start=start, flat_runs=flat_runs)
    out = donchian_batch(pl.Series(walk.high), pl.Series(walk.low), 20)
    assert out.columns == ["donchian_high", "donchian_low"]
    exp_up, exp_lo = oracle(walk, 20)
    assert_close(out["donchian_high"].to_numpy(), exp_up)
    assert_close(out["donchian_low"].to_numpy(), exp_lo)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 150),
    n_rows=st.integers(1, 4),
    period=st.integers(1, 30),
    skip_prob=st.sampled_from([0.0, 0.3]),
    flat_runs=st.booleans(),
)
def test_streaming_equals_batch(
    *, seed: int, n: int, n_rows: int, period: int, skip_prob: float, flat_runs: bool
) -> None:
    walks = [random_walk(seed + r, n, start=2.0, flat_runs=flat_runs) for r in range(n_rows)]
    upper, lower, seen = stream(Donchian(period, n_rows), walks, seed, skip_prob)
    for row, walk in enumerate(walks):
        ref = donchian_batch(pl.Series(walk.high), pl.Series(walk.low), period)
        mask = seen[row]
        assert_close(upper[row, mask], ref["donchian_high"].to_numpy()[mask])
        assert_close(lower[row, mask], ref["donchian_low"].to_numpy()[mask])


def test_peek_is_pure_and_equals_update() -> None:
    walks = [random_walk(seed, 120, flat_runs=True) for seed in range(3)]
    ind = Donchian(10, n_rows=3)
    highs, lows = [w.high for w in walks], [w.low for w in walks]

    def step(rows: IntArray, idx: IntArray) -> None:
        h, lo = gather(highs, rows, idx), gather(lows, rows, idx)
        before = ind.state()
        peeked = ind.peek(rows, h, lo)
        for name, arr in ind.state().items():
            assert np.array_equal(arr, before[name], equal_nan=True), name
        updated = ind.update(rows, h, lo)
        for p, u in zip(peeked, updated, strict=True):
            assert np.array_equal(p, u, equal_nan=True)

    stream_rows(120, 3, step, seed=5, skip_prob=0.2)


def test_reset_rows_equals_fresh() -> None:
    walk = random_walk(3, 60)
    ind, fresh = Donchian(5, n_rows=3), Donchian(5, n_rows=3)
    rows = np.arange(3, dtype=np.int64)
    for i in range(40):
        ind.update(rows, np.full(3, walk.high[i]), np.full(3, walk.low[i]))
    ind.reset(np.array([1]))
    for name, arr in ind.state().items():
        assert np.array_equal(arr[1], fresh.state()[name][1], equal_nan=True), name
    one = np.array([1], dtype=np.int64)
    for i in range(40, 60):
        h, lo = walk.high[i : i + 1], walk.low[i : i + 1]
        for a, b in zip(ind.update(one, h, lo), fresh.update(one, h, lo), strict=True):
            assert np.array_equal(a, b, equal_nan=True)


def test_nan_until_period_previous_bars() -> None:
    ind = Donchian(3, n_rows=1)
    row = np.array([0], dtype=np.int64)
    got = [ind.update(row, np.array([h]), np.array([h - 1.0])) for h in (5.0, 7.0, 6.0, 4.0, 3.0)]
    assert [float(up[0]) for up, _ in got[3:]] == [7.0, 7.0]
    assert [float(lo[0]) for _, lo in got[3:]] == [4.0, 3.0]
    assert all(np.isnan(up[0]) and np.isnan(lo[0]) for up, lo in got[:3])


@pytest.mark.parametrize(("period", "n_rows"), [(0, 0), (-3, 0), (5, -1)])
def test_rejects_bad_parameters(period: int, n_rows: int) -> None:
    with pytest.raises(ValueError, match="must be >= "):
        Donchian(period, n_rows)
