"""Every shortcut of the hot path gives, bit for bit, what the plain path it skips gives.

The plain paths are either still in the code (called directly here) or, where
the shortcut replaced them, written out below as they were.
"""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from signals.aggregate import Aggregator, Timeframe, _concat
from signals.arrays import BoolArray, FloatArray, IntArray
from signals.bar import BarBatch
from signals.engine import COLUMNS, Engine, EngineConfig, Evaluation, join
from signals.indicators.ema import EMA
from signals.indicators.rvol import RelativeVolume
from signals.indicators.swing import Swing, _masked_frame
from signals.rules.conditions import breakout as _breakout
from signals.rules.conditions import crossed as _crossed
from signals.rules.spec import RuleSpec
from signals.score import SIGNALS, Composite
from signals.sessions import SessionTable
from signals.subscores import sub_fib, sub_macd
from tests.signals.market import batches, random_market, to_batch

SEEDS = st.integers(0, 2**32 - 1)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shapes and bits (NaN equal to NaN)."""
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


# -- EMA: warm rows skip the seeding formula, a full mask skips the masking --------------------


def _plain_update(ema: EMA, rows: IntArray, x: FloatArray) -> FloatArray:
    prev = ema._value[rows]
    value = ema._seeding(rows, x, prev)
    ema._seed[rows] += np.where(np.isnan(prev), x, 0.0)
    ema._count[rows] += 1
    ema._value[rows] = value
    return value


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, period=st.integers(1, 6), steps=st.integers(1, 15))
def test_ema_shortcuts_equal_the_plain_path(seed: int, period: int, steps: int) -> None:
    rng = np.random.default_rng(seed)
    fast, plain = EMA(period, 5), EMA(period, 5)
    for _ in range(steps):
        rows = rng.permutation(5)[: int(rng.integers(1, 6))].astype(np.int64)
        x = rng.normal(100.0, 5.0, len(rows))
        mask = rng.random(len(rows)) < 0.8
        assert same(fast.peek(rows, x), plain._seeding(rows, x, plain._value[rows]))
        got = fast.step_where(rows, x, mask, advance=True)
        want = np.full(len(rows), np.nan)
        want[mask] = _plain_update(plain, rows[mask], x[mask])
        assert same(got, want)
        for a, b in zip(fast.state().values(), plain.state().values(), strict=True):
            assert same(a, b)


# -- score: table lookups and a division without np.errstate -----------------------------------


def _plain_fib(d: FloatArray, r: FloatArray) -> FloatArray:
    up = np.select([r < 0.0, r < 0.382, r <= 0.618, r <= 0.786], [75.0, 60.0, 80.0, 45.0], 20.0)
    score = np.where(d > 0, up, 100.0 - up)
    return np.where(np.isnan(r) | np.isnan(d), np.nan, score)


EDGES = st.sampled_from([0.0, 0.382, 0.618, 0.786, -0.0, np.nan, np.inf, -np.inf])
RATIOS = st.lists(st.one_of(st.floats(-1.0, 2.0), EDGES), min_size=1, max_size=30)


@given(ratios=RATIOS, data=st.data())
def test_fib_table_equals_the_select(ratios: list[float], data: st.DataObject) -> None:
    r = np.array(ratios)
    d = np.array(
        data.draw(
            st.lists(st.sampled_from([1.0, -1.0, 0.0, np.nan]), min_size=len(r), max_size=len(r))
        )
    )
    assert same(sub_fib(d, r), _plain_fib(d, r))


@given(
    hist=st.lists(st.one_of(st.floats(-5.0, 5.0), st.just(np.nan)), min_size=1, max_size=20),
    data=st.data(),
)
def test_macd_score_equals_the_plain_formula(hist: list[float], data: st.DataObject) -> None:
    h = np.array(hist)
    # (an ATR near the smallest double overflows h / ATR either way: no price has one)
    atr = st.one_of(st.floats(1e-6, 5.0), st.floats(-1.0, -1e-6), st.sampled_from([0.0, np.nan]))
    a = np.array(data.draw(st.lists(atr, min_size=len(h), max_size=len(h))))
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.where(a > 0.0, 50.0 + 50.0 * np.tanh(h / (0.25 * a)), np.nan)
    assert same(sub_macd(h, a), want)


def _plain_composite(
    subs: dict[str, FloatArray], weights: dict[str, float], min_signals: int
) -> FloatArray:
    names = [n for n in SIGNALS if n in subs]
    w = np.array([weights.get(n, 1.0) for n in names])
    stack = np.vstack([subs[n] for n in names])
    avail = ~np.isnan(stack) & (w[:, None] > 0)
    wsum = (avail * w[:, None]).sum(axis=0)
    total = np.where(avail, stack * w[:, None], 0.0).sum(axis=0)
    enough = avail.sum(axis=0) >= min_signals
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(enough & (wsum > 0), total / wsum, np.nan)


@settings(max_examples=80)
@given(
    seed=SEEDS,
    n=st.integers(0, 12),
    k=st.integers(1, len(SIGNALS)),
    min_signals=st.integers(0, 9),
    weighted=st.booleans(),
)
def test_composite_equals_the_weighted_formula(
    seed: int, n: int, k: int, min_signals: int, weighted: bool
) -> None:
    rng = np.random.default_rng(seed)
    subs = {}
    for name in list(SIGNALS)[:k]:
        col = rng.uniform(0.0, 100.0, n)
        col[rng.random(n) < 0.3] = np.nan
        subs[name] = col
    weights = (
        {s: float(rng.choice([0.0, 0.5, 1.0, 3.0])) for s in SIGNALS if rng.random() < 0.5}
        if weighted
        else {}
    )
    got = Composite(weights, min_signals)(subs)
    assert same(got, _plain_composite(subs, weights, min_signals))


# -- swing: all rows warm skips the masks --------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, lookback=st.integers(2, 8), bars=st.integers(0, 30))
def test_swing_frame_of_warm_rows_equals_the_masked_frame(
    seed: int, lookback: int, bars: int
) -> None:
    rng = np.random.default_rng(seed)
    swing = Swing(lookback, 4)
    rows = np.arange(4, dtype=np.int64)
    for _ in range(bars):
        low = np.round(rng.uniform(90.0, 100.0, 4), 1)  # ties happen
        swing.update(rows, low + np.round(rng.uniform(0.0, 3.0, 4), 1), low, low)
    warm = swing._highs.full(rows)
    assume(bool(warm.all()))
    got = swing.frame(rows)
    want = _masked_frame(warm, *swing._extremes(rows, warm))
    for name in got.__dataclass_fields__:
        assert same(getattr(got, name), getattr(want, name)), name


# -- relative volume: a minute that closes no session skips the closing steps -------------------


def _plain_rvol_update(
    ind: RelativeVolume, rows: IntArray, session: IntArray, minute: IntArray, volume: FloatArray
) -> FloatArray:
    """`RelativeVolume.update` as it was, every step on every row."""
    new = (ind._minute[rows] < 0) | (session != ind._session[rows])
    closing = new & (ind._minute[rows] >= 0)
    closed = np.cumsum(ind._current[rows[closing]], axis=1)
    done = np.minimum(ind._done[rows] + closing, ind.sessions)
    sums = ind._sums[rows, minute]
    ending = rows[closing]
    evicted = ind._profiles()[ending, ind._slot[ending], minute[closing]]
    sums[closing] = sums[closing] + (closed[np.arange(len(closed)), minute[closing]] - evicted)
    mean = sums / ind.sessions
    mean = np.where((done == ind.sessions) & (mean > 0.0), mean, np.nan)
    total = np.where(new, 0.0, ind._total[rows]) + volume
    ended = rows[closing]
    profiles = ind._profiles()
    ind._sums[ended] = ind._sums[ended] + (closed - profiles[ended, ind._slot[ended]])
    profiles[ended, ind._slot[ended]] = closed
    ind._slot[ended] = (ind._slot[ended] + 1) % ind.sessions
    ind._done[ended] = np.minimum(ind._done[ended] + 1, ind.sessions)
    ind._current[rows[new]] = 0.0
    ind._current[rows, minute] = volume
    ind._total[rows] = total
    ind._session[rows] = session
    ind._minute[rows] = minute
    return np.asarray(total / mean, dtype=np.float64)


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, steps=st.integers(1, 60))
def test_rvol_equals_the_plain_update(seed: int, steps: int) -> None:
    rng = np.random.default_rng(seed)
    fast, plain = RelativeVolume(2, 5, 3), RelativeVolume(2, 5, 3)
    session = np.zeros(3, np.int64)
    minute = np.full(3, -1, np.int64)
    for _ in range(steps):
        rows = np.flatnonzero(rng.random(3) < 0.7).astype(np.int64)
        if not len(rows):
            continue
        # Each row goes to a later minute, or opens a later session.
        roll = rng.random(len(rows)) < 0.25
        session[rows] += roll
        minute[rows] = np.where(roll, 0, minute[rows] + 1)
        over = minute[rows] >= 5
        session[rows[over]] += 1
        minute[rows[over]] = 0
        volume = rng.uniform(0.0, 10.0, len(rows)).round()
        args = (rows, session[rows].copy(), minute[rows].copy(), volume)
        assert same(fast.peek(*args), copy.deepcopy(plain).update(*args))
        assert same(fast.update(*args), _plain_rvol_update(plain, *args))
        for a, b in zip(fast.state().values(), plain.state().values(), strict=True):
            assert same(a, b)


# -- aggregation: a minute that opens no bar skips the opening ones ----------------------------


def _table() -> SessionTable:
    days = np.arange(20, dtype=np.int64) * 86_400 + 1_700_000_000 // 86_400 * 86_400
    return SessionTable(days, days + 52_200, days + 52_200 + 10 * 60)


def _plain_aggregate(agg: Aggregator, batch: BarBatch) -> BarBatch:
    """`Aggregator.update` as it was (the forming bars' arithmetic)."""
    start, end, regular = agg._bucket(batch.time)
    keep = np.flatnonzero(regular)
    rows = agg._rows_of(batch.symbol)[keep]
    start, end = start[keep], end[keep]
    superseded = (agg._start[rows] != -(2**63)) & (agg._start[rows] != start)
    closed = [agg._emit(rows[superseded])]
    o, h, lo, c, v = (getattr(batch, f)[keep] for f in ("open", "high", "low", "close", "volume"))
    new = agg._start[rows] != start
    cur = agg._ohlcv[rows]
    agg._ohlcv[rows] = np.column_stack(
        [
            np.where(new, o, cur[:, 0]),
            np.where(new, h, np.maximum(cur[:, 1], h)),
            np.where(new, lo, np.minimum(cur[:, 2], lo)),
            c,
            np.where(new, v, cur[:, 4] + v),
        ]
    )
    agg._start[rows] = start
    agg._end[rows] = end
    complete = batch.time[keep] + 60 >= end
    closed.append(agg._emit(rows[complete]))
    return _concat(closed)


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, name=st.sampled_from(["5m", "1d"]), minutes=st.integers(1, 40))
def test_aggregation_equals_the_plain_update(seed: int, name: str, minutes: int) -> None:
    rng = np.random.default_rng(seed)
    table = _table()
    fast, plain = Aggregator(Timeframe.parse(name), table), Aggregator(Timeframe.parse(name), table)
    symbols = ["A", "B", "C"]
    t = int(table.open[0])
    for _ in range(minutes):
        t += 60 * int(rng.integers(1, 4))
        if t >= table.close[0]:
            t = int(table.open[1])
        present = [s for s in symbols if rng.random() < 0.8] or ["A"]
        low = rng.uniform(90.0, 100.0, len(present))
        batch = BarBatch(
            symbol=present,
            time=np.full(len(present), t, np.int64),
            open=low + 1.0,
            high=low + 2.0,
            low=low,
            close=low + 0.5,
            volume=rng.uniform(1.0, 9.0, len(present)).round(),
        )
        got, want = fast.update(batch), _plain_aggregate(plain, batch)
        assert list(got.symbol) == list(want.symbol)
        for f in ("time", "open", "high", "low", "close", "volume"):
            assert same(getattr(got, f), getattr(want, f)), f
        for a, b in zip(fast.snapshot()[1].values(), plain.snapshot()[1].values(), strict=True):
            assert same(a, b)


# -- sessions: a batch of one time is located once ---------------------------------------------


@given(offset=st.integers(-3_000, 40_000), n=st.integers(1, 5), day=st.integers(0, 19))
def test_one_time_locate_equals_the_plain_one(offset: int, n: int, day: int) -> None:
    table = _table()
    t = np.full(n, int(table.open[day]) + offset, np.int64)
    plain = table._locate(t)
    for _ in range(2):  # the second answer is the kept one
        got = table.locate(t)
        for f in ("index", "label", "minute", "regular"):
            assert same(getattr(got, f), getattr(plain, f)), f


# -- the engine: kept peek inputs, runs of bar times, joined evaluations -----------------------


@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, n_bars=st.integers(1, 90), peeks=st.integers(1, 3))
def test_kept_peek_inputs_give_what_closing_the_bar_gives(
    seed: int, n_bars: int, peeks: int
) -> None:
    df = random_market(seed, n_bars + 1)
    times = df["time"].unique().sort()
    engine = Engine(EngineConfig())
    for b in batches(df.filter(pl.col("time") < times[-1]), seed):
        engine.on_bars(b)
    last = to_batch(df.filter(pl.col("time") == times[-1]))
    closed = copy.deepcopy(engine).on_bars(last)
    for _ in range(peeks):  # the first peek keeps its inputs, the next ones reuse them
        peeked = engine.peek(last)
        for col in COLUMNS:
            assert same(peeked.columns[col], closed.columns[col]), col


@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, n_bars=st.integers(2, 40))
def test_a_batch_of_many_times_equals_its_times_one_by_one(seed: int, n_bars: int) -> None:
    df = random_market(seed, n_bars)
    assume(df.height > 0)
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=seed % 1000)
    whole = Engine().on_bars(to_batch(shuffled))
    one_by_one = Engine()
    parts = [
        one_by_one.on_bars(to_batch(shuffled.filter(pl.col("time") == t)))
        for t in df["time"].unique().sort()
    ]
    joined = join(parts)
    assert whole.symbol == joined.symbol
    assert same(whole.time, joined.time)
    for col in COLUMNS:
        assert same(whole.columns[col], joined.columns[col]), col
    # by_time hands the engine's parts back: what splitting by time gives.
    for part, t in zip(whole.by_time(), np.unique(whole.time), strict=True):
        split = whole.take(np.flatnonzero(whole.time == t))
        assert part.symbol == split.symbol
        for col in COLUMNS:
            assert same(part.columns[col], split.columns[col]), col


# -- rules: levels only where the volume is loud ------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, n=st.integers(1, 12), direction=st.sampled_from(["up", "down"]))
def test_breakout_on_loud_rows_equals_the_plain_crossing(seed: int, n: int, direction: str) -> None:
    rng = np.random.default_rng(seed)
    prev = rng.uniform(95.0, 105.0, n)
    close = prev + rng.normal(0.0, 3.0, n)
    rvol = rng.choice([0.5, 1.9, 2.0, 3.5, np.nan], n)
    names = ["prior_day_high", "prior_day_low", "donchian_high20", "donchian_low20"]
    names += [f"fib_{k}" for k in (236, 382, 500, 618, 786, 1272, 1618)]
    levels = {k: np.where(rng.random(n) < 0.1, np.nan, rng.uniform(94.0, 106.0, n)) for k in names}
    cols = {c: np.full(n, np.nan) for c in COLUMNS}
    cols.update(close=close, prev_close=prev, volume_signal=rvol)
    ev = join([_evaluation(n, cols)])
    spec = RuleSpec(name="b", operator="breakout", timeframe="1m", direction=direction)  # type: ignore[arg-type]
    cond, level, label = _breakout(spec, ev, levels)
    crossed, want_level, want_label = _crossed(spec, close, prev, levels)
    with np.errstate(invalid="ignore"):
        loud: BoolArray = np.asarray(rvol >= spec.min_rvol)
    assert same(cond, crossed & loud)
    assert same(level[loud], want_level[loud])
    assert [label[i] for i in np.flatnonzero(loud)] == [want_label[i] for i in np.flatnonzero(loud)]


def _evaluation(n: int, cols: dict[str, FloatArray]) -> Evaluation:
    return Evaluation(
        symbol=tuple(f"S{i}" for i in range(n)),
        time=np.zeros(n, np.int64),
        columns=cols,
        rejected=(),
        weights={},
        min_signals=5,
    )
