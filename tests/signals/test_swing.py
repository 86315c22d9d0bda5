"""Swing: streaming == polars batch == TA-Lib MAX/MIN (H, L) and a numpy brute force (ties)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from signals.arrays import FloatArray, IntArray
from signals.indicators.swing import (
    FIB_EXTENSIONS,
    FIB_LEVEL_NAMES,
    FIB_RATIOS,
    FIB_RETRACEMENTS,
    Swing,
    SwingValues,
    swing_batch,
)
from tests.signals.walks import Walk, assert_close, gather, random_walk, shift1, stream_rows

FIELDS = ("swing_high", "swing_low", "high_age", "low_age", "direction", "fib_ratio")


def brute(walk: Walk, lookback: int) -> dict[str, FloatArray]:
    """The definition, bar by bar: window of the previous bars, most recent bar on ties."""
    n = len(walk)
    out = {f: np.full(n, np.nan) for f in FIELDS}
    out["levels"] = np.full((n, len(FIB_RATIOS)), np.nan)
    for i in range(lookback, n):
        wh, wl = walk.high[i - lookback : i], walk.low[i - lookback : i]
        h, lo = wh.max(), wl.min()
        jh, jl = np.flatnonzero(wh == h)[-1], np.flatnonzero(wl == lo)[-1]
        up = jl < jh
        out["swing_high"][i], out["swing_low"][i] = h, lo
        out["high_age"][i], out["low_age"][i] = lookback - jh, lookback - jl
        out["direction"][i] = 1.0 if up else -1.0
        if h == lo:
            continue
        span, close = h - lo, walk.close[i]
        if up:
            out["fib_ratio"][i] = (h - close) / span
            levels = [h - k * span for k in FIB_RETRACEMENTS] + [
                lo + e * span for e in FIB_EXTENSIONS
            ]
        else:
            out["fib_ratio"][i] = (close - lo) / span
            levels = [lo + k * span for k in FIB_RETRACEMENTS] + [
                h - e * span for e in FIB_EXTENSIONS
            ]
        out["levels"][i] = levels
    return out


def batch_arrays(walk: Walk, lookback: int) -> dict[str, FloatArray]:
    ref = swing_batch(pl.Series(walk.high), pl.Series(walk.low), pl.Series(walk.close), lookback)
    out = {f: ref[f].to_numpy().astype(np.float64) for f in FIELDS}
    out["levels"] = ref.select(FIB_LEVEL_NAMES).to_numpy().astype(np.float64)
    return out


def stream(
    ind: Swing, walks: list[Walk], seed: int, skip_prob: float
) -> tuple[dict[str, FloatArray], np.ndarray]:
    """Stream every walk as one row in random batches; each field per (row, bar), and seen."""
    n, n_rows = len(walks[0]), len(walks)
    out = {f: np.full((n_rows, n), np.nan) for f in FIELDS}
    out["levels"] = np.full((n_rows, n, len(FIB_RATIOS)), np.nan)
    seen = np.zeros((n_rows, n), dtype=bool)
    cols = {f: [getattr(w, f) for w in walks] for f in ("high", "low", "close")}

    def step(rows: IntArray, idx: IntArray) -> None:
        h, lo, c = (gather(cols[f], rows, idx) for f in ("high", "low", "close"))
        values = ind.update(rows, h, lo, c)
        for f in (*FIELDS, "levels"):
            out[f][rows, idx] = getattr(values, f)
        seen[rows, idx] = True

    stream_rows(n, n_rows, step, seed, skip_prob)
    return out, seen


def assert_fields(actual: dict[str, FloatArray], expected: dict[str, FloatArray]) -> None:
    for f in (*FIELDS, "levels"):
        assert_close(actual[f], expected[f])


def test_ratios_and_names() -> None:
    assert FIB_RATIOS == (0.236, 0.382, 0.5, 0.618, 0.786, 1.272, 1.618)
    assert FIB_LEVEL_NAMES == (
        "fib_236", "fib_382", "fib_500", "fib_618", "fib_786", "fib_1272", "fib_1618",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("n", "start", "flat_runs", "lookback"),
    [(5200, 100.0, False, 60), (2000, 2.0, True, 60), (1500, 100.0, True, 9)],
)
def test_streaming_equals_talib_and_brute_force(
    n: int, start: float, flat_runs: bool, lookback: int
) -> None:
    walks = [random_walk(100 + seed, n, start=start, flat_runs=flat_runs) for seed in range(3)]
    out, seen = stream(Swing(lookback, n_rows=len(walks)), walks, seed=n, skip_prob=0.2)
    for row, walk in enumerate(walks):
        mask = seen[row]
        assert mask.sum() > n // 2
        assert_close(out["swing_high"][row, mask], shift1(talib.MAX(walk.high, lookback))[mask])
        assert_close(out["swing_low"][row, mask], shift1(talib.MIN(walk.low, lookback))[mask])
        expected = brute(walk, lookback)
        assert_fields(
            {f: a[row, mask] for f, a in out.items()}, {f: a[mask] for f, a in expected.items()}
        )


def test_positions_equal_talib_where_the_extremes_are_unique() -> None:
    """TA-Lib's MAXINDEX/MININDEX pick the oldest tie, so compare only untied windows."""
    walk, lookback = random_walk(7, 5000, flat_runs=True), 60
    ref = batch_arrays(walk, lookback)
    bar = np.arange(len(walk))
    exp_high_age = bar - shift1(talib.MAXINDEX(walk.high, lookback))
    exp_low_age = bar - shift1(talib.MININDEX(walk.low, lookback))
    warm = ~np.isnan(ref["swing_high"])
    unique = warm.copy()
    for i in np.flatnonzero(warm):
        unique[i] = (
            np.sum(walk.high[i - lookback : i] == ref["swing_high"][i]) == 1
            and np.sum(walk.low[i - lookback : i] == ref["swing_low"][i]) == 1
        )
    assert 0 < unique.sum() < warm.sum()  # flat runs make some ties
    np.testing.assert_array_equal(ref["high_age"][unique], exp_high_age[unique])
    np.testing.assert_array_equal(ref["low_age"][unique], exp_low_age[unique])
    exp_dir = np.where(exp_low_age > exp_high_age, 1.0, -1.0)
    np.testing.assert_array_equal(ref["direction"][unique], exp_dir[unique])


@pytest.mark.parametrize(("start", "flat_runs"), [(100.0, False), (2.0, True)])
def test_batch_equals_talib_and_brute_force(start: float, flat_runs: bool) -> None:
    walk = random_walk(21, 5000, start=start, flat_runs=flat_runs)
    ref = batch_arrays(walk, 60)
    assert_close(ref["swing_high"], shift1(talib.MAX(walk.high, 60)))
    assert_close(ref["swing_low"], shift1(talib.MIN(walk.low, 60)))
    assert_fields(ref, brute(walk, 60))


def hand_walk(high: list[float], low: list[float], close: list[float]) -> Walk:
    h, lo, c = (np.array(x, dtype=np.float64) for x in (high, low, close))
    return Walk(c, h, lo, c, np.ones_like(c))


@pytest.mark.parametrize(
    ("high", "low", "direction", "high_age", "low_age"),
    [
        # H ties at bars 0 and 2, L at bars 1 and 3: the most recent are 2 and 3 -> down.
        # (Oldest-tie rules, as TA-Lib's MAXINDEX, would say 0 and 1 -> up.)
        ([3.0, 1.0, 3.0, 2.0], [1.0, 0.5, 2.0, 0.5], -1.0, 2.0, 1.0),
        # H ties at bars 0 and 2, L at bar 1 only: L before H's most recent bar -> up.
        ([3.0, 1.0, 3.0, 2.0], [1.0, 0.5, 2.0, 1.0], 1.0, 2.0, 3.0),
        # H and L on the same (most recent) bar: not strictly before -> down.
        ([2.0, 2.0, 1.5, 3.0], [1.0, 1.0, 1.2, 1.0], -1.0, 1.0, 1.0),
    ],
)
def test_ties_resolve_to_the_most_recent_bar(
    high: list[float], low: list[float], direction: float, high_age: float, low_age: float
) -> None:
    walk = hand_walk([*high, 2.0], [*low, 1.0], [2.0] * 4 + [1.5])
    got = Swing(4, n_rows=1)
    rows = np.array([0], dtype=np.int64)
    for i in range(5):
        values = got.update(rows, walk.high[i : i + 1], walk.low[i : i + 1], walk.close[i : i + 1])
    ref, exp = batch_arrays(walk, 4), brute(walk, 4)
    for f, want in (("direction", direction), ("high_age", high_age), ("low_age", low_age)):
        assert getattr(values, f)[0] == want == ref[f][4] == exp[f][4], f
    span = values.swing_high[0] - values.swing_low[0]
    want_ratio = (3.0 - 1.5) / span if direction > 0 else (1.5 - values.swing_low[0]) / span
    assert math.isclose(values.fib_ratio[0], want_ratio, rel_tol=0.0, abs_tol=1e-15)


def test_golden_levels() -> None:
    """Up-swing L=10 then H=20, close 17.5: r = 0.25; retracements below H, extensions above."""
    walk = hand_walk([11.0, 20.0, 15.0], [10.0, 14.0, 12.0], [10.5, 19.0, 17.5])
    ind = Swing(3, n_rows=1)
    rows = np.array([0], dtype=np.int64)
    for i in range(3):
        ind.update(rows, walk.high[i : i + 1], walk.low[i : i + 1], walk.close[i : i + 1])
    up = ind.peek(rows, np.array([18.0]), np.array([17.0]), np.array([17.5]))
    assert (up.swing_high[0], up.swing_low[0], up.direction[0]) == (20.0, 10.0, 1.0)
    assert up.fib_ratio[0] == 0.25
    np.testing.assert_allclose(
        up.levels[0], [17.64, 16.18, 15.0, 13.82, 12.14, 22.72, 26.18], rtol=0, atol=1e-12
    )
    # Down-swing H=20 then L=10, close 12.5: bounce b = 0.25; extensions below L.
    down = Swing(2, n_rows=1)
    for h, lo in ((20.0, 15.0), (14.0, 10.0)):
        down.update(rows, np.array([h]), np.array([lo]), np.array([lo]))
    dv = down.peek(rows, np.array([13.0]), np.array([12.0]), np.array([12.5]))
    assert (dv.direction[0], dv.fib_ratio[0]) == (-1.0, 0.25)
    np.testing.assert_allclose(
        dv.levels[0], [12.36, 13.82, 15.0, 16.18, 17.86, 7.28, 3.82], rtol=0, atol=1e-12
    )


def test_flat_window_has_no_ratio_or_levels() -> None:
    walk = hand_walk([5.0] * 4, [5.0] * 4, [5.0, 5.0, 5.0, 6.0])
    ind = Swing(3, n_rows=1)
    rows = np.array([0], dtype=np.int64)
    values = [
        ind.update(rows, walk.high[i : i + 1], walk.low[i : i + 1], walk.close[i : i + 1])
        for i in range(4)
    ]
    last = values[-1]
    assert (last.swing_high[0], last.swing_low[0], last.direction[0]) == (5.0, 5.0, -1.0)
    assert np.isnan(last.fib_ratio[0])
    assert np.isnan(last.levels).all()
    ref = swing_batch(pl.Series(walk.high), pl.Series(walk.low), pl.Series(walk.close), 3)
    assert ref["fib_ratio"].null_count() == 4
    assert ref.row(3, named=True)["direction"] == -1


def test_warming_up_is_nan() -> None:
    ind = Swing(3, n_rows=2)
    rows = np.array([1, 0], dtype=np.int64)
    for _ in range(3):
        values = ind.update(rows, np.array([2.0, 3.0]), np.array([1.0, 1.0]), np.array([1.5, 2.0]))
        for f in FIELDS:
            assert np.isnan(getattr(values, f)).all(), f
        assert np.isnan(values.levels).all()
        assert values.levels.shape == (2, len(FIB_RATIOS))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 150),
    n_rows=st.integers(1, 3),
    lookback=st.integers(2, 40),
    skip_prob=st.sampled_from([0.0, 0.3]),
    flat_runs=st.booleans(),
)
def test_streaming_equals_batch(
    *, seed: int, n: int, n_rows: int, lookback: int, skip_prob: float, flat_runs: bool
) -> None:
    walks = [random_walk(seed + r, n, start=2.0, flat_runs=flat_runs) for r in range(n_rows)]
    out, seen = stream(Swing(lookback, n_rows), walks, seed, skip_prob)
    for row, walk in enumerate(walks):
        mask = seen[row]
        ref = batch_arrays(walk, lookback)
        assert_fields(
            {f: a[row, mask] for f, a in out.items()}, {f: a[mask] for f, a in ref.items()}
        )


def test_peek_is_pure_and_equals_update() -> None:
    walks = [random_walk(seed, 150, flat_runs=True) for seed in range(3)]
    ind = Swing(12, n_rows=3)
    cols = {f: [getattr(w, f) for w in walks] for f in ("high", "low", "close")}

    def step(rows: IntArray, idx: IntArray) -> None:
        args = [gather(cols[f], rows, idx) for f in ("high", "low", "close")]
        before = ind.state()
        peeked = ind.peek(rows, *args)
        for name, arr in ind.state().items():
            assert np.array_equal(arr, before[name], equal_nan=True), name
        updated = ind.update(rows, *args)
        for f in (*FIELDS, "levels"):
            assert np.array_equal(getattr(peeked, f), getattr(updated, f), equal_nan=True), f

    stream_rows(150, 3, step, seed=9, skip_prob=0.2)


def test_reset_rows_equals_fresh() -> None:
    walk = random_walk(4, 80)
    ind, fresh = Swing(6, n_rows=3), Swing(6, n_rows=3)
    rows = np.arange(3, dtype=np.int64)
    for i in range(50):
        ind.update(rows, *(np.full(3, x[i]) for x in (walk.high, walk.low, walk.close)))
    ind.reset(np.array([2]))
    for name, arr in ind.state().items():
        assert np.array_equal(arr[2], fresh.state()[name][2], equal_nan=True), name
    one = np.array([2], dtype=np.int64)
    for i in range(50, 80):
        args = [x[i : i + 1] for x in (walk.high, walk.low, walk.close)]
        a: SwingValues = ind.update(one, *args)
        b: SwingValues = fresh.update(one, *args)
        for f in (*FIELDS, "levels"):
            assert np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True), f


@pytest.mark.parametrize(("lookback", "n_rows"), [(1, 0), (0, 0), (60, -1)])
def test_rejects_bad_parameters(lookback: int, n_rows: int) -> None:
    with pytest.raises(ValueError, match="must be >= "):
        Swing(lookback, n_rows)
