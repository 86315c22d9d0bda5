"""The streaming engine equals the batch reference, and peek never changes it."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from signals.bar import Bar, BarBatch
from signals.engine import COLUMNS, Engine, EngineConfig, Links
from signals.rates import RatesSeries
from tests.signals.market import DAY, batches, random_market, to_batch
from tests.signals.reference import reference_frame


def stream(engine: Engine, df: pl.DataFrame, seed: int) -> pl.DataFrame:
    parts = [engine.on_bars(b).to_polars() for b in batches(df, seed)]
    return pl.concat(parts).sort(["time", "symbol"])


def assert_frames_close(got: pl.DataFrame, want: pl.DataFrame, tol: float = 1e-9) -> None:
    assert got.select("symbol", "time").equals(want.select("symbol", "time"))
    for col in COLUMNS:
        g = got[col].cast(pl.Float64).fill_null(np.nan).to_numpy()
        w = want[col].cast(pl.Float64).fill_null(np.nan).to_numpy()
        nan_g, nan_w = np.isnan(g), np.isnan(w)
        assert np.array_equal(nan_g, nan_w), (
            f"{col}: NaN pattern differs at {np.flatnonzero(nan_g != nan_w)[:5]}"
        )
        if (~nan_g).any():
            scale = np.maximum(1.0, np.abs(w[~nan_w]))
            worst = float(np.max(np.abs(g[~nan_g] - w[~nan_w]) / scale))
            assert worst <= tol, f"{col}: differs by {worst}"


def _rates(seed: int) -> RatesSeries:
    rng = np.random.default_rng(seed)
    days = np.arange(9_990, 10_400, dtype=np.int64)
    values = 2.0 + np.cumsum(rng.normal(0, 0.03, len(days)))
    values[rng.random(len(days)) < 0.05] = np.nan  # holidays are blank
    return RatesSeries(days * DAY, values)


def test_engine_equals_reference_on_a_long_market() -> None:
    df = random_market(seed=7, n_bars=600, symbols=("IWM", "SPY", "QQQ", "TNA"))
    cfg = EngineConfig()
    rates = _rates(1)
    got = stream(Engine(cfg, rates), df, seed=3)
    want = reference_frame(df, cfg, rates)
    assert_frames_close(got, want)
    # The score is defined once warm, and every signal contributes somewhere.
    iwm = got.filter(pl.col("symbol") == "IWM")
    assert iwm["score"].drop_nulls().len() > 400
    for s in ("rsi", "macd", "fib", "volume", "atr", "rs", "breadth", "rates"):
        assert iwm[f"sub_{s}"].drop_nulls().len() > 300, s


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_bars=st.integers(1, 160),
    skip=st.floats(0.0, 0.3),
    extra=st.lists(st.sampled_from(["TNA", "BRK.B", "X"]), max_size=2, unique=True),
    with_rates=st.booleans(),
)
def test_streaming_equals_batch(
    seed: int, n_bars: int, skip: float, extra: list[str], with_rates: bool
) -> None:
    symbols = ("IWM", "SPY", "QQQ", *extra)
    df = random_market(seed, n_bars, symbols, skip_prob=skip)
    assume(df.height > 0)  # one bar time, every symbol skipped: no market to stream
    cfg = EngineConfig(symbol_links={"X": Links(benchmark="IWM", comparator=None)})
    rates = _rates(seed) if with_rates else None
    got = stream(Engine(cfg, rates), df, seed + 1)
    assert_frames_close(got, reference_frame(df, cfg, rates))


def _engine_state(e: Engine) -> list[np.ndarray]:
    arrays: list[np.ndarray] = [e._last_time.copy(), e._last_close.copy(), e._last_ret.copy()]
    for ind in e._states.values():
        arrays += list(ind.state().values())
    arrays += [e.rings.frame(r).to_numpy() for r in range(len(e.symbols))]
    return arrays


def test_peek_is_pure_and_predicts_the_close() -> None:
    df = random_market(seed=11, n_bars=200)
    times = df["time"].unique().sort()
    e = Engine(EngineConfig(), _rates(2))
    e.on_bars(to_batch(df.filter(pl.col("time") < times[150])))
    for t in times[150:170]:
        bar = to_batch(df.filter(pl.col("time") == t))
        before = _engine_state(e)
        peeked = e.peek(bar)
        peeked_again = e.peek(bar)
        after = _engine_state(e)
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(before, after, strict=True))
        closed = e.on_bars(bar)
        for col in COLUMNS:
            assert np.array_equal(peeked.columns[col], closed.columns[col], equal_nan=True), col
            assert np.array_equal(peeked.columns[col], peeked_again.columns[col], equal_nan=True)


def test_duplicates_and_out_of_order_are_rejected_and_counted() -> None:
    df = random_market(seed=5, n_bars=30)
    e = Engine()
    e.on_bars(to_batch(df.filter(pl.col("time") <= df["time"][-1] - 5 * DAY)))
    stale = to_batch(df.filter(pl.col("time") == df["time"][0]))
    ev = e.on_bars(stale)
    assert len(ev) == 0
    assert {r.reason for r in ev.rejected} == {"out_of_order"}
    last = to_batch(df.filter(pl.col("time") == df["time"][-1]))
    doubled = to_batch(pl.concat([df.filter(pl.col("time") == df["time"][-1])] * 2))
    ev = e.on_bars(doubled)
    assert len(ev) == len(last)
    assert [r.reason for r in ev.rejected] == ["duplicate"] * len(last)
    assert e.rejected_total == {"out_of_order": len(stale), "duplicate": len(last)}


def test_breakdown_of_an_evaluation() -> None:
    df = random_market(seed=9, n_bars=120, skip_prob=0.0)
    ev = Engine(EngineConfig(), _rates(3)).on_bars(to_batch(df))
    i = len(ev) - 1
    b = ev.breakdown(i)
    assert b.score == pytest.approx(float(ev.columns["score"][i]))
    parts = {p.name: p for p in b.parts}
    assert parts["rsi"].raw == pytest.approx(float(ev.columns["rsi14"][i]))
    assert sum(p.weight for p in b.parts) == pytest.approx(1.0)


def test_symbols_grow_and_links_resolve() -> None:
    e = Engine(EngineConfig(symbol_links={"SPY": Links(benchmark=None, comparator="QQQ")}))
    rows = [e.row(s) for s in ("IWM", "SPY", "QQQ")]
    assert rows == [0, 1, 2]
    for i in range(40):
        e.row(f"S{i}")
    assert len(e.symbols) == 43
    assert e.rings.n_rows >= 43
    assert e.last_time("IWM") is None


def test_a_benchmark_bar_must_not_come_after_its_dependents() -> None:
    """The documented contract: cross signals see the other symbol's bar only if it came first."""
    df = random_market(seed=4, n_bars=40, skip_prob=0.0)
    head, last = (
        df.filter(pl.col("time") < df["time"].max()),
        df.filter(pl.col("time") == df["time"].max()),
    )
    iwm, spy = last.filter(pl.col("symbol") == "IWM"), last.filter(pl.col("symbol") == "SPY")

    in_order = Engine()
    in_order.on_bars(to_batch(head))
    in_order.on_bars(to_batch(spy))
    assert not np.isnan(in_order.on_bars(to_batch(iwm)).columns["rs_roc20"][0])

    late = Engine()
    late.on_bars(to_batch(head))
    assert np.isnan(late.on_bars(to_batch(iwm)).columns["rs_roc20"][0])
    late.on_bars(to_batch(spy))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), skip=st.floats(0.0, 0.2))
def test_rates_from_a_proxy_etf_equal_the_reference(seed: int, skip: float) -> None:
    df = random_market(seed, 90, ("IWM", "SPY", "QQQ", "SHY"), skip_prob=skip)
    cfg = EngineConfig(rates_proxy="SHY")
    got = stream(Engine(cfg), df, seed)
    want = reference_frame(df, cfg)
    assert_frames_close(got, want)
    assert got["sub_rates"].drop_nulls().len() > 0


def test_newest_time_is_the_latest_bar_of_any_symbol() -> None:
    eng = Engine(EngineConfig())
    assert eng.newest_time() is None
    eng.on_bars(BarBatch.from_bars([Bar("IWM", 86_400, 1.0, 1.0, 1.0, 1.0, 1.0)]))
    eng.on_bars(BarBatch.from_bars([Bar("SPY", 3 * 86_400, 1.0, 1.0, 1.0, 1.0, 1.0)]))
    eng.on_bars(BarBatch.from_bars([Bar("IWM", 2 * 86_400, 1.0, 1.0, 1.0, 1.0, 1.0)]))
    assert (
        eng.newest_time()
        == 3 * 86_400
        == max(t for s in eng.symbols if (t := eng.last_time(s)) is not None)
    )
