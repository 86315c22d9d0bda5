"""VolumeRatio: streaming == polars batch == volume / TA-Lib SMA of the previous bars."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from signals.arrays import FloatArray, IntArray
from signals.indicators.volume_ratio import VolumeRatio, volume_ratio_batch
from tests.signals.walks import assert_close, gather, random_walk, stream_rows


def oracle(volume: FloatArray, period: int) -> FloatArray:
    """volume / SMA(volume) through the previous bar; NaN where that mean is 0."""
    mean = np.concatenate([[np.nan], talib.SMA(volume, period)[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0.0, volume / mean, np.nan)


def volumes(seed: int, n: int, *, start: float = 100.0, zero_runs: bool = False) -> FloatArray:
    """A walk's volumes; `zero_runs` blanks stretches (halts, dead tape) to reach a zero mean."""
    v = random_walk(seed, n, start=start, flat_runs=True).volume.copy()
    if zero_runs:
        rng = np.random.default_rng(seed)
        for s in rng.integers(0, n, size=max(n // 50, 1)):
            v[s : s + int(rng.integers(1, 30))] = 0.0
    return v


def stream(
    ind: VolumeRatio, series: list[FloatArray], seed: int, skip_prob: float
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Stream every series as one row in random batches; ratio and seen per (row, bar)."""
    n = len(series[0])
    out = np.full((len(series), n), np.nan)
    seen = np.zeros((len(series), n), dtype=bool)

    def step(rows: IntArray, idx: IntArray) -> None:
        out[rows, idx] = ind.update(rows, gather(series, rows, idx))
        seen[rows, idx] = True

    stream_rows(n, len(series), step, seed, skip_prob)
    return out, seen


@pytest.mark.parametrize(
    ("n", "start", "zero_runs", "period"),
    [(6000, 100.0, False, 20), (2000, 2.0, True, 20), (1500, 100.0, True, 3)],
)
def test_streaming_equals_talib(n: int, start: float, zero_runs: bool, period: int) -> None:
    series = [volumes(seed, n, start=start, zero_runs=zero_runs) for seed in range(4)]
    out, seen = stream(VolumeRatio(period, n_rows=len(series)), series, seed=n, skip_prob=0.2)
    for row, v in enumerate(series):
        mask = seen[row]
        assert mask.sum() > n // 2
        assert_close(out[row, mask], oracle(v, period)[mask])


@pytest.mark.parametrize("zero_runs", [False, True])
def test_batch_equals_talib(zero_runs: bool) -> None:
    v = volumes(5, 5000, zero_runs=zero_runs)
    ref = volume_ratio_batch(pl.Series(v), 20)
    assert ref.name == "volume_ratio"
    expected = oracle(v, 20)
    assert_close(ref.to_numpy(), expected)
    assert np.isnan(expected[20:]).any() == zero_runs  # a zero mean is NaN, not inf


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 150),
    n_rows=st.integers(1, 4),
    period=st.integers(1, 30),
    skip_prob=st.sampled_from([0.0, 0.3]),
    zero_runs=st.booleans(),
)
def test_streaming_equals_batch(
    *, seed: int, n: int, n_rows: int, period: int, skip_prob: float, zero_runs: bool
) -> None:
    series = [volumes(seed + r, n, zero_runs=zero_runs) for r in range(n_rows)]
    out, seen = stream(VolumeRatio(period, n_rows), series, seed, skip_prob)
    for row, v in enumerate(series):
        mask = seen[row]
        assert_close(out[row, mask], volume_ratio_batch(pl.Series(v), period).to_numpy()[mask])


def test_golden() -> None:
    ind = VolumeRatio(2, n_rows=1)
    row = np.array([0], dtype=np.int64)
    got = [float(ind.update(row, np.array([v]))[0]) for v in (100.0, 300.0, 400.0, 0.0, 0.0, 5.0)]
    assert np.isnan(got[:2]).all()
    assert got[2:4] == [2.0, 0.0]  # 400 / mean(100, 300); 0 / mean(300, 400)
    assert got[4] == 0.0  # 0 / mean(400, 0)
    assert np.isnan(got[5])  # mean(0, 0) == 0: no normal volume to compare with


def test_peek_is_pure_and_equals_update() -> None:
    series = [volumes(seed, 120, zero_runs=True) for seed in range(3)]
    ind = VolumeRatio(10, n_rows=3)

    def step(rows: IntArray, idx: IntArray) -> None:
        v = gather(series, rows, idx)
        before = ind.state()
        peeked = ind.peek(rows, v)
        for name, arr in ind.state().items():
            assert np.array_equal(arr, before[name], equal_nan=True), name
        assert np.array_equal(peeked, ind.update(rows, v), equal_nan=True)

    stream_rows(120, 3, step, seed=6, skip_prob=0.2)


def test_reset_rows_equals_fresh() -> None:
    v = volumes(8, 60)
    ind, fresh = VolumeRatio(5, n_rows=3), VolumeRatio(5, n_rows=3)
    for i in range(40):
        ind.update(np.arange(3, dtype=np.int64), np.full(3, v[i]))
    ind.reset(np.array([0]))
    for name, arr in ind.state().items():
        assert np.array_equal(arr[0], fresh.state()[name][0], equal_nan=True), name
    one = np.array([0], dtype=np.int64)
    for i in range(40, 60):
        a, b = ind.update(one, v[i : i + 1]), fresh.update(one, v[i : i + 1])
        assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize(("period", "n_rows"), [(0, 0), (-1, 0), (20, -1)])
def test_rejects_bad_parameters(period: int, n_rows: int) -> None:
    with pytest.raises(ValueError, match="must be >= "):
        VolumeRatio(period, n_rows)
