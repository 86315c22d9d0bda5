"""The whole 1-minute path on the XNYS calendar: aggregation, levels, rules, stable ids."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from daemon.bars import frame_to_batch
from daemon.rules_file import load_rules
from signals.alerts import Alert
from signals.engine import EngineConfig
from signals.pipeline import Pipeline
from signals.rules.spec import RuleSpec, parse_rules
from tests.daemon.minute_market import minute_market

# Relative volume over 3 sessions keeps these tests to a handful of sessions.
CONFIG = EngineConfig(rvol_sessions=3)


def replay(df: pl.DataFrame, pipe: Pipeline, chunk_minutes: int = 1) -> list[Alert]:
    """Minute by minute; with `chunk_minutes` > 1, several minutes per call (a backfill burst)."""
    minutes = df.partition_by("time", maintain_order=True)
    alerts: list[Alert] = []
    for i in range(0, len(minutes), chunk_minutes):
        alerts += pipe.on_minute_bars(
            frame_to_batch(pl.concat(minutes[i : i + chunk_minutes]))
        ).alerts
    return alerts


def test_breakout_fires_once_with_levels_from_the_daily_timeframe() -> None:
    df, table = minute_market()
    pipe = Pipeline(CONFIG, load_rules(), sessions=table)
    alerts = replay(df, pipe)
    breakouts = [a for a in alerts if a.rule == "volume_breakout"]
    assert [a.symbol for a in breakouts] == [
        "IWM"
    ]  # cooldown: one alert for the run through levels
    (a,) = breakouts
    assert a.values["level_name"] in ("prior-day high", "20-day high") or str(
        a.values["level_name"]
    ).startswith("Fib")
    assert isinstance(a.values["rvol"], float) and a.values["rvol"] >= 2.0
    assert a.severity in ("notable", "strong")
    last_day = table.label[5]
    assert a.bar_time >= table.open[5] + 200 * 60 and a.bar_time < table.close[5]
    daily = pipe.engine("1d")
    assert daily.last_time("IWM") == last_day  # the 16:00 minute closed the daily bar
    # The alert explains itself with the daily score's breakdown.
    assert set(a.breakdown) == {"rsi", "macd", "fib", "volume", "atr", "rs", "breadth", "rates"}


def test_alert_ids_are_stable_across_replays_and_batching() -> None:
    df, table = minute_market()
    first = replay(df, Pipeline(CONFIG, load_rules(), sessions=table))
    second = replay(df, Pipeline(CONFIG, load_rules(), sessions=table), chunk_minutes=7)
    assert first and [a.id for a in first] == [a.id for a in second]
    assert len({a.id for a in first}) == len(first)


def test_minute_bars_become_daily_bars_and_rvol_warms_after_the_lookback() -> None:
    df, table = minute_market(n_sessions=5)
    pipe = Pipeline(CONFIG, load_rules(), sessions=table)
    rvol = []
    minutes = df.partition_by("time", maintain_order=True)
    times = [int(g["time"][0]) for g in minutes]
    for g in minutes:
        step = pipe.on_minute_bars(frame_to_batch(g))
        ev = step.closed["1m"]
        rvol.append(float(ev.columns["rvol"][ev.symbol.index("IWM")]))
    first_warm = int(np.flatnonzero(~np.isnan(rvol))[0])
    assert times[first_warm] == table.open[3]  # the 4th session's first minute
    ring = pipe.engine("1d").rings
    iwm = pipe.engine("1d").row("IWM")
    assert ring.count(iwm) == 5
    daily = ring.frame(iwm)
    mins = df.filter(pl.col("symbol") == "IWM")
    assert daily["volume"].sum() == mins["volume"].sum()


def test_extended_hours_bars_reach_only_rules_that_opt_in() -> None:
    df, table = minute_market(n_sessions=1)
    pre = (
        df.filter(pl.col("time") < int(table.open[0]) + 30 * 60).with_columns(
            pl.col("time") - 60 * 60
        )  # 08:30-08:59 ET: pre-market
    )
    rules = parse_rules(
        {
            "rule": [
                {"name": "any_bar", "operator": "greater_than", "timeframe": "1m", "value": "close", "threshold": 0.0},
                {"name": "any_bar_ext", "operator": "greater_than", "timeframe": "1m", "value": "close",
                 "threshold": 0.0, "sessions": "extended"},
            ]
        }
    )  # fmt: skip
    pipe = Pipeline(CONFIG, rules, sessions=table)
    alerts = replay(pl.concat([pre, df.head(9)]), pipe)
    by_rule: dict[str, int] = {}
    for a in alerts:
        by_rule[a.rule] = by_rule.get(a.rule, 0) + 1
    # 30 pre-market minutes x 3 symbols only for the opted-in rule; 3 regular minutes for both.
    assert by_rule == {"any_bar_ext": 90 + 9, "any_bar": 9}


def _px_rules(*rules: tuple[str, str, float]) -> tuple[RuleSpec, ...]:
    return parse_rules(
        {
            "rule": [
                {"name": n, "operator": op, "timeframe": "1m", "value": "close", "threshold": t}
                for n, op, t in rules
            ]
        }
    )


def test_replacing_rules_keeps_the_state_of_kept_rules_and_starts_the_rest_fresh() -> None:
    df, table = minute_market(n_sessions=3)
    iwm = df.filter(pl.col("symbol") == "IWM")["close"]
    mid, high = float(iwm.median()), float(iwm.quantile(0.7))  # type: ignore[arg-type]
    times = df["time"].unique().sort()
    split = int(times[len(times) // 2])
    first, second = df.filter(pl.col("time") < split), df.filter(pl.col("time") >= split)
    keep, gone, fresh = (
        ("keep", "crossing_up", mid),
        ("gone", "crossing_down", mid),
        ("fresh", "crossing_up", high),
    )
    control = Pipeline(CONFIG, _px_rules(keep, fresh), sessions=table)
    want = replay(df, control)

    pipe = Pipeline(CONFIG, _px_rules(keep, gone), sessions=table)
    before = replay(first, pipe)
    changes = pipe.replace_rules(_px_rules(keep, fresh))
    after = replay(second, pipe)
    assert (changes.added, changes.removed, changes.changed, changes.total) == (
        ("fresh",),
        ("gone",),
        (),
        2,
    )
    assert any(a.rule == "gone" for a in before) and not any(a.rule == "gone" for a in after)
    # The kept rule never noticed: its alerts are the uninterrupted run's.
    assert [a.id for a in before + after if a.rule == "keep"] == [
        a.id for a in want if a.rule == "keep"
    ]
    # The new rule starts with no previous value: it fires from its second bar on, as the
    # uninterrupted run does in that half (bar for bar, bar one aside).
    got_fresh = [a.id for a in after if a.rule == "fresh"]
    start = int(second["time"].min())  # type: ignore[arg-type]
    want_fresh = [a.id for a in want if a.rule == "fresh" and a.bar_time > start]
    assert got_fresh and got_fresh == want_fresh


def test_a_changed_rule_starts_fresh_and_impossible_rules_change_nothing() -> None:
    df, table = minute_market(n_sessions=2)
    pipe = Pipeline(CONFIG, _px_rules(("r", "crossing_up", 100.0)), sessions=table)
    replay(df.head(300), pipe)
    changes = pipe.replace_rules(_px_rules(("r", "crossing_up", 101.0)))
    assert changes.changed == ("r",) and changes.added == changes.removed == ()
    state = pipe.book.state()["rules"]["r"]
    assert all(np.isnan(state["prev"]))  # fresh: no previous value carried over
    book = pipe.book
    five = parse_rules(
        {
            "rule": [
                {
                    "name": "r5",
                    "operator": "greater_than",
                    "timeframe": "5m",
                    "value": "close",
                    "threshold": 1.0,
                }
            ]
        }
    )
    with pytest.raises(ValueError, match=r"timeframe.*5m.*restart"):
        pipe.replace_rules(five)
    ext = parse_rules(
        {
            "rule": [
                {
                    "name": "x",
                    "operator": "greater_than",
                    "timeframe": "1m",
                    "value": "close",
                    "threshold": 1.0,
                    "sessions": "extended",
                }
            ]
        }
    )
    with pytest.raises(ValueError, match=r"extended-hours.*restart"):
        pipe.replace_rules(ext)
    assert pipe.book is book
