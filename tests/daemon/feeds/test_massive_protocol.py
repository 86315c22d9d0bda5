"""The sans-I/O Massive protocol and REST page decoding: handshake, aggregates, hostile input."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.feeds.base import FeedAuthFailed, FeedThrottled, FeedUnavailable
from daemon.feeds.massive import (
    Authenticated,
    BarsReceived,
    Connected,
    MassiveProtocol,
    ServerStatus,
    Subscribed,
    error_for_status,
    parse_aggs_page,
)
from daemon.feeds.reconnect import Rejection
from signals.bar import Bar
from tests.daemon.feeds.feedkit import SYMBOLS, T0

KEY = "mAsSiVe-KEY-0123456789abcdef"
NOW = T0 + 3600.0


def _frame(*items: object) -> str:
    return json.dumps(list(items))


def _status(state: str, message: str = "") -> dict[str, str]:
    return {"ev": "status", "status": state, "message": message}


def _streaming() -> MassiveProtocol:
    proto = MassiveProtocol(KEY, SYMBOLS)
    proto.receive_frame(_frame(_status("connected", "Connected Successfully")), NOW)
    proto.receive_frame(_frame(_status("auth_success", "authenticated")), NOW)
    proto.receive_frame(_frame(_status("success", "subscribed to: AM.IWM")), NOW)
    proto.events_received()
    proto.data_to_send()
    assert proto.state == "streaming"
    return proto


def _am(**fields: object) -> dict[str, object]:
    msg: dict[str, object] = {
        "ev": "AM",
        "sym": "IWM",
        "v": 12345,
        "av": 4_000_000,
        "op": 198.5,
        "vw": 200.2,
        "o": 200.0,
        "c": 200.5,
        "h": 201.0,
        "l": 199.0,
        "a": 199.9,
        "z": 40,
        "s": (T0 + 60) * 1000,
        "e": (T0 + 120) * 1000,
    }
    msg.update(fields)
    return msg


def _bars(proto: MassiveProtocol) -> list[Bar]:
    return [b for e in proto.events_received() if isinstance(e, BarsReceived) for b in e.bars]


def test_handshake_sends_auth_then_one_subscribe_for_every_symbol() -> None:
    proto = MassiveProtocol(KEY, ["IWM", "SPY"])
    assert proto.state == "connecting" and proto.data_to_send() == []
    proto.receive_frame(_frame(_status("connected", "Connected Successfully")), NOW)
    assert proto.events_received() == [Connected()]
    assert [json.loads(m) for m in proto.data_to_send()] == [{"action": "auth", "params": KEY}]
    proto.receive_frame(_frame(_status("auth_success", "authenticated")).encode(), NOW)
    assert proto.events_received() == [Authenticated()]
    assert [json.loads(m) for m in proto.data_to_send()] == [
        {"action": "subscribe", "params": "AM.IWM,AM.SPY"}
    ]
    proto.receive_frame(
        _frame(
            _status("success", "subscribed to: AM.IWM"), _status("success", "subscribed to: AM.SPY")
        ),
        NOW,
    )
    assert proto.events_received() == [
        Subscribed("subscribed to: AM.IWM"),
        Subscribed("subscribed to: AM.SPY"),
    ]
    state: str = proto.state
    assert state == "streaming"


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("success", "Connected Successfully"),  # Massive's AsyncAPI spec
        ("connected", "Connected Successfully"),  # the wire today, Polygon's clients
        ("anything_new", ""),
    ],
)
def test_any_status_that_is_not_a_failure_is_the_greeting(state: str, message: str) -> None:
    proto = MassiveProtocol(KEY, SYMBOLS)
    proto.receive_frame(_frame(_status(state, message)), NOW)
    assert proto.events_received() == [Connected()]
    assert [json.loads(m) for m in proto.data_to_send()] == [{"action": "auth", "params": KEY}]
    assert proto.state == "authenticating"
    proto.receive_frame(_frame(_status("auth_success", "authenticated")), NOW)
    assert proto.events_received() == [Authenticated()]
    proto.receive_frame(_frame(_status("success", "subscribed to: AM.IWM")), NOW)
    assert proto.events_received() == [Subscribed("subscribed to: AM.IWM")]
    now_state: str = proto.state
    assert now_state == "streaming"


@pytest.mark.parametrize("state", ["auth_failed", "max_connections", "error", "auth_timeout"])
def test_a_failure_status_is_never_taken_for_the_greeting(state: str) -> None:
    proto = MassiveProtocol(KEY, SYMBOLS)
    proto.receive_frame(_frame(_status(state, "no")), NOW)
    assert proto.events_received() == [ServerStatus(state, "no")]
    assert proto.data_to_send() == [] and proto.state == "failed"


def test_after_a_success_greeting_an_error_still_means_the_key_was_refused() -> None:
    proto = MassiveProtocol(KEY, SYMBOLS)
    proto.receive_frame(_frame(_status("success", "Connected Successfully")), NOW)
    proto.receive_frame(_frame(_status("error", "authentication failed")), NOW)
    assert proto.events_received() == [
        Connected(),
        ServerStatus("auth_failed", "authentication failed"),
    ]


def test_a_second_greeting_is_rejected() -> None:
    proto = MassiveProtocol(KEY, SYMBOLS)
    proto.receive_frame(_frame(_status("success", "Connected Successfully")), NOW)
    proto.receive_frame(_frame(_status("connected", "Connected Successfully")), NOW)
    assert [e.reason for e in proto.events_received() if isinstance(e, Rejection)] == [
        "unexpected_message"
    ]
    assert proto.state == "authenticating"


def test_older_servers_success_authenticated_is_accepted() -> None:
    proto = MassiveProtocol(KEY, SYMBOLS)
    proto.receive_frame(_frame(_status("connected")), NOW)
    proto.receive_frame(_frame(_status("success", "authenticated")), NOW)
    assert proto.events_received() == [Connected(), Authenticated()]
    assert proto.state == "subscribing"


@pytest.mark.parametrize(
    ("state", "message", "expected", "kind"),
    [
        ("auth_failed", "authentication failed", "auth_failed", FeedAuthFailed),
        ("error", "authentication failed", "auth_failed", FeedAuthFailed),  # older servers
        ("auth_timeout", "No authentication request received.", "auth_timeout", FeedUnavailable),
        (
            "max_connections",
            "Maximum number of websocket connections exceeded.",
            "max_connections",
            FeedThrottled,
        ),
        ("subscribe_failed", "nope", "subscribe_failed", FeedUnavailable),
    ],
)
def test_failure_statuses_end_the_session_with_the_right_error(
    state: str, message: str, expected: str, kind: type[Exception]
) -> None:
    proto = MassiveProtocol(KEY, SYMBOLS)
    proto.receive_frame(_frame(_status("connected")), NOW)
    proto.events_received()
    proto.receive_frame(_frame(_status(state, message)), NOW)
    assert proto.events_received() == [ServerStatus(expected, message)]
    assert proto.state == "failed"
    err = error_for_status("massive", expected, message)
    assert type(err) is kind and expected in str(err) and message in str(err)


def test_a_server_echoing_the_key_does_not_leak_it() -> None:
    proto = MassiveProtocol(KEY, SYMBOLS)
    proto.receive_frame(_frame(_status("auth_failed", f"bad key {KEY}")), NOW)
    proto.receive_frame(_frame({"ev": KEY}), NOW)
    proto.receive_frame(_frame(_am(sym=KEY[:9], o="x" + KEY)), NOW)
    text = repr(proto.events_received())
    assert KEY not in text and "***" in text


def test_aggregates_decode_to_bars_starting_at_s() -> None:
    proto = _streaming()
    proto.receive_frame(
        _frame(_am(), _am(sym="SPY", o=470.0, h=471.0, l=469.5, c=470.25, v=9.5)), NOW
    )
    assert _bars(proto) == [
        Bar("IWM", T0 + 60, 200.0, 201.0, 199.0, 200.5, 12345.0),
        Bar("SPY", T0 + 60, 470.0, 471.0, 469.5, 470.25, 9.5),
    ]


def test_bars_and_control_messages_keep_their_order() -> None:
    proto = _streaming()
    proto.receive_frame(
        _frame(_am(), _status("success", "subscribed to: AM.SPY"), _am(sym="SPY")), NOW
    )
    events = proto.events_received()
    assert [type(e).__name__ for e in events] == ["BarsReceived", "Subscribed", "BarsReceived"]


def test_bars_before_the_subscription_is_confirmed_are_rejected() -> None:
    proto = MassiveProtocol(KEY, SYMBOLS)
    proto.receive_frame(_frame(_status("connected")), NOW)
    proto.receive_frame(_frame(_status("auth_success")), NOW)
    proto.events_received()
    proto.receive_frame(_frame(_am()), NOW)
    assert [e.reason for e in proto.events_received() if isinstance(e, Rejection)] == [
        "unexpected_message"
    ]


HOSTILE: list[tuple[str, bytes | str]] = [
    ("bad_json", _frame(_am()).replace("200.0", "NaN")),
    ("bad_json", _frame(_am()).replace("201.0", "Infinity")),
    ("bad_json", b'[{"ev":"AM",'),
    ("bad_json", b"\xff\xfe\x00garbage"),
    ("non_finite", _frame(_am()).replace("201.0", "1e400")),
    ("non_positive_price", _frame(_am(o=-1.0, l=-2.0))),
    ("non_positive_price", _frame(_am(o=0.0, l=0.0))),
    ("high_below_low", _frame(_am(h=198.0))),
    ("open_close_outside_range", _frame(_am(o=250.0))),
    ("negative_volume", _frame(_am(v=-5))),
    ("bad_field", _frame(_am(o="200.0"))),
    ("bad_field", _frame(_am(v=True))),
    ("bad_field", _frame(_am(sym=12))),
    ("bad_field", _frame({"ev": "AM", "sym": "IWM"})),
    ("unknown_type", _frame({"ev": "T", "sym": "IWM", "p": 1.0})),
    ("unknown_type", _frame({"ev": "A", "sym": "IWM"})),
    ("bad_time", _frame(_am(s="2024-01-02T14:31:00Z"))),
    ("bad_time", _frame(_am(s=(T0 + 60) * 1000 + 0.5))),
    ("bad_time", _frame(_am(s=(T0 + 90) * 1000))),  # not a minute
    ("bad_time", _frame(_am(s=-60_000))),
    ("bad_time", _frame(_am(s=2**70))),
    ("future_time", _frame(_am(s=int(NOW + 3600) // 60 * 60_000))),
    ("bad_symbol", _frame(_am(sym="IW/M"))),
    ("bad_symbol", _frame(_am(sym="A+B"))),
    ("bad_symbol", _frame(_am(sym="#IWM"))),
    ("bad_symbol", _frame(_am(sym="<script>"))),
    ("bad_symbol", _frame(_am(sym="iwm"))),
    ("unsubscribed_symbol", _frame(_am(sym="TSLA"))),
    ("not_a_list", json.dumps(_am())),
    ("not_a_list", b"42"),
    ("bad_message", b"[[1,2,3]]"),
    ("bad_message", b'[{"sym":"IWM"}]'),
    ("bad_message", b'[{"ev":7}]'),
    ("bad_message", b'[{"ev":"status","status":5}]'),
    ("too_deep", b"[" * 100_000 + b"]" * 100_000),
    ("too_deep", b'[{"ev":"AM","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}]"),
    ("unexpected_message", _frame(_status("connected"))),
    ("unexpected_message", _frame(_status("auth_success"))),
    ("unexpected_message", _frame(_status("whatever"))),
]


@pytest.mark.parametrize(("reason", "frame"), HOSTILE)
def test_hostile_frames_are_rejected_with_a_reason_and_the_stream_goes_on(
    reason: str, frame: bytes | str
) -> None:
    proto = _streaming()
    proto.receive_frame(frame, NOW)
    events = proto.events_received()
    assert [e.reason for e in events if isinstance(e, Rejection)] == [reason]
    assert not any(isinstance(e, BarsReceived) for e in events)
    proto.receive_frame(_frame(_am()), NOW)
    assert len(_bars(proto)) == 1
    assert proto.state == "streaming"


def test_one_bad_aggregate_does_not_spoil_the_rest_of_its_frame() -> None:
    proto = _streaming()
    proto.receive_frame(_frame(_am(), _am(sym="SPY", h=1.0), _am(sym="QQQ")), NOW)
    events = proto.events_received()
    assert [type(e).__name__ for e in events] == ["Rejection", "BarsReceived"]
    assert [b.symbol for e in events if isinstance(e, BarsReceived) for b in e.bars] == [
        "IWM",
        "QQQ",
    ]


def test_rest_pages_decode_rows_and_reject_bad_ones() -> None:
    rows = [
        {"v": 100, "vw": 1.1, "o": 1.0, "c": 1.5, "h": 2.0, "l": 0.5, "t": T0 * 1000, "n": 3},
        {"v": 100, "o": 1.0, "c": 1.5, "h": 0.4, "l": 0.5, "t": (T0 + 60) * 1000},
        {"v": 100, "o": 1.0, "c": 1.5, "h": 2.0, "l": 0.5, "t": (T0 + 30) * 1000},
        {"v": 100, "o": "1", "c": 1.5, "h": 2.0, "l": 0.5, "t": T0 * 1000},
    ]
    body = msgspec.json.encode({"results": rows, "next_url": "https://x/next", "status": "OK"})
    page = parse_aggs_page(body, "IWM", frozenset(SYMBOLS), NOW)
    assert page.bars == (Bar("IWM", T0, 1.0, 2.0, 0.5, 1.5, 100.0),)
    assert [r.reason for r in page.rejected] == ["high_below_low", "bad_time", "bad_field"]
    assert page.next_url == "https://x/next"
    empty = parse_aggs_page(b'{"status":"OK","resultsCount":0}', "IWM", frozenset(SYMBOLS), NOW)
    assert empty.bars == () and empty.rejected == () and empty.next_url is None
    bad = parse_aggs_page(b"<html>", "IWM", frozenset(SYMBOLS), NOW)
    assert [r.reason for r in bad.rejected] == ["bad_response"]


# Fuzzing: whatever arrives, the protocol only ever hands out valid, subscribed minute bars.

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=16,
)
_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**66), max_value=2**66),
    st.sampled_from([0, -1, 1e308, 200.0, 199.0, 201.0]),
    st.text(max_size=4),
    st.none(),
)
_starts = st.one_of(
    st.integers(min_value=0, max_value=int(NOW + 7200) // 60).map(lambda m: m * 60_000),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_agg_like = st.fixed_dictionaries(
    {
        "ev": st.sampled_from(["AM", "A", "T", "status", ""]),
        "sym": st.sampled_from([*SYMBOLS, "iwm", "A/B", "", "TSLA", "BRK.B"]) | st.text(max_size=6),
        "o": _numbers,
        "h": _numbers,
        "l": _numbers,
        "c": _numbers,
        "v": _numbers,
        "s": _starts,
    },
    optional={
        "status": st.sampled_from(["connected", "auth_success", "success", "auth_failed", "x"]),
        "message": st.text(max_size=8),
    },
)
_frames = st.one_of(
    st.lists(st.one_of(_agg_like, _json), max_size=6).map(msgspec.json.encode),
    _json.map(msgspec.json.encode),
    st.binary(max_size=80),
    st.lists(_agg_like, max_size=3).map(lambda xs: json.dumps(xs).replace("1e+308", "1e400")),
    st.text(max_size=40),
)


def _assert_only_valid_bars(proto: MassiveProtocol) -> None:
    for event in proto.events_received():
        assert isinstance(
            event, (Connected, Authenticated, Subscribed, BarsReceived, ServerStatus, Rejection)
        )
        if isinstance(event, BarsReceived):
            for bar in event.bars:
                again = Bar(
                    bar.symbol, bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume
                )
                assert again == bar  # passes validation afresh
                assert bar.symbol in SYMBOLS
                assert 0 <= bar.time <= NOW + 300 and bar.time % 60 == 0
        if isinstance(event, Rejection):
            assert event.reason and isinstance(event.detail, str)


@settings(max_examples=300, deadline=None)
@given(st.lists(_frames, min_size=1, max_size=5))
def test_fuzzed_frames_never_raise_and_never_yield_a_bad_bar(frames: list[bytes | str]) -> None:
    proto = _streaming()
    for frame in frames:
        proto.receive_frame(frame, NOW)
        _assert_only_valid_bars(proto)


@settings(max_examples=150, deadline=None)
@given(st.lists(_frames, min_size=1, max_size=5))
def test_fuzzed_frames_during_the_handshake_never_raise(frames: list[bytes | str]) -> None:
    proto = MassiveProtocol(KEY, SYMBOLS)
    for frame in frames:
        proto.receive_frame(frame, NOW)
        _assert_only_valid_bars(proto)


@settings(max_examples=150, deadline=None)
@given(st.lists(_agg_like, max_size=4))
def test_fuzzed_rest_pages_never_raise(rows: list[dict[str, object]]) -> None:
    body = msgspec.json.encode({"results": [{**r, "t": r["s"]} for r in rows]})
    page = parse_aggs_page(body, "IWM", frozenset(SYMBOLS), NOW)
    for bar in page.bars:
        assert Bar(bar.symbol, bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume) == bar
        assert bar.symbol == "IWM" and bar.time % 60 == 0
