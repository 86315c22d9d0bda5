"""Rule operators at their edges: thresholds, channels, re-arm, cooldown, frequency, expiry."""

from __future__ import annotations

import numpy as np
import pytest

from signals.alerts import alert_id
from signals.rules.book import RuleBook, RuleOptions
from signals.rules.spec import RuleError, SeverityTier, parse_duration, parse_rules
from tests.signals.rulekit import DAY, evaluation, fired, run_closed, spec


def test_crossing_up_needs_prev_at_or_below_and_cur_strictly_above() -> None:
    book = RuleBook([spec(operator="crossing_up", value="score", threshold=70.0)])
    # 70 -> 70 is no cross; 70 -> 70.1 is; 69 -> 70 (equal) is not.
    assert fired(run_closed(book, [60, 70, 70, 70.1, 60, 70, 71], "score")) == [3, 6]


def test_crossing_down_mirror() -> None:
    book = RuleBook([spec(operator="crossing_down", value="score", threshold=30.0)])
    assert fired(run_closed(book, [40, 30, 29.9, 40, 30.0, 10], "score")) == [2, 5]


def test_greater_and_less_than_fire_every_closed_bar_without_rearm() -> None:
    book = RuleBook([spec(operator="greater_than", value="score", threshold=50.0)])
    assert fired(run_closed(book, [40, 50, 51, 52, 49, 60], "score")) == [2, 3, 5]
    book = RuleBook([spec(operator="less_than", value="score", threshold=50.0)])
    assert fired(run_closed(book, [40, 50, 51, 49], "score")) == [0, 3]


def test_entering_channel_from_above_and_gaps_across() -> None:
    rule = spec(
        operator="entering_channel", value="rsi14", lower=35.0, upper=42.0, entering_from="above"
    )
    book = RuleBook([rule])
    # 50 -> 42 (upper edge counts as inside) fires; a gap straight through the
    # channel (50 -> 30) does not enter it; from below (30 -> 36) is not "from above".
    assert fired(run_closed(book, [50, 42, 50, 30, 36, 45, 35], "rsi14")) == [1, 6]


def test_entering_channel_any_side_and_exiting() -> None:
    book = RuleBook([spec(operator="entering_channel", value="rsi14", lower=35.0, upper=42.0)])
    assert fired(run_closed(book, [50, 40, 30, 35, 20], "rsi14")) == [1, 3]
    book = RuleBook([spec(operator="exiting_channel", value="rsi14", lower=35.0, upper=42.0)])
    # Inside -> far outside on either side (a gap) exits.
    assert fired(run_closed(book, [40, 80, 38, 10, 10, 36, 42, 42.01], "rsi14")) == [1, 3, 7]


def test_rsi_entry_zone_semantics_from_the_issue() -> None:
    """Armed at start; fires on a closed bar in [35, 42] after a bar above 42; disarmed until RSI >= 50."""
    rule = spec(
        operator="entering_channel", value="rsi14", lower=35.0, upper=42.0,
        entering_from="above", rearm_above=50.0,
    )  # fmt: skip
    book = RuleBook([rule])
    series = [55, 41, 45, 40, 49.9, 38, 50, 44, 36, 60, 43, 35]
    # 41 fires; 45 -> 40 would, but the rule is disarmed (no RSI >= 50 yet); 49.9 -> 38 likewise;
    # 50 re-arms; 44 -> 36 fires; 60 re-arms; 43 -> 35 fires.
    assert fired(run_closed(book, series, "rsi14")) == [1, 8, 11]


def test_score_cross_rearm_hysteresis() -> None:
    book = RuleBook([spec(operator="crossing_up", value="score", threshold=70.0, rearm_below=65.0)])
    series = [60, 72, 66, 71, 69, 75, 65, 72]
    # 72 fires; dips to 66 and 69 do not re-arm (above 65), so 71 and 75 do not fire;
    # 65 re-arms (at or below); 72 fires again.
    assert fired(run_closed(book, series, "score")) == [1, 7]


def test_band_flip_needs_the_other_side_first() -> None:
    rule = spec(
        operator="greater_than", value="breadth20", threshold=0.02,
        start_armed=False, rearm_below=-0.02,
    )  # fmt: skip
    book = RuleBook([rule])
    series = [0.03, 0.05, -0.01, -0.021, 0.0, 0.019, 0.021, 0.05, -0.03, 0.025]
    assert fired(run_closed(book, series, "breadth20")) == [6, 9]


def test_nan_never_fires_and_does_not_count_as_a_cross() -> None:
    book = RuleBook([spec(operator="crossing_up", value="score", threshold=70.0)])
    assert fired(run_closed(book, [60, np.nan, 75, np.nan, np.nan], "score")) == []


def test_cooldown_spans_sessions() -> None:
    book = RuleBook([spec(operator="greater_than", value="score", threshold=50.0, cooldown="36h")])
    # A bar a day: after a fire, the next day is inside 36 h, the day after is not.
    assert fired(run_closed(book, [60, 60, 60, 60, 60], "score")) == [0, 2, 4]
    assert parse_duration("30m") == 1800 and parse_duration("1d") == DAY


def test_once_per_bar_with_several_peeks_and_the_close() -> None:
    book = RuleBook(
        [spec(operator="crossing_up", value="score", threshold=70.0, frequency="once_per_bar")]
    )
    book.evaluate("1d", evaluation(["IWM"], 0, score=60.0), closed=True, now=DAY)
    t = DAY
    peeks = [65.0, 71.0, 69.0, 72.0, 74.0]
    got = [
        book.evaluate("1d", evaluation(["IWM"], t, score=v), closed=False, now=t + i)
        for i, v in enumerate(peeks)
    ]
    assert [bool(a) for a in got] == [False, True, False, False, False]
    # The bar closes above 70: it already fired for this bar.
    assert book.evaluate("1d", evaluation(["IWM"], t, score=73.0), closed=True, now=2 * DAY) == []
    # The next bar crosses again from the closed 73? No: prev is 73, so no cross.
    assert (
        book.evaluate("1d", evaluation(["IWM"], 2 * DAY, score=80.0), closed=False, now=2 * DAY + 5)
        == []
    )


def test_once_per_bar_close_ignores_forming_bars() -> None:
    book = RuleBook([spec(operator="crossing_up", value="score", threshold=70.0)])
    book.evaluate("1d", evaluation(["IWM"], 0, score=60.0), closed=True, now=DAY)
    assert (
        book.evaluate("1d", evaluation(["IWM"], DAY, score=80.0), closed=False, now=DAY + 1) == []
    )
    assert (
        len(book.evaluate("1d", evaluation(["IWM"], DAY, score=80.0), closed=True, now=2 * DAY))
        == 1
    )


def test_on_bar_close_overrides_frequency() -> None:
    book = RuleBook(
        [
            spec(
                operator="greater_than",
                value="score",
                threshold=70.0,
                frequency="once_per_bar",
                on="bar_close",
            )
        ]
    )
    assert (
        book.evaluate("1d", evaluation(["IWM"], DAY, score=80.0), closed=False, now=DAY + 1) == []
    )


def test_only_once_fires_once_per_symbol() -> None:
    book = RuleBook(
        [spec(operator="greater_than", value="score", threshold=50.0, frequency="only_once")]
    )
    assert fired(run_closed(book, [60, 60, 40, 60], "score")) == [0]


def test_expiry() -> None:
    book = RuleBook(
        [
            spec(
                operator="greater_than",
                value="score",
                threshold=50.0,
                expires="1970-01-03T00:00:00+00:00",
            )
        ]
    )
    # now = bar time + 1 day: bar 0 decides at day 1, bar 1 at day 2 (expired).
    assert fired(run_closed(book, [60, 60, 60], "score")) == [0]


def test_symbols_and_sessions_filters() -> None:
    book = RuleBook(
        [spec(operator="greater_than", value="score", threshold=50.0, symbols=("IWM",))]
    )
    got = book.evaluate("1d", evaluation(["IWM", "SPY"], 0, score=60.0), closed=True, now=1)
    assert [a.symbol for a in got] == ["IWM"]
    book = RuleBook([spec(operator="greater_than", value="score", threshold=50.0, timeframe="1m")])
    ev = evaluation(["IWM", "SPY"], 0, score=60.0)
    got = book.evaluate(
        "1m", ev, closed=True, now=60, options=RuleOptions(regular=np.array([False, True]))
    )
    assert [a.symbol for a in got] == ["SPY"]
    ext = RuleBook(
        [
            spec(
                operator="greater_than",
                value="score",
                threshold=50.0,
                timeframe="1m",
                sessions="extended",
            )
        ]
    )
    assert (
        len(
            ext.evaluate(
                "1m", ev, closed=True, now=60, options=RuleOptions(regular=np.array([False, True]))
            )
        )
        == 2
    )


def test_severity_tiers_and_alert_content() -> None:
    rule = spec(
        name="vb", operator="breakout", timeframe="1m", min_rvol=2.0, severity="notable",
        severity_tiers=(SeverityTier(level="strong", value="volume_signal", at_least=3.0),),
        title="{symbol} volume breakout: {rvol:.1f}× relative volume",  # noqa: RUF001
    )  # fmt: skip
    book = RuleBook([rule])
    levels = {
        "prior_day_high": np.array([200.0, 200.0]),
        "donchian_high20": np.array([200.9, 250.0]),
    }
    ev = evaluation(
        ["IWM", "TNA"],
        600,
        close=[201.35, 201.0],
        prev_close=[199.5, 199.0],
        volume_signal=[3.1, 2.5],
    )
    got = book.evaluate("1m", ev, closed=True, now=660, options=RuleOptions(levels=levels))
    assert [a.symbol for a in got] == ["IWM", "TNA"]
    iwm, tna = got
    assert iwm.severity == "strong" and tna.severity == "notable"
    assert iwm.values["level_name"] == "20-day high" and iwm.values["level"] == 200.9
    assert tna.values["level_name"] == "prior-day high"
    assert iwm.title == "IWM volume breakout: 3.1× relative volume"  # noqa: RUF001
    assert iwm.id == alert_id("vb", "IWM", "1m", 600) and iwm.bar_time == 600 and iwm.time == 660


def test_breakout_needs_volume_and_a_cross() -> None:
    book = RuleBook([spec(operator="breakout", timeframe="1m", min_rvol=2.0)])
    levels = {"prior_day_high": np.full(3, 100.0)}
    ev = evaluation(
        ["A", "B", "C"],
        0,
        close=[101.0, 101.0, 99.0],
        prev_close=[99.0, 100.5, 98.0],
        volume_signal=[1.9, 2.5, 5.0],
    )
    # A: crossed but RVOL 1.9; B: already above before; C: below the level.
    assert book.evaluate("1m", ev, closed=True, now=60, options=RuleOptions(levels=levels)) == []
    ev = evaluation(["A"], 60, close=[101.0], prev_close=[100.0], volume_signal=[2.0])
    assert (
        len(
            book.evaluate(
                "1m",
                ev,
                closed=True,
                now=120,
                options=RuleOptions(levels={"prior_day_high": np.array([100.0])}),
            )
        )
        == 1
    )


def test_breakout_uses_nearest_fib_above_previous_close_and_names_highest_crossed() -> None:
    book = RuleBook([spec(operator="breakout", timeframe="1m", min_rvol=2.0)])
    levels = {
        "prior_day_high": np.array([100.5]),
        "fib_382": np.array([101.0]),
        "fib_236": np.array([103.0]),
        "fib_500": np.array([99.0]),
    }
    ev = evaluation(["IWM"], 0, close=[102.0], prev_close=[100.0], volume_signal=[2.5])
    (alert,) = book.evaluate("1m", ev, closed=True, now=60, options=RuleOptions(levels=levels))
    # Fib 38.2% (101) is the nearest above 100; it is higher than the prior-day high crossed too.
    assert alert.values["level"] == 101.0 and alert.values["level_name"] == "Fib 38.2%"


def test_breakdown_mirror() -> None:
    book = RuleBook([spec(operator="breakout", timeframe="1m", direction="down", min_rvol=2.0)])
    levels = {"prior_day_low": np.array([100.0]), "donchian_low20": np.array([99.5])}
    ev = evaluation(["IWM"], 0, close=[99.0], prev_close=[101.0], volume_signal=[2.5])
    (alert,) = book.evaluate("1m", ev, closed=True, now=60, options=RuleOptions(levels=levels))
    assert alert.values["level_name"] == "20-day low"


def test_state_round_trip_continues_exactly() -> None:
    rule = spec(operator="crossing_up", value="score", threshold=70.0, rearm_below=65.0)
    series = [60, 72, 66, 64, 71, 50, 80]
    whole = fired(run_closed(RuleBook([rule]), series, "score"))
    first = RuleBook([rule])
    a = fired(run_closed(first, series[:3], "score"))
    second = RuleBook([rule])
    second.restore(first.state())
    b = fired(run_closed(second, series[3:], "score", start=3 * DAY))
    assert a + [i + 3 for i in b] == whole == [1, 4, 6]


def test_rule_file_errors_name_the_key() -> None:
    with pytest.raises(RuleError, match=r"rule 'x' \(rule\[0\]\): threshold: expected a number"):
        parse_rules(
            {"rule": [{"name": "x", "operator": "crossing_up", "threshold": "high"}]}, "my.toml"
        )
    with pytest.raises(RuleError, match=r"my\.toml.*threshold: required for operator crossing_up"):
        parse_rules({"rule": [{"name": "x", "operator": "crossing_up"}]}, "my.toml")
    with pytest.raises(RuleError, match="colour: unknown key"):
        parse_rules(
            {"rule": [{"name": "x", "operator": "crossing_up", "threshold": 1, "colour": 1}]}
        )
    with pytest.raises(RuleError, match="defined twice"):
        parse_rules({"rule": [{"name": "x", "operator": "less_than", "threshold": 1}] * 2})
    with pytest.raises(RuleError, match="timeframe"):
        parse_rules(
            {"rule": [{"name": "x", "operator": "less_than", "threshold": 1, "timeframe": "2d"}]}
        )
    with pytest.raises(RuleError, match="cooldown"):
        parse_rules(
            {"rule": [{"name": "x", "operator": "less_than", "threshold": 1, "cooldown": "soon"}]}
        )
    with pytest.raises(RuleError, match="plain name"):
        parse_rules(
            {
                "rule": [
                    {"name": "x", "operator": "less_than", "threshold": 1, "title": "{x.__class__}"}
                ]
            }
        )
    with pytest.raises(RuleError, match="start_armed"):
        parse_rules(
            {"rule": [{"name": "x", "operator": "less_than", "threshold": 1, "start_armed": False}]}
        )
