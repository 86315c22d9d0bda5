"""`MinuteBuilder`: trades in, closed minute bars out; checked against a polars group_by."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.feeds.minute_builder import MinuteBuilder
from daemon.feeds.reconnect import Rejection
from signals.bar import Bar
from tests.daemon.feeds.feedkit import T0
from tests.daemon.feeds.finnhub_server import Trade, candles

MS = 1000 * T0


def _run(builder: MinuteBuilder, trades: list[Trade]) -> tuple[list[Bar], list[Trade]]:
    """Feed `trades`; return every closed bar (the rest flushed at the end) and the late trades."""
    bars: list[Bar] = []
    late: list[Trade] = []
    for trade in trades:
        result = builder.add(*trade)
        if isinstance(result, Rejection):
            assert result.reason == "late_trade"
            late.append(trade)
        elif result is not None:
            bars.append(result)
    bars.extend(builder.flush(math.inf))
    return bars, late


def _oracle(trades: list[Trade]) -> list[Bar]:
    return [
        Bar(r["symbol"], r["time"], r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in candles(trades).iter_rows(named=True)
    ] if trades else []  # fmt: skip


def _by_key(bars: list[Bar]) -> list[Bar]:
    return sorted(bars, key=lambda b: (b.time, b.symbol))


_trades = st.lists(
    st.tuples(
        st.sampled_from(["IWM", "SPY", "QQQ"]),
        st.integers(min_value=MS, max_value=MS + 10 * 60_000),
        st.sampled_from([0.01, 1.0, 99.5, 100.0, 100.25, 101.0, 1e6]),
        st.integers(min_value=0, max_value=3).map(float),  # exact sums: order cannot matter
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_trades)
def test_streaming_equals_a_group_by_when_minutes_arrive_in_order(trades: list[Trade]) -> None:
    # Minutes in order, trades inside a minute in any order: nothing is late.
    ordered = sorted(trades, key=lambda tr: tr[1] // 60_000)
    bars, late = _run(MinuteBuilder(), ordered)
    assert late == []
    assert _by_key(bars) == _oracle(ordered)


@settings(max_examples=300, deadline=None)
@given(_trades)
def test_any_order_yields_the_group_by_of_the_trades_it_took(trades: list[Trade]) -> None:
    builder = MinuteBuilder()
    bars, late = _run(builder, trades)
    accepted: list[Trade] = []
    pending = list(late)
    # The accepted ones, in arrival order. Matched from the end: of two identical trades
    # the later arrival is the late one (the earlier one came while its minute was open).
    for tr in reversed(trades):
        if tr in pending:
            pending.remove(tr)
        else:
            accepted.append(tr)
    accepted.reverse()
    assert _by_key(bars) == _oracle(accepted)
    assert len(accepted) + len(late) == len(trades)
    for symbol in ("IWM", "SPY", "QQQ"):  # per symbol, bars only move forward
        times = [b.time for b in bars if b.symbol == symbol]
        assert times == sorted(set(times))


def test_a_later_minute_closes_the_bar_and_values_are_ohlcv() -> None:
    builder = MinuteBuilder()
    assert builder.add("IWM", MS + 1_000, 200.0, 10) is None
    assert builder.add("IWM", MS + 30_000, 202.0, 5) is None
    assert builder.add("IWM", MS + 20_000, 199.0, 5) is None  # out of order inside the minute
    assert builder.add("IWM", MS + 500, 200.5, 1) is None  # earlier than the open: new open
    assert builder.add("SPY", MS + 61_000, 470.0, 1) is None  # another symbol closes nothing
    assert builder.forming == {"IWM": T0, "SPY": T0 + 60}
    closed = builder.add("IWM", MS + 60_000, 203.0, 3)
    assert closed == Bar("IWM", T0, 200.5, 202.0, 199.0, 202.0, 21.0)
    assert builder.forming == {"IWM": T0 + 60, "SPY": T0 + 60}


def test_zero_volume_trades_move_prices_but_not_volume() -> None:
    builder = MinuteBuilder()
    builder.add("IWM", MS + 1_000, 200.0, 10)
    builder.add("IWM", MS + 2_000, 205.0, 0)  # a price update
    builder.add("IWM", MS + 3_000, 195.0, 0)
    builder.add("IWM", MS + 4_000, 201.0, 0)
    builder.add("SPY", MS + 5_000, 470.0, 0)  # a minute of price updates only
    builder.add("SPY", MS + 6_000, 471.0, 0)
    assert builder.flush(T0 + 62) == [
        Bar("IWM", T0, 200.0, 205.0, 195.0, 201.0, 10.0),
        Bar("SPY", T0, 470.0, 471.0, 470.0, 471.0, 0.0),
    ]


def test_late_trades_are_refused_and_never_reopen_a_bar() -> None:
    builder = MinuteBuilder()
    builder.add("IWM", MS + 1_000, 200.0, 10)
    closed = builder.add("IWM", MS + 120_000, 201.0, 1)  # skips a minute
    assert isinstance(closed, Bar) and closed.time == T0
    for stamp in (MS + 59_999, MS + 60_000, MS + 119_999):  # the closed and the skipped minute
        late = builder.add("IWM", stamp, 300.0, 99)
        assert isinstance(late, Rejection) and late.reason == "late_trade"
    assert builder.flush(math.inf) == [Bar("IWM", T0 + 120, 201.0, 201.0, 201.0, 201.0, 1.0)]
    late = builder.add("IWM", MS + 120_500, 1.0, 1)  # its minute was flushed by the timer
    assert isinstance(late, Rejection)
    assert builder.forming == {}
    assert builder.add("SPY", MS, 470.0, 1) is None  # other symbols are unaffected


def test_the_timer_closes_a_quiet_minute_after_the_delay() -> None:
    builder = MinuteBuilder(close_delay_s=2.5)
    builder.add("IWM", MS + 10_000, 200.0, 1)
    builder.add("SPY", MS + 70_000, 470.0, 1)
    assert builder.flush(T0 + 60) == []
    assert builder.flush(T0 + 62.49) == []
    assert builder.flush(T0 + 62.5) == [Bar("IWM", T0, 200.0, 200.0, 200.0, 200.0, 1.0)]
    assert builder.flush(T0 + 62.5) == []
    assert builder.flush(T0 + 125) == [Bar("SPY", T0 + 60, 470.0, 470.0, 470.0, 470.0, 1.0)]
    assert MinuteBuilder(0.0).close_delay_s == 0.0


@pytest.mark.parametrize("delay", [-1.0, math.inf, math.nan])
def test_the_delay_is_validated(delay: float) -> None:
    with pytest.raises(ValueError, match="close_delay_s"):
        MinuteBuilder(delay)


@pytest.mark.parametrize(
    ("price", "volume"), [(0.0, 1.0), (-1.0, 1.0), (math.nan, 1.0), (math.inf, 1.0), (1.0, -1.0)]
)
def test_invalid_trades_raise(price: float, volume: float) -> None:
    with pytest.raises(ValueError, match=r"price|volume"):
        MinuteBuilder().add("IWM", MS, price, volume)
