"""The /chart picture (matplotlib), its labels in words, and reply formatting."""

from __future__ import annotations

import io
import itertools
from collections import Counter

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.image import imread

from daemon.backend import DaemonBackend
from daemon.bars import frame_to_batch
from daemon.plot import Picture, level_words, mark_time, merge_levels, render_candles
from daemon.rules_file import load_rules
from daemon.sample import sample_daily
from daemon.telegram.chart import render_chart
from daemon.telegram.commands import CHART_BARS, parse_duration
from daemon.telegram.replies import format_levels, number
from signals.alerts import Alert
from signals.engine import EngineConfig
from signals.pipeline import Pipeline
from tests.daemon.telegram.kit import FakeBackend

UP, DOWN = (0x1A, 0x7F, 0x37), (0xCF, 0x22, 0x2E)


def pixels(png: bytes) -> npt.NDArray[np.uint8]:
    """The PNG as an (h, w, 3) array of 0-255 values."""
    rgba = imread(io.BytesIO(png), format="png")
    return np.asarray(np.round(rgba[..., :3] * 255), dtype=np.uint8)


def panel(picture: Picture, name: str) -> npt.NDArray[np.uint8]:
    x0, y0, x1, y1 = picture.panels[name]
    return pixels(picture.png)[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]


def has_colour(image: npt.NDArray[np.uint8], rgb: tuple[int, int, int], at_least: int) -> bool:
    return int(np.all(np.abs(image.astype(int) - rgb) <= 3, axis=-1).sum()) >= at_least


def _alert(rule: str, symbol: str, bar_time: int) -> Alert:
    return Alert(id=f"{rule}-{bar_time}", rule=rule, symbol=symbol, timeframe="1d",
                 bar_time=bar_time, time=bar_time + 86_400, title=rule)  # fmt: skip


def test_chart_has_candles_volume_and_rsi_panels_and_the_right_size() -> None:
    backend = FakeBackend()
    bars = backend.bars("IWM", 120)
    picture = render_candles("IWM · 1d", bars, backend.levels("IWM"))
    image = pixels(picture.png)
    assert image.shape == (1200, 960, 3) == (picture.height, picture.width, 3)
    price, volume, rsi = (panel(picture, p) for p in ("price", "volume", "rsi"))
    assert has_colour(price, UP, 200) and has_colour(price, DOWN, 200)
    assert has_colour(volume, UP, 200) and has_colour(volume, DOWN, 200)
    # The RSI line is dark; the 35-42 zone is its light blue.
    assert has_colour(rsi, (0x24, 0x29, 0x2F), 300) and has_colour(rsi, (0xDD, 0xF4, 0xFF), 2000)
    # Panels stack top to bottom and none is blank.
    tops = [picture.panels[p][1] for p in ("price", "volume", "rsi")]
    assert tops == sorted(tops)
    for crop in (price, volume, rsi):
        assert len(np.unique(crop.reshape(-1, 3), axis=0)) > 20


def test_levels_are_labelled_in_words_and_alerts_marked() -> None:
    backend = FakeBackend()
    bars = backend.bars("IWM", 120)
    t = bars["time"].to_list()
    alerts = [_alert("volume_breakout", "IWM", t[10]), _alert("volume_breakout", "IWM", t[50]),
              _alert("rsi_entry_zone", "IWM", t[80]), _alert("rsi_entry_zone", "SPY", t[81]),
              _alert("score_cross_down", "IWM", t[0] - 86_400)]  # fmt: skip
    chart = render_chart("IWM", bars, backend.levels("IWM"), alerts)
    assert chart is not None
    marks = [(a.bar_time, a.rule) for a in alerts if a.symbol == "IWM"]
    picture = render_candles("IWM", bars, backend.levels("IWM"), marks)
    # Every alert inside the bars is marked; one before the first bar cannot be.
    assert picture.marked == {"volume_breakout": 2, "rsi_entry_zone": 1}
    texts = [label.text for label in picture.labels]
    assert "200.90 20-day high" in texts and "199.10 prior-day high" in texts
    assert "195.30 Fib 61.8%" in texts and "190.20 Fib 38.2%" in texts
    assert not any("_" in text for text in texts)
    assert "IWM · 1d · close " in chart.caption and "120 bars" in chart.caption
    assert "off the chart: 20-day low 150.00" in chart.caption
    assert "not yet known: Fib 78.6%" in chart.caption


def test_a_chart_without_volume_or_bars() -> None:
    bars = pl.DataFrame({"time": [0, 86_400], "open": [1.0, 2.0], "high": [2.0, 3.0],
                         "low": [0.5, 1.5], "close": [1.5, 2.5]})  # fmt: skip
    chart = render_chart("X", bars.with_columns(rsi14=pl.Series([None, 61.4])), {})
    assert chart is not None and "RSI 61" in chart.caption
    assert render_chart("X", bars.head(0), {}) is None


def test_level_words() -> None:
    names = ["fib_1272", "fib_236", "fib_500", "donchian_high20", "donchian_low20",
             "prior_day_high", "prior_day_low", "swing_high", "swing_low", "vwap_band"]  # fmt: skip
    assert [level_words(n) for n in names] == [
        "Fib 127.2%", "Fib 23.6%", "Fib 50%", "20-day high", "20-day low",
        "prior-day high", "prior-day low", "swing high", "swing low", "vwap band",
    ]  # fmt: skip


def test_levels_at_one_price_share_a_label() -> None:
    labels = merge_levels({"fib_500": 95.69, "swing_low": 95.69}, 0.0, 300.0, 1.0, 1.0)
    assert [label.text for label in labels] == ["95.69 Fib 50% · swing low"]
    # Too long for the right margin on one line: a line each, still one label.
    labels = merge_levels({"donchian_high20": 201.35, "swing_high": 201.35}, 0.0, 300.0, 1.0, 1.0)
    assert [label.text for label in labels] == ["201.35 20-day high\n201.35 swing high"]


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m"]),
        st.floats(90.0, 110.0),
        max_size=13,
    ),
    st.floats(0.2, 3.0),
)
def test_merged_labels_name_each_level_once_and_never_overlap(
    levels: dict[str, float], line: float
) -> None:
    labels = merge_levels(levels, 80.0, 120.0, line, line)
    named = Counter(name for label in labels for name, _ in label.levels)
    assert named == Counter(list(levels))
    for label in labels:
        values = [v for _, v in label.levels]
        assert max(values) - min(values) < line
    for low, high in itertools.pairwise(labels):
        need = (len(low.lines) + len(high.lines)) * line / 2
        assert high.y - low.y >= need - 1e-9


def test_durations() -> None:
    assert [parse_duration(t) for t in ("30m", "2h", "1d", "1h30m", " 2H ")] == [
        1800,
        7200,
        86400,
        5400,
        7200,
    ]
    for bad in ("", "0m", "31d", "5x", "h", "1h 30m", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_numbers_and_levels() -> None:
    assert [number(v) for v in (None, float("nan"), 12345.6, 201.349, 0.0123)] == [
        "\N{EM DASH}",
        "\N{EM DASH}",
        "12,346",
        "201.35",
        "0.0123",
    ]
    assert format_levels("IWM", {}, None) == "No levels for IWM yet."


def test_an_alert_of_another_timeframe_is_marked_where_it_was_decided() -> None:
    day = 1_773_273_600  # 2026-03-12 00:00 UTC, a daily bar's time
    daily = Alert(id="d", rule="rsi_entry_zone", symbol="IWM", timeframe="1d", bar_time=day,
                  time=day + 14 * 3600 + 60, title="d")  # fmt: skip
    minute = Alert(id="m", rule="volume_breakout", symbol="IWM", timeframe="1m",
                   bar_time=day + 15 * 3600, time=day + 15 * 3600 + 60, title="m")  # fmt: skip
    # On 1-minute bars the daily alert sits at the minute that decided it (14:00 UTC) ...
    assert (
        mark_time(daily, "1m") == day + 14 * 3600 + 59
        and mark_time(minute, "1m") == minute.bar_time
    )
    # ... and on daily bars the minute alert inside its day.
    assert day <= mark_time(minute, "1d") < day + 86_400 and mark_time(daily, "1d") == day


def test_dollar_signs_are_text_not_math() -> None:
    bars = FakeBackend().bars("IWM", 30)
    # Unescaped, matplotlib would parse "$\frac$" as math and fail at draw time.
    picture = render_candles(r"IWM $\frac$ 5", bars, {}, [(int(bars["time"][3]), r"x$\frac$")])
    assert picture.png.startswith(b"\x89PNG") and picture.marked == {r"x$\frac$": 1}


def test_chart_from_the_daemons_own_backend() -> None:
    """The real backend's bars (its daily rings) and levels draw, named in words."""
    pipeline = Pipeline(EngineConfig(), load_rules())
    frame = (
        sample_daily()
        .with_columns(time=pl.col("date").cast(pl.Datetime("ms")).dt.epoch("s"))
        .drop("date")
        .sort("time", "symbol")
    )
    step = pipeline.on_daily_bars(frame_to_batch(frame))
    backend = DaemonBackend(pipeline, ["IWM", "SPY", "QQQ"], None)
    bars = backend.bars("IWM", CHART_BARS)
    assert bars.height == CHART_BARS and "time" in bars.columns
    alerts = [a for a in step.alerts if a.symbol == "IWM" and a.bar_time >= bars["time"][0]]
    assert alerts  # the sample fires on IWM within its last 120 days
    chart = render_chart("IWM", bars, backend.levels("IWM"), step.alerts)
    assert chart is not None and len(pixels(chart.png)) == 1200
    marks = [(a.bar_time, a.rule) for a in alerts]
    picture = render_candles("IWM", bars, backend.levels("IWM"), marks)
    assert sum(picture.marked.values()) == len(alerts)
    named = {name for label in picture.labels for name, _ in label.levels}
    assert named <= set(backend.levels("IWM")) and "prior_day_high" in named
    assert any("prior-day high" in label.text for label in picture.labels)
