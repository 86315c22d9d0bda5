"""Rendering alerts for people: the DESIGN example exactly, missing values left out, emoji and
times, and hostile text that must come out as valid Telegram HTML within 4096 units."""

from __future__ import annotations

import html
import re
from datetime import datetime
from html.parser import HTMLParser
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.sinks.render import (
    ALLOWED_TAGS,
    TELEGRAM_LIMIT,
    render_html,
    render_text,
)
from signals.alerts import Alert, alert_id

ET = ZoneInfo("America/New_York")
BAR = int(datetime(2025, 3, 14, 14, 31, tzinfo=ET).timestamp())  # the 14:31 bar closes 14:32

EXAMPLE_TEXT = """\
🚀 IWM volume breakout: 3.1\N{MULTIPLICATION SIGN} relative volume
Price 201.35 broke the 20-day high 200.90
Score 74/100 bullish · RSI 58 · MACD ▲ · ATR 1.9%
IWM/SPY +1.2% (20d) · IWM\N{MINUS SIGN}QQQ +2.4% (20d) · 2Y \N{MINUS SIGN}18bp (20d)
14:32 ET · rule volume_breakout"""

EXAMPLE_HTML = """\
🚀 <b>IWM volume breakout: 3.1\N{MULTIPLICATION SIGN} relative volume</b>
Price 201.35 broke the 20-day high 200.90
Score 74/100 bullish · RSI 58 · MACD ▲ · ATR 1.9%
IWM/SPY +1.2% (20d) · IWM\N{MINUS SIGN}QQQ +2.4% (20d) · 2Y \N{MINUS SIGN}18bp (20d)
14:32 ET · rule <code>volume_breakout</code>"""

EXAMPLE_VALUES: dict[str, float | str | None] = {
    "value": 201.35,
    "close": 201.35,
    "prev_close": 200.80,
    "rsi14": 58.2,
    "macd_hist": 0.12,
    "atr_pct": 1.91,
    "volume_signal": 3.1,
    "rs_roc20": 0.012,
    "breadth20": 0.024,
    "rates_delta20": -0.18,  # percentage points: -18 bp
    "rvol": 3.1,
    "level": 200.90,
    "level_name": "20-day high",
}


def make_alert(**changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "id": alert_id("volume_breakout", "IWM", "1m", BAR),
        "rule": "volume_breakout",
        "symbol": "IWM",
        "timeframe": "1m",
        "bar_time": BAR,
        "time": BAR + 60,
        "severity": "strong",
        "title": "IWM volume breakout: 3.1\N{MULTIPLICATION SIGN} relative volume",
        "values": dict(EXAMPLE_VALUES),
        # DESIGN's example says "bullish" next to 74: the label is the alert's, shown as is.
        "score": 74.0,
        "label": "bullish",
    }
    return Alert(**(fields | changes))


def units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class TelegramHtml(HTMLParser):
    """Fails on anything but our own, unnested, attribute-free tags; collects the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in ALLOWED_TAGS and not attrs and not self.open, tag
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open.pop() == tag, tag

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raise AssertionError(f"self-closing <{tag}/>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        raise AssertionError("comment")

    def handle_decl(self, decl: str) -> None:
        raise AssertionError("declaration")

    def handle_pi(self, data: str) -> None:
        raise AssertionError("processing instruction")

    def unknown_decl(self, data: str) -> None:
        raise AssertionError("unknown declaration")


def check_telegram_html(out: str, limit: int = TELEGRAM_LIMIT) -> str:
    """Assert `out` is valid for Telegram's HTML mode; return its visible text."""
    assert units(out) <= limit
    bare = re.sub(r"</?(?:b|i|code)>", "", out)
    assert "<" not in bare and ">" not in bare  # every < and > of the data is escaped
    assert re.fullmatch(r"(?:[^&]|&(?:amp|lt|gt);)*", bare, re.DOTALL)  # only our entities
    parser = TelegramHtml()
    parser.feed(out)
    parser.close()
    assert not parser.open
    visible = "".join(parser.text)
    assert visible == html.unescape(bare)
    return visible


# -- golden ----------------------------------------------------------------------------------


def test_the_design_example_exactly() -> None:
    alert = make_alert()
    assert render_text(alert) == EXAMPLE_TEXT
    assert render_html(alert) == EXAMPLE_HTML
    assert check_telegram_html(EXAMPLE_HTML) == EXAMPLE_TEXT


def test_benchmark_names_are_the_callers() -> None:
    out = render_text(make_alert(), benchmark="IWB", comparator="")
    assert "IWM/IWB +1.2% (20d)" in out
    assert "IWM breadth +2.4% (20d)" in out


# -- missing values ----------------------------------------------------------------------------


def test_missing_values_are_left_out_never_zero() -> None:
    alert = make_alert(values={}, score=None, label="warming up", title="IWM something")
    out = render_text(alert)
    assert out == "🚀 IWM something\n14:32 ET · rule volume_breakout"


# Each value and the part of the message it makes.
PARTS = {
    "rsi14": "RSI 58",
    "macd_hist": "MACD ▲",
    "atr_pct": "ATR 1.9%",
    "rs_roc20": "IWM/SPY +1.2% (20d)",
    "breadth20": "IWM\N{MINUS SIGN}QQQ +2.4% (20d)",
    "rates_delta20": "2Y \N{MINUS SIGN}18bp (20d)",
    "level": "high 200.90",
}


@pytest.mark.parametrize("key", list(PARTS))
@pytest.mark.parametrize("missing", [None, float("nan"), float("inf"), "n/a", True])
def test_each_missing_value_drops_only_its_own_part(key: str, missing: object) -> None:
    values = dict(EXAMPLE_VALUES) | {key: missing}
    out = render_text(make_alert(values=values))
    assert PARTS[key] not in out
    assert all(part in out for k, part in PARTS.items() if k != key)
    for word in ("None", "nan", "inf", "n/a", "True", " 0 ", "0.0"):
        assert word not in out
    assert " ·  · " not in out and "· ·" not in out and "\n\n" not in out
    assert not re.search(r"(^|\s)·\s*$|^\s*·", out, re.M)  # no dangling separators


def test_score_missing_drops_the_score_but_keeps_the_indicators() -> None:
    out = render_text(make_alert(score=None, label="warming up"))
    assert "Score 74/100 bullish · RSI 58 · MACD ▲ · ATR 1.9%" not in out
    assert "\nRSI 58 · MACD ▲ · ATR 1.9%\n" in out
    assert "warming up" not in out


def test_a_close_without_a_level_and_a_daily_change() -> None:
    values: dict[str, float | str | None] = {"close": 201.35, "prev_close": 200.0}
    daily = make_alert(rule="rsi_entry_zone", timeframe="1d", values=values)
    assert "\nPrice 201.35 (+0.7% on the day)\n" in render_text(daily)
    intraday = make_alert(rule="custom", values=values)
    assert "\nPrice 201.35\n" in render_text(intraday)
    no_close = make_alert(values={"level_name": "prior-day high", "level": 199.5})
    assert "\nBroke the prior-day high 199.50\n" in render_text(no_close)


def test_macd_down_and_signs() -> None:
    values = dict(EXAMPLE_VALUES) | {
        "macd_hist": -0.3,
        "rs_roc20": -0.0004,  # rounds to 0.0: no sign
        "rates_delta20": 0.05,
    }
    out = render_text(make_alert(values=values))
    assert "MACD ▼" in out and "IWM/SPY 0.0% (20d)" in out and "2Y +5bp (20d)" in out


# -- emoji, delay and time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "value", "emoji"),
    [
        ("volume_breakout", 1.0, "🚀"),
        ("volume_breakdown", 1.0, "🔻"),
        ("rsi_entry_zone", 40.0, "📉"),
        ("score_cross_up", 71.0, "📈"),
        ("score_cross_down", 29.0, "📉"),
        ("score_alert", 80.0, "📈"),
        ("score_alert", 20.0, "📉"),
        ("rs_flip_up", 0.01, "🔄"),
        ("breadth_flip_down", -0.03, "🔄"),
        ("my_custom_rule", 1.0, "🔔"),
    ],
)
def test_emoji_by_rule_kind(rule: str, value: float, emoji: str) -> None:
    alert = make_alert(rule=rule, values={"value": value})
    assert render_text(alert).startswith(f"{emoji} ")


def test_delayed_alerts_are_marked_and_dated() -> None:
    alert = make_alert(delayed=True)
    text, markup = render_text(alert), render_html(alert)
    assert text.splitlines()[0].endswith(" · ⏱ delayed")
    assert "<i>⏱ delayed</i>" in markup
    assert text.splitlines()[-1] == "2025-03-14 14:32 ET · rule volume_breakout"


def test_times_are_bar_close_in_new_york_or_the_date_for_daily_bars() -> None:
    five = make_alert(timeframe="5m")
    assert render_text(five).splitlines()[-1].startswith("14:36 ET · ")
    summer = int(datetime(2025, 7, 1, 9, 30, tzinfo=ET).timestamp())  # EDT, not EST
    assert render_text(make_alert(bar_time=summer)).splitlines()[-1].startswith("09:31 ET · ")
    session_label = int(datetime(2025, 3, 14).replace(tzinfo=ZoneInfo("UTC")).timestamp())
    daily = make_alert(timeframe="1d", bar_time=session_label, rule="rsi_entry_zone")
    assert render_text(daily).splitlines()[-1] == "2025-03-14 · rule rsi_entry_zone"
    absurd = make_alert(bar_time=10**18)
    assert render_text(absurd).splitlines()[-1] == "rule volume_breakout"


# -- hostile text and length -------------------------------------------------------------------

_META = "<>&;\"'*_`[]()~|#+-=.!\\/{}@ \n\r\t\x00\u2028\ufeff"
_piece = st.one_of(
    st.lists(
        st.sampled_from([*_META, "&amp;", "<b>", "</b>", "&#60;", "🚀", "👨‍👩‍👧", "abc"]),
        max_size=40,
    ).map("".join),
    st.text(max_size=30),
    st.sampled_from(["\ud800", "<script>alert(1)</script>", "*bold* _it_ `code`", "&lt;"]),
)
# Long strings cheaply: a short hostile piece repeated, up to 5,000 characters and beyond.
hostile = st.one_of(
    _piece,
    st.builds(lambda s, n: (s * n)[:5000], _piece.filter(bool), st.integers(1, 5000)),
)
number = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers())
value = st.one_of(number, hostile)


@st.composite
def hostile_alerts(draw: st.DrawFn) -> Alert:
    values = {key: draw(value) for key in (*EXAMPLE_VALUES, "extra") if draw(st.booleans())}
    return Alert(
        id="x",
        rule=draw(st.one_of(st.sampled_from(["volume_breakout", "score_cross_up"]), hostile)),
        symbol=draw(st.one_of(st.just("IWM"), hostile)),
        timeframe=draw(st.sampled_from(["1m", "5m", "1d", "<tf>"])),
        bar_time=draw(st.integers(-(2**62), 2**62) | st.just(BAR)),
        time=BAR,
        title=draw(hostile),
        values=values,
        score=draw(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))),
        label=draw(hostile),
        delayed=draw(st.booleans()),
    )


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_alerts(), st.sampled_from(["SPY", "<&>", ""]))
def test_hostile_alerts_render_as_valid_telegram_html(alert: Alert, benchmark: str) -> None:
    markup = render_html(alert, benchmark=benchmark)
    visible = check_telegram_html(markup)
    text = render_text(alert, benchmark=benchmark)
    assert units(text) <= TELEGRAM_LIMIT
    for out in (visible, text):
        assert all(line.strip() for line in out.split("\n"))  # no empty lines
    if markup == render_html(alert, benchmark=benchmark, max_length=10**9):
        # Not cut: the HTML shows exactly the plain text.
        assert visible == text


@pytest.mark.parametrize("field", ["title", "symbol", "level_name", "label", "rule"])
def test_5000_characters_of_metacharacters_stay_within_the_limit(field: str) -> None:
    bomb = "&<>" * 1700
    alert = make_alert(values=EXAMPLE_VALUES | {"level_name": bomb} if field == "level_name" else EXAMPLE_VALUES,
                       **({} if field == "level_name" else {field: bomb}))  # fmt: skip
    markup = render_html(alert)
    check_telegram_html(markup)
    assert "…" in markup and "…" in render_text(alert)
    assert units(render_text(alert)) <= TELEGRAM_LIMIT


def test_truncation_is_never_inside_a_tag_or_an_entity() -> None:
    alert = make_alert(title="A&B <x> " * 80 + "🚀" * 40, label="b&d", delayed=True)
    full = render_html(alert, max_length=10**9)
    for limit in range(1, units(full) + 2):
        out = render_html(alert, max_length=limit)
        check_telegram_html(out, limit)
        if out != full:
            assert "…" in out
        text = render_text(alert, max_length=limit)
        assert units(text) <= limit
    assert render_html(alert, max_length=units(full)) == full
    with pytest.raises(ValueError):
        render_text(alert, max_length=0)


def test_telegram_counts_utf16_units() -> None:
    alert = make_alert(title="🚀" * 3000)  # 6,000 units, though 3,000 code points
    out = render_html(alert)
    assert units(out) <= TELEGRAM_LIMIT
    assert len(out) < TELEGRAM_LIMIT
