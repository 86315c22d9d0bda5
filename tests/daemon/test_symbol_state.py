"""The retained per-symbol state keeps the last known daily values and the last alert
after the session's last bar, overnight and into the next session."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from daemon.app import Ingest, warm_up
from daemon.feeds.base import FeedBatch
from daemon.outbox import Outbox
from daemon.rules_file import load_rules
from daemon.sample import DemoMarket, demo_market
from daemon.symbol_state import LAST_ALERT_CHARS, State, SymbolStates
from daemon.warmup import Warmup
from signals.alerts import Alert, alert_id
from signals.bar import Bar
from signals.engine import EngineConfig
from signals.pipeline import Pipeline, Step

DAILY = ("score", "label", "rsi14", "atr_pct")  # and rs_roc20, but for the benchmark (SPY)


def _batches(frame: pl.DataFrame) -> list[FeedBatch]:
    """One live batch per minute, as the feed hands them over."""
    out = []
    for part in frame.sort("time", "symbol").partition_by("time", maintain_order=True):
        bars = tuple(
            Bar(
                r["symbol"], int(r["time"]), r["open"], r["high"], r["low"], r["close"], r["volume"]
            )
            for r in part.iter_rows(named=True)
        )
        out.append(FeedBatch(bars=bars, kind="live", received_at=0.0))
    return out


def _shifted(frame: pl.DataFrame, to: int) -> pl.DataFrame:
    """`frame`'s first minute, moved to start at `to`."""
    first = frame.filter(pl.col("time") == frame["time"].min())
    return first.with_columns(pl.lit(to, dtype=pl.Int64).alias("time"))


class _Run:
    def __init__(self, tmp: Path, market: DemoMarket) -> None:
        self.pipeline = Pipeline(EngineConfig(), load_rules(None), sessions=market.sessions)
        warm_up(self.pipeline, Warmup(market.daily, market.history))
        self.outbox = Outbox.open(tmp / "outbox.sqlite", ["console"])
        self.published: list[dict[str, State]] = []
        self.ingest = Ingest(
            self.pipeline, self.outbox, wall_clock=None, on_states=self.published.append
        )

    def feed(self, frame: pl.DataFrame) -> None:
        for batch in _batches(frame):
            self.ingest(batch)

    def retained(self, symbol: str) -> State:
        """What a broker would hold: the last state published for `symbol`."""
        return next(s[symbol] for s in reversed(self.published) if symbol in s)


@pytest.fixture(scope="module")
def market() -> DemoMarket:
    return demo_market()


def test_daily_values_and_last_alert_outlive_the_session(
    tmp_path: Path, market: DemoMarket
) -> None:
    run = _Run(tmp_path, market)
    today = market.today
    last_minute = int(today["time"].max())  # type: ignore[arg-type]
    run.feed(today.filter(pl.col("time") < last_minute))
    forming = run.retained("IWM")
    assert forming["daily_closed"] is False
    assert forming["daily_time"] == market.day.isoformat()
    assert all(isinstance(forming[k], float) for k in ("score", "rsi14", "atr_pct", "rs_roc20"))

    # The session's last minute closes the daily bar: no bar is forming any more, and
    # the state carries the closed bar's values (before: score and RSI went missing).
    run.feed(today.filter(pl.col("time") == last_minute))
    assert run.published[-1].keys() == {"IWM", "SPY", "QQQ"}
    daily = run.pipeline.engine("1d")
    for sym in ("IWM", "SPY", "QQQ"):
        closed = run.retained(sym)
        assert closed["daily_closed"] is True
        assert closed["daily_time"] == market.day.isoformat()
        assert closed["time"] == datetime.fromtimestamp(last_minute + 60, UTC).isoformat()
        frame = daily.rings.frame(daily.row(sym))
        assert int(frame["time"][-1]) == int(market.sessions.label[_session(market, last_minute)])
        assert all(closed[k] is not None for k in DAILY), closed
        assert (closed["rs_roc20"] is None) == (sym == "SPY")

    # After the close: extended-hours minutes publish nothing, so the retained state stays.
    before = len(run.published)
    run.feed(_shifted(today, last_minute + 600))
    assert not any(run.published[before:])

    # The next session's first minute: a new forming bar, a later daily_time.
    i = _session(market, last_minute) + 1
    run.feed(_shifted(today, int(market.sessions.open[i])))
    monday = run.retained("IWM")
    assert monday["daily_closed"] is False
    assert (
        monday["daily_time"]
        == datetime.fromtimestamp(int(market.sessions.label[i]), UTC).date().isoformat()
    )
    assert monday["score"] is not None and monday["rsi14"] is not None

    # Every alert the session fired is some symbol's last alert, the newest one.
    alerts = run.outbox.recent(100)
    assert alerts
    for sym in {a.symbol for a in alerts}:
        newest = max((a for a in alerts if a.symbol == sym), key=lambda a: a.time)
        state = run.retained(sym)
        assert state["last_alert"] == newest.title
        assert state["last_alert_rule"] == newest.rule
        assert state["last_alert_severity"] == newest.severity
        assert state["last_alert_time"] == datetime.fromtimestamp(newest.time, UTC).isoformat()
    run.outbox.close()


def _session(market: DemoMarket, t: int) -> int:
    return int(np.searchsorted(market.sessions.open, t, side="right")) - 1


def _alert(symbol: str, rule: str, t: int, title: str = "x") -> Alert:
    return Alert(
        id=alert_id(rule, symbol, "1m", t), rule=rule, symbol=symbol, timeframe="1m",
        bar_time=t - 60, time=t, severity="info", title=title,
    )  # fmt: skip


def test_a_restart_seeds_the_last_alerts_from_the_outbox(
    tmp_path: Path, market: DemoMarket
) -> None:
    t = 1_750_000_000
    with Outbox.open(tmp_path / "outbox.sqlite", ["console"]) as outbox:
        # The newer IWM alert recorded first: the last alert is the newest, not the last recorded.
        outbox.record([_alert("IWM", "rsi_entry_zone", t + 60, "IWM RSI dip")], None, 0.0)
        outbox.record([_alert("IWM", "rs_flip_up", t)], None, 1.0)
        outbox.record([_alert("SPY", "rs_flip_down", t, "S" * 400)], None, 2.0)
    with Outbox.open(tmp_path / "outbox.sqlite", ["console"]) as outbox:
        pipeline = Pipeline(EngineConfig(), load_rules(None), sessions=market.sessions)
        published: list[dict[str, State]] = []
        ingest = Ingest(pipeline, outbox, wall_clock=None, on_states=published.append)
        ingest(_batches(_shifted(market.today, int(market.today["time"].to_numpy().min())))[0])
    iwm, spy, qqq = (published[-1][sym] for sym in ("IWM", "SPY", "QQQ"))
    assert iwm["last_alert"] == "IWM RSI dip"
    assert iwm["last_alert_rule"] == "rsi_entry_zone"
    assert spy["last_alert"] == "S" * LAST_ALERT_CHARS  # what HA keeps of a state
    assert "last_alert" not in qqq


def test_no_minute_no_state() -> None:
    assert SymbolStates().compose(Step(), {}) == {}
