"""The sans-I/O Alpaca protocol: handshake, bar decoding, and every kind of hostile input."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.feeds.alpaca import (
    ERROR_MESSAGES,
    AlpacaProtocol,
    Authenticated,
    BarsReceived,
    Connected,
    ServerError,
    Subscribed,
    error_for_code,
    parse_bars_page,
    rfc3339,
)
from daemon.feeds.base import FeedAuthFailed, FeedFatal, FeedThrottled, FeedUnavailable
from daemon.feeds.reconnect import Rejection
from signals.bar import Bar
from tests.daemon.feeds.feedkit import KEY, SECRET, SYMBOLS, T0

NOW = T0 + 3600.0


def _streaming() -> AlpacaProtocol:
    proto = AlpacaProtocol(KEY, SECRET, SYMBOLS)
    for frame in (
        '[{"T":"success","msg":"connected"}]',
        '[{"T":"success","msg":"authenticated"}]',
        '[{"T":"subscription","bars":["IWM","SPY","QQQ"],"updatedBars":[],"dailyBars":[]}]',
    ):
        proto.receive_frame(frame, NOW)
    proto.events_received()
    proto.data_to_send()
    assert proto.state == "streaming"
    return proto


def _bar_msg(**fields: object) -> dict[str, object]:
    msg: dict[str, object] = {
        "T": "b",
        "S": "IWM",
        "o": 200.0,
        "h": 201.0,
        "l": 199.0,
        "c": 200.5,
        "v": 12345,
        "t": "2024-01-02T14:31:00Z",
        "n": 42,
        "vw": 200.2,
    }
    msg.update(fields)
    return msg


def _bars(proto: AlpacaProtocol) -> list[tuple[str, Bar]]:
    return [
        (e.kind, b) for e in proto.events_received() if isinstance(e, BarsReceived) for b in e.bars
    ]


def test_handshake_sends_auth_then_subscribe() -> None:
    proto = AlpacaProtocol(KEY, SECRET, ["IWM", "SPY"], channels=["bars", "updatedBars"])
    assert proto.state == "connecting" and proto.data_to_send() == []
    proto.receive_frame('[{"T":"success","msg":"connected"}]', NOW)
    assert proto.events_received() == [Connected()]
    assert [json.loads(m) for m in proto.data_to_send()] == [
        {"action": "auth", "key": KEY, "secret": SECRET}
    ]
    proto.receive_frame(b'[{"T":"success","msg":"authenticated"}]', NOW)
    assert proto.events_received() == [Authenticated()]
    assert [json.loads(m) for m in proto.data_to_send()] == [
        {"action": "subscribe", "bars": ["IWM", "SPY"], "updatedBars": ["IWM", "SPY"]}
    ]
    proto.receive_frame(
        '[{"T":"subscription","trades":[],"quotes":[],"bars":["IWM","SPY"],'
        '"updatedBars":["IWM","SPY"],"dailyBars":[],"statuses":[],"lulds":[]}]',
        NOW,
    )
    assert proto.events_received() == [Subscribed(("IWM", "SPY"), ("IWM", "SPY"), ())]
    state: str = proto.state
    assert state == "streaming"


def test_auth_failure_is_a_server_error_event() -> None:
    proto = AlpacaProtocol(KEY, SECRET, SYMBOLS)
    proto.receive_frame('[{"T":"success","msg":"connected"}]', NOW)
    proto.events_received()
    proto.receive_frame('[{"T":"error","code":402,"msg":"auth failed"}]', NOW)
    assert proto.events_received() == [ServerError(402, "auth failed")]
    assert proto.state == "failed"


def test_a_server_echoing_our_secret_does_not_leak_it() -> None:
    proto = AlpacaProtocol(KEY, SECRET, SYMBOLS)
    proto.receive_frame(json.dumps([{"T": "error", "code": 400, "msg": f"bad {SECRET}"}]), NOW)
    proto.receive_frame(json.dumps([{"T": f"{KEY}"}]), NOW)
    text = repr(proto.events_received())
    assert SECRET not in text and KEY not in text and "***" in text


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (400, FeedFatal),
        (401, FeedAuthFailed),
        (402, FeedAuthFailed),
        (403, FeedUnavailable),
        (404, FeedUnavailable),
        (405, FeedFatal),
        (406, FeedThrottled),
        (407, FeedUnavailable),
        (408, FeedFatal),
        (409, FeedFatal),
        (410, FeedFatal),
        (500, FeedUnavailable),
        (599, FeedUnavailable),
    ],
)
def test_error_codes_map_to_what_the_loop_must_do(code: int, kind: type[Exception]) -> None:
    err = error_for_code("alpaca", code, "whatever")
    assert type(err) is kind
    assert str(code) in str(err)
    if code in ERROR_MESSAGES:
        assert ERROR_MESSAGES[code] in str(err)


def test_bars_decode_to_epoch_bar_starts_by_kind() -> None:
    proto = _streaming()
    frame = [
        _bar_msg(),
        _bar_msg(S="SPY", t="2024-01-02T15:31:00+01:00"),  # the same instant, another offset
        _bar_msg(T="u", t="2024-01-02T14:30:00Z", c=200.75),
        _bar_msg(T="d", t="2024-01-02T05:00:00Z", o=199.0, l=198.0),
    ]
    proto.receive_frame(json.dumps(frame), NOW)
    got = _bars(proto)
    assert got == [
        ("live", Bar("IWM", T0 + 60, 200.0, 201.0, 199.0, 200.5, 12345.0)),
        ("live", Bar("SPY", T0 + 60, 200.0, 201.0, 199.0, 200.5, 12345.0)),
        ("updated", Bar("IWM", T0, 200.0, 201.0, 199.0, 200.75, 12345.0)),
        ("daily", Bar("IWM", 1_704_171_600, 199.0, 201.0, 198.0, 200.5, 12345.0)),
    ]


FUTURE = rfc3339(int(NOW) + 3600)

HOSTILE: list[tuple[str, bytes | str]] = [
    (
        "bad_json",
        b'[{"T":"b","S":"IWM","o":NaN,"h":2,"l":1,"c":1.5,"v":1,"t":"2024-01-02T14:31:00Z"}]',
    ),
    (
        "bad_json",
        b'[{"T":"b","S":"IWM","o":Infinity,"h":2,"l":1,"c":1.5,"v":1,"t":"2024-01-02T14:31:00Z"}]',
    ),
    ("bad_json", b'[{"T":"b",'),
    ("bad_json", b"\xff\xfe\x00garbage"),
    ("non_finite", json.dumps([_bar_msg()]).replace("201.0", "1e400")),
    ("non_positive_price", json.dumps([_bar_msg(o=-1.0, l=-2.0)])),
    ("non_positive_price", json.dumps([_bar_msg(o=0.0, l=0.0)])),
    ("high_below_low", json.dumps([_bar_msg(h=198.0)])),
    ("open_close_outside_range", json.dumps([_bar_msg(o=250.0)])),
    ("negative_volume", json.dumps([_bar_msg(v=-5)])),
    ("bad_field", json.dumps([_bar_msg(o="200.0")])),
    ("bad_field", json.dumps([_bar_msg(v=True)])),
    ("bad_field", json.dumps([_bar_msg(S=12)])),
    ("bad_field", json.dumps([{"T": "b", "S": "IWM"}])),
    ("unknown_type", json.dumps([{"T": "zz", "S": "IWM"}])),
    ("unknown_type", json.dumps([{"T": "t", "S": "IWM", "p": 1.0}])),
    ("bad_time", json.dumps([_bar_msg(t="yesterday")])),
    ("bad_time", json.dumps([_bar_msg(t=1704205860)])),
    ("bad_time", json.dumps([_bar_msg(t="2024-01-02T14:31:00")])),  # no offset
    ("bad_time", json.dumps([_bar_msg(t="2024-01-02T14:31:30Z")])),  # not a minute
    ("bad_time", json.dumps([_bar_msg(t="1969-12-31T23:59:00Z")])),
    ("future_time", json.dumps([_bar_msg(t=FUTURE)])),
    ("bad_symbol", json.dumps([_bar_msg(S="IW/M")])),
    ("bad_symbol", json.dumps([_bar_msg(S="A+B")])),
    ("bad_symbol", json.dumps([_bar_msg(S="#IWM")])),
    ("bad_symbol", json.dumps([_bar_msg(S="<script>")])),
    ("bad_symbol", json.dumps([_bar_msg(S="iwm")])),
    ("unsubscribed_symbol", json.dumps([_bar_msg(S="TSLA")])),
    ("not_a_list", json.dumps(_bar_msg())),
    ("not_a_list", b"42"),
    ("bad_message", b"[[1,2,3]]"),
    ("bad_message", b'[{"S":"IWM"}]'),
    ("bad_message", b'[{"T":7}]'),
    ("too_deep", b"[" * 100_000 + b"]" * 100_000),
    ("too_deep", b'[{"T":"b","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}]"),
    ("unexpected_message", b'[{"T":"success","msg":"connected"}]'),
]


@pytest.mark.parametrize(
    ("reason", "frame"), HOSTILE, ids=[f"{r}-{i}" for i, (r, _) in enumerate(HOSTILE)]
)
def test_hostile_input_is_rejected_with_a_reason(reason: str, frame: bytes | str) -> None:
    proto = _streaming()
    proto.receive_frame(frame, NOW)
    events = proto.events_received()
    assert [e.reason for e in events if isinstance(e, Rejection)] == [reason]
    assert not any(isinstance(e, BarsReceived) for e in events)
    assert proto.data_to_send() == []
    proto.receive_frame(json.dumps([_bar_msg()]), NOW)  # the stream goes on
    assert len(_bars(proto)) == 1


def test_one_bad_message_does_not_spoil_its_frame() -> None:
    proto = _streaming()
    frame = [_bar_msg(S="IWM"), _bar_msg(S="SPY", h=1.0), {"T": "q"}, _bar_msg(S="QQQ")]
    proto.receive_frame(json.dumps(frame), NOW)
    events = proto.events_received()
    assert sorted(e.reason for e in events if isinstance(e, Rejection)) == [
        "high_below_low",
        "unknown_type",
    ]
    assert [b.symbol for e in events if isinstance(e, BarsReceived) for b in e.bars] == [
        "IWM",
        "QQQ",
    ]


def test_bars_before_the_subscription_are_unexpected() -> None:
    proto = AlpacaProtocol(KEY, SECRET, SYMBOLS)
    proto.receive_frame(json.dumps([_bar_msg()]), NOW)
    assert [e.reason for e in proto.events_received() if isinstance(e, Rejection)] == [
        "unexpected_message"
    ]


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="symbol"):
        AlpacaProtocol(KEY, SECRET, [])
    with pytest.raises(ValueError, match="channels"):
        AlpacaProtocol(KEY, SECRET, ["IWM"], channels=["trades"])  # type: ignore[list-item]


# REST pages.


def test_rest_page_decodes_bars_and_token() -> None:
    body = msgspec.json.encode(
        {
            "bars": {
                "IWM": [
                    {
                        "t": "2024-01-02T14:30:00Z",
                        "o": 1.0,
                        "h": 2.0,
                        "l": 0.5,
                        "c": 1.5,
                        "v": 10,
                        "n": 1,
                        "vw": 1.2,
                    }
                ],
                "SPY": [
                    {"t": "2024-01-02T14:30:00Z", "o": 1.0, "h": 0.5, "l": 0.7, "c": 1.5, "v": 10},
                    {"t": "2024-01-02T14:30:00Z", "o": "x", "h": 2.0, "l": 0.5, "c": 1.5, "v": 10},
                ],
                "TSLA": [
                    {"t": "2024-01-02T14:30:00Z", "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 10}
                ],
            },
            "next_page_token": "abc",
        }
    )
    page = parse_bars_page(body, frozenset(SYMBOLS), NOW)
    assert page.bars == (Bar("IWM", T0, 1.0, 2.0, 0.5, 1.5, 10.0),)
    assert sorted(r.reason for r in page.rejected) == [
        "bad_field",
        "high_below_low",
        "unsubscribed_symbol",
    ]
    assert page.next_page_token == "abc"


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"bars": [1, 2]}', b'{"bars": {"IWM": 3}}', b"[" * 100_000]
)
def test_a_bad_rest_envelope_is_one_rejection(body: bytes) -> None:
    page = parse_bars_page(body, frozenset(SYMBOLS), NOW)
    assert page.bars == () and page.next_page_token is None
    assert [r.reason for r in page.rejected] == ["bad_response"]


def test_empty_rest_page() -> None:
    page = parse_bars_page(b'{"bars": null, "next_page_token": null}', frozenset(SYMBOLS), NOW)
    assert page == parse_bars_page(b'{"bars": {}}', frozenset(SYMBOLS), NOW)
    assert page.bars == () and page.rejected == () and page.next_page_token is None


# Fuzzing: whatever arrives, the protocol only ever hands out valid, subscribed bars.

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
    st.booleans(),
)
_stamps = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.datetimes().map(datetime.isoformat),
    st.integers(min_value=0, max_value=(T0 + 7200) // 60).map(lambda m: rfc3339(m * 60)),
    st.text(max_size=12),
    st.integers(),
)
_bar_like = st.fixed_dictionaries(
    {
        "T": st.sampled_from(["b", "u", "d", "t", "q", "success", "error", "subscription", ""]),
        "S": st.sampled_from([*SYMBOLS, "iwm", "A/B", "", "TSLA", "BRK.B"]) | st.text(max_size=6),
        "o": _numbers,
        "h": _numbers,
        "l": _numbers,
        "c": _numbers,
        "v": _numbers,
        "t": _stamps,
    },
    optional={"msg": st.sampled_from(["connected", "authenticated", "x"]), "code": _numbers},
)
_frames = st.one_of(
    st.lists(st.one_of(_bar_like, _json), max_size=6).map(msgspec.json.encode),
    _json.map(msgspec.json.encode),
    st.binary(max_size=80),
    st.lists(_bar_like, max_size=3).map(lambda xs: json.dumps(xs).replace("1e+308", "1e400")),
    st.text(max_size=40),
)


def _assert_only_valid_bars(proto: AlpacaProtocol) -> None:
    for event in proto.events_received():
        assert isinstance(
            event, (Connected, Authenticated, Subscribed, BarsReceived, Rejection, ServerError)
        )
        if isinstance(event, BarsReceived):
            for bar in event.bars:
                again = Bar(
                    bar.symbol, bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume
                )
                assert again == bar  # passes validation afresh
                assert bar.symbol in SYMBOLS
                assert 0 <= bar.time <= NOW + 300
                assert event.kind == "daily" or bar.time % 60 == 0
        if isinstance(event, Rejection):
            assert event.reason and isinstance(event.detail, str)


@settings(max_examples=400, deadline=None)
@given(st.lists(_frames, min_size=1, max_size=5))
def test_fuzzed_frames_never_raise_and_never_yield_a_bad_bar(frames: list[bytes | str]) -> None:
    proto = _streaming()
    for frame in frames:
        proto.receive_frame(frame, NOW)
        _assert_only_valid_bars(proto)
    assert SECRET not in repr(proto.data_to_send())


@settings(max_examples=200, deadline=None)
@given(st.lists(_frames, min_size=1, max_size=5))
def test_fuzzed_frames_during_the_handshake_never_raise(frames: list[bytes | str]) -> None:
    proto = AlpacaProtocol(KEY, SECRET, SYMBOLS)
    for frame in frames:
        proto.receive_frame(frame, NOW)
        _assert_only_valid_bars(proto)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*SYMBOLS, "x/y", "TSLA"]), st.lists(_bar_like, max_size=3), max_size=3
    )
)
def test_fuzzed_rest_pages_never_raise(bars: dict[str, list[dict[str, object]]]) -> None:
    body = msgspec.json.encode({"bars": bars, "next_page_token": None})
    page = parse_bars_page(body, frozenset(SYMBOLS), NOW)
    for bar in page.bars:
        assert Bar(bar.symbol, bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume) == bar
        assert bar.symbol in SYMBOLS and bar.time % 60 == 0


_stamps = st.sampled_from(
    [
        "2024-01-02T14:31:00Z",
        "2024-01-02T14:32:00Z",
        "2024-01-02T14:31:00.000Z",
        "2024-01-02T14:31:00.5Z",
        "2024-01-02T14:31:30Z",
        "2024-01-02T09:31:00-05:00",
        "2024-01-02T14:31:00",
        "1969-12-31T23:59:00Z",
        "2999-01-01T00:00:00Z",
        "2024-13-02T14:31:00Z",
        "2024-01-02",
        "",
    ]
)


def _mostly(good: object, *bad: object) -> st.SearchStrategy[object]:
    """`good` nine times in ten: enough whole frames of good bars to exercise the fast path."""
    return st.sampled_from([good] * (9 * len(bad)) + list(bad))


_fast_or_not = st.fixed_dictionaries(
    {
        "T": _mostly("b", "u", "d", "x"),
        "S": st.one_of(st.sampled_from(["IWM", "SPY", "QQQ"]), _mostly("IWM", "TSLA", "iwm", "")),
        "o": _mostly(200.0, 200, 0.0, -1.0, 1e308, 250.0),
        "h": _mostly(201.0, 199.5, 1e308),
        "l": _mostly(199.0, 199, 200.5),
        "c": _mostly(200.5, 198.0),
        "v": _mostly(12345, 0, -5, 1.5, "7"),
        "t": st.one_of(_mostly("2024-01-02T14:31:00Z", "2024-01-02T14:32:00Z"), _stamps),
    }
)


@settings(max_examples=300)
@given(st.lists(_fast_or_not, min_size=1, max_size=8), st.booleans())
def test_fast_path_emits_exactly_what_the_full_path_does(
    messages: list[dict[str, object]], as_bytes: bool
) -> None:
    """Frames of good bars take a one-pass decoder; the events must equal the full path's."""
    frame = json.dumps(messages)
    data: str | bytes = frame.encode() if as_bytes else frame
    fast, full = _streaming(), _streaming()
    full._fast_bars = lambda data, now_s: False  # type: ignore[method-assign]
    for _ in range(2):  # the second time, the time texts are already learned
        fast.receive_frame(data, NOW)
        full.receive_frame(data, NOW)
        assert fast.events_received() == full.events_received()


def test_fast_path_takes_the_frames_it_is_for() -> None:
    """A frame of good bars is decoded in one pass (a regression guard for the hot path)."""
    proto = _streaming()
    frame = json.dumps([_bar_msg(S=s) for s in SYMBOLS])
    assert proto._fast_bars(frame, NOW)
    assert [b.symbol for _, b in _bars(proto)] == list(SYMBOLS)
    assert not proto._fast_bars(json.dumps([_bar_msg(S="TSLA")]), NOW)
    assert proto.events_received() == []  # a refused fast path emits nothing
