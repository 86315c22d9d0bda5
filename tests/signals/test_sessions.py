"""Sessions and aggregation: holidays, early closes, DST, missing minutes, buckets."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signals.aggregate import Aggregator, Timeframe
from signals.bar import BarBatch
from signals.sessions import SessionTable


def utc(s: str) -> int:
    return int(datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp())


# Hand-made XNYS sessions around Christmas 2019 (early close on the 24th, holiday
# on the 25th) and the March 2020 DST change (open 14:30 UTC in EST, 13:30 in EDT).
TABLE = SessionTable(
    label=[utc(f"{d}T00:00:00") for d in ("2019-12-23", "2019-12-24", "2019-12-26", "2020-03-06", "2020-03-09")],
    open_=[utc(t) for t in ("2019-12-23T14:30", "2019-12-24T14:30", "2019-12-26T14:30", "2020-03-06T14:30", "2020-03-09T13:30")],
    close=[utc(t) for t in ("2019-12-23T21:00", "2019-12-24T18:00", "2019-12-26T21:00", "2020-03-06T21:00", "2020-03-09T20:00")],
)  # fmt: skip


def minutes(
    symbol: str, start: str, n: int, price: float = 100.0, volume: float = 1000.0
) -> BarBatch:
    t0 = utc(start)
    t = np.arange(n, dtype=np.int64) * 60 + t0
    c = price + np.arange(n, dtype=np.float64) * 0.01
    return BarBatch([symbol] * n, t, c, c + 0.05, c - 0.05, c, np.full(n, volume))


def feed(agg: Aggregator, batch: BarBatch) -> list[BarBatch]:
    """One minute at a time, as live; the bars that closed."""
    out = []
    for i in range(len(batch)):
        done = agg.update(batch.take(np.array([i])))
        if len(done):
            out.append(done)
    return out


def test_locate_regular_hours_and_dst() -> None:
    loc = TABLE.locate([utc("2020-03-06T14:30"), utc("2020-03-09T13:30"), utc("2020-03-09T13:29"),
                        utc("2020-03-09T19:59"), utc("2020-03-09T20:00"), utc("2019-12-25T15:00")])  # fmt: skip
    assert loc.minute.tolist() == [0, 0, -1, 389, -1, -1]
    assert loc.regular.tolist() == [True, True, False, True, False, False]
    assert loc.label[1] == utc("2020-03-09T00:00:00")
    assert TABLE.minutes(1) == 210


def test_early_close_closes_the_daily_bar_with_its_last_minute() -> None:
    agg = Aggregator(Timeframe.parse("1d"), TABLE)
    closed = feed(agg, minutes("IWM", "2019-12-24T14:30", 210))
    assert len(closed) == 1
    bar = closed[0]
    assert bar.time[0] == utc("2019-12-24T00:00:00")
    assert bar.open[0] == 100.0 and bar.close[0] == pytest.approx(100.0 + 209 * 0.01)
    assert bar.volume[0] == 210 * 1000.0
    assert bar.high[0] == pytest.approx(100.0 + 209 * 0.01 + 0.05) and bar.low[0] == pytest.approx(
        99.95
    )


def test_after_hours_minutes_are_ignored_and_holiday_has_no_session() -> None:
    agg = Aggregator(Timeframe.parse("1d"), TABLE)
    assert feed(agg, minutes("IWM", "2019-12-24T18:00", 30)) == []  # after the early close
    assert feed(agg, minutes("IWM", "2019-12-25T14:30", 30)) == []  # Christmas
    assert len(agg.forming()) == 0


def test_missing_last_minutes_close_on_the_next_session_or_flush() -> None:
    agg = Aggregator(Timeframe.parse("1d"), TABLE)
    assert feed(agg, minutes("IWM", "2019-12-23T14:30", 380)) == []  # ten minutes missing
    assert agg.forming().time.tolist() == [utc("2019-12-23T00:00:00")]
    closed = feed(agg, minutes("IWM", "2019-12-24T14:30", 1))
    assert [b.time[0] for b in closed] == [utc("2019-12-23T00:00:00")]
    assert agg.flush(utc("2019-12-24T17:59")).symbol == []
    assert agg.flush(utc("2019-12-24T18:00")).time.tolist() == [utc("2019-12-24T00:00:00")]


def test_five_minute_buckets_across_dst() -> None:
    agg = Aggregator(Timeframe.parse("5m"), TABLE)
    closed = feed(agg, minutes("SPY", "2020-03-09T13:30", 12))
    assert [int(b.time[0]) for b in closed] == [utc("2020-03-09T13:30"), utc("2020-03-09T13:35")]
    assert closed[0].volume[0] == 5000.0
    with pytest.raises(ValueError, match="unknown timeframe"):
        Timeframe.parse("2h")


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), drop=st.floats(0.0, 0.5))
def test_daily_bars_equal_a_group_by_of_the_minutes(seed: int, drop: float) -> None:
    rng = np.random.default_rng(seed)
    frames = []
    for sym in ("IWM", "SPY"):
        for i in range(len(TABLE)):
            n = TABLE.minutes(i)
            t = TABLE.open[i] + 60 * np.arange(n)
            c = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
            keep = rng.random(n) >= drop
            frames.append(pl.DataFrame({"symbol": sym, "time": t, "open": c, "high": c * 1.001,
                                        "low": c * 0.999, "close": c, "volume": rng.integers(1, 1000, n).astype(float),
                                        "day": TABLE.label[i]}).filter(pl.Series(keep)))  # fmt: skip
    df = pl.concat(frames).sort("time", "symbol")
    agg = Aggregator(Timeframe.parse("1d"), TABLE)
    got = []
    for _, g in df.group_by("time", maintain_order=True):
        b = BarBatch(
            g["symbol"].to_list(),
            g["time"].to_numpy(),
            *(g[c].to_numpy() for c in ("open", "high", "low", "close", "volume")),
        )
        got.append(agg.update(b))
    got.append(agg.flush(int(TABLE.close[-1])))
    rows = [
        (s, int(t), o, h, lo, c, v)
        for b in got
        for s, t, o, h, lo, c, v in zip(
            b.symbol, b.time, b.open, b.high, b.low, b.close, b.volume, strict=True
        )
    ]
    want = df.group_by("symbol", "day", maintain_order=True).agg(
        pl.col("open").first(),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("close").last(),
        pl.col("volume").sum(),
    )
    assert sorted(rows) == sorted(
        (r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in want.iter_rows()
    )
