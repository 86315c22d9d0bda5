"""The sans-I/O Finnhub protocol, candle decoding and the REST backfill."""

from __future__ import annotations

import json

import httpx
import msgspec
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.feeds.base import FeedAuthFailed, FeedFatal, FeedThrottled, FeedUnavailable
from daemon.feeds.finnhub import (
    BarsReceived,
    FinnhubProtocol,
    FinnhubRest,
    Pinged,
    parse_candles,
    stream_url,
)
from daemon.feeds.minute_builder import MinuteBuilder
from daemon.feeds.reconnect import Received, Rejection
from daemon.feeds.rest_options import RestOptions
from signals.bar import Bar
from tests.daemon.feeds.feedkit import SYMBOLS, T0, FakeClock

TOKEN = "fInNhUb-tok3n-0123456789"
NOW = T0 + 3600.0
MS = T0 * 1000


def _trade(**fields: object) -> dict[str, object]:
    trade: dict[str, object] = {"s": "IWM", "p": 200.0, "t": MS + 1_000, "v": 100, "c": ["1"]}
    trade.update(fields)
    return trade


def _frame(*trades: dict[str, object]) -> str:
    return json.dumps({"type": "trade", "data": list(trades)})


def _proto() -> FinnhubProtocol:
    proto = FinnhubProtocol(SYMBOLS, MinuteBuilder(2.0), token=TOKEN)
    proto.data_to_send()
    return proto


def _bars(proto: FinnhubProtocol) -> list[Bar]:
    return [b for e in proto.events_received() if isinstance(e, BarsReceived) for b in e.bars]


def test_subscribes_once_per_symbol_then_has_nothing_to_send() -> None:
    proto = FinnhubProtocol(["IWM", "SPY", "IWM"])
    assert [json.loads(m) for m in proto.data_to_send()] == [
        {"type": "subscribe", "symbol": "IWM"},
        {"type": "subscribe", "symbol": "SPY"},
    ]
    assert proto.data_to_send() == []
    with pytest.raises(ValueError, match="symbol"):
        FinnhubProtocol([])


def test_trades_make_bars_closed_by_the_next_minute_or_the_timer() -> None:
    proto = _proto()
    proto.receive_frame(
        _frame(_trade(), _trade(p=201.0, t=MS + 2_000, v=0), _trade(s="SPY", p=470.0)), NOW - 3540
    )
    assert proto.events_received() == []
    proto.receive_frame(_frame(_trade(p=199.0, t=MS + 61_000, v=5)).encode(), T0 + 61)
    assert _bars(proto) == [Bar("IWM", T0, 200.0, 201.0, 200.0, 201.0, 100.0)]
    proto.tick(T0 + 61.9)
    assert _bars(proto) == []
    proto.tick(T0 + 62)
    assert _bars(proto) == [Bar("SPY", T0, 470.0, 470.0, 470.0, 470.0, 100.0)]
    proto.tick(T0 + 200)
    assert _bars(proto) == [Bar("IWM", T0 + 60, 199.0, 199.0, 199.0, 199.0, 5.0)]


def test_bars_closed_by_one_frame_come_sorted_by_time_and_symbol() -> None:
    proto = _proto()
    proto.receive_frame(_frame(_trade(s="SPY"), _trade(s="IWM"), _trade(s="QQQ")), T0 + 30)
    proto.receive_frame(
        _frame(_trade(s="SPY", t=MS + 60_500), _trade(s="IWM", t=MS + 61_000)), T0 + 200
    )
    events = proto.events_received()
    assert len(events) == 1 and isinstance(events[0], BarsReceived)
    assert [(b.symbol, b.time) for b in events[0].bars] == [("IWM", T0), ("SPY", T0)]
    proto.tick(T0 + 200)
    assert [(b.symbol, b.time) for b in _bars(proto)] == [
        ("QQQ", T0),
        ("IWM", T0 + 60),
        ("SPY", T0 + 60),
    ]


def test_queued_frames_close_bars_on_the_streams_clock_not_the_wall_clock() -> None:
    proto = _proto()
    late_wall = T0 + 300  # the process was busy: these frames waited in the socket
    proto.receive_frame(_frame(_trade(s="SPY", t=MS + 10_000), _trade(t=MS + 20_000)), late_wall)
    proto.receive_frame(_frame(_trade(t=MS + 50_000, p=201.0)), late_wall)
    assert proto.events_received() == []  # nothing closed, nothing late
    proto.receive_frame(_frame(_trade(t=MS + 63_000, p=202.0)), late_wall)
    assert [(b.symbol, b.time, b.close) for b in _bars(proto)] == [
        ("IWM", T0, 201.0),  # closed by its next minute
        ("SPY", T0, 200.0),  # closed by the stream's clock: T0+63 >= T0+60+2
    ]


def test_pings_are_activity_and_errors_are_counted_without_ending_the_stream() -> None:
    proto = _proto()
    proto.receive_frame('{"type":"ping"}', NOW)
    proto.receive_frame(json.dumps({"type": "error", "msg": f"Invalid token {TOKEN}"}), NOW)
    proto.receive_frame('{"type":"news","data":[]}', NOW)
    events = proto.events_received()
    assert events[0] == Pinged()
    assert [(e.reason, "***" in e.detail) for e in events[1:] if isinstance(e, Rejection)] == [
        ("server_error", True),
        ("unknown_type", False),
    ]
    assert TOKEN not in repr(events)


FUTURE_MS = int(NOW + 3600) * 1000

HOSTILE: list[tuple[str, bytes | str]] = [
    ("bad_json", _frame(_trade()).replace("200.0", "NaN")),
    ("bad_json", _frame(_trade()).replace("200.0", "Infinity")),
    ("bad_json", b'{"type":"trade",'),
    ("bad_json", b"\xff\xfe\x00garbage"),
    ("non_finite", _frame(_trade()).replace("200.0", "1e400")),
    ("non_positive_price", _frame(_trade(p=-1.0))),
    ("non_positive_price", _frame(_trade(p=0))),
    ("negative_volume", _frame(_trade(v=-5))),
    ("non_finite", _frame(_trade()).replace('"v": 100', '"v": -1e999')),
    ("bad_field", _frame(_trade(p="200.0"))),
    ("bad_field", _frame(_trade(v="100"))),
    ("bad_field", _frame(_trade(p=True))),
    ("bad_field", _frame(_trade(s=12))),
    ("bad_field", _frame({"s": "IWM"})),
    ("bad_time", _frame(_trade(t="2024-01-02T14:31:00Z"))),
    ("bad_time", _frame(_trade(t=MS + 0.5))),
    ("bad_time", _frame(_trade(t=-1))),
    ("future_time", _frame(_trade(t=2**70))),
    ("future_time", _frame(_trade(t=FUTURE_MS))),
    ("bad_symbol", _frame(_trade(s="IW/M"))),
    ("bad_symbol", _frame(_trade(s="A+B"))),
    ("bad_symbol", _frame(_trade(s="#IWM"))),
    ("bad_symbol", _frame(_trade(s="<script>"))),
    ("bad_symbol", _frame(_trade(s="iwm"))),
    ("bad_symbol", _frame(_trade(s="BINANCE:BTCUSDT"))),
    ("unsubscribed_symbol", _frame(_trade(s="TSLA"))),
    ("not_an_object", json.dumps([_trade()])),
    ("not_an_object", b"42"),
    ("bad_message", b'{"type":"trade","data":{"s":"IWM"}}'),
    ("bad_message", b'{"type":"trade"}'),
    ("bad_field", b'{"type":"trade","data":[[1,2]]}'),
    ("not_an_object", b'{"type":7}'),
    ("not_an_object", b"[" * 100_000 + b"]" * 100_000),
    ("too_deep", b'{"x":' * 50_000 + b"1" + b"}" * 50_000),
    ("too_deep", b'{"type":"trade","x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    ("unknown_type", b'{"type":"subscribe","symbol":"IWM"}'),
    ("late_trade", _frame(_trade(t=MS - 60_000))),
]


@pytest.mark.parametrize(("reason", "frame"), HOSTILE)
def test_hostile_frames_are_rejected_with_a_reason_and_the_stream_goes_on(
    reason: str, frame: bytes | str
) -> None:
    proto = _proto()
    now = T0 + 62.0
    proto.receive_frame(_frame(_trade(t=MS + 100)), now)  # opens IWM's minute T0
    proto.receive_frame(_frame(_trade(t=MS + 61_000)), now)  # closes it: T0 is done
    proto.events_received()
    proto.receive_frame(frame, now)
    events = proto.events_received()
    assert [e.reason for e in events if isinstance(e, Rejection)] == [reason]
    assert not any(isinstance(e, BarsReceived) for e in events)
    proto.receive_frame(_frame(_trade(t=MS + 125_000)), now)
    assert [(b.symbol, b.time) for b in _bars(proto)] == [("IWM", T0 + 60)]


def test_one_bad_trade_does_not_spoil_the_rest_of_its_frame() -> None:
    proto = _proto()
    proto.receive_frame(_frame(_trade(), _trade(p=-3), _trade(s="X/Y"), _trade(p=202.0)), T0 + 5)
    reasons = [e.reason for e in proto.events_received() if isinstance(e, Rejection)]
    assert reasons == ["non_positive_price", "bad_symbol"]
    proto.tick(T0 + 100)
    assert _bars(proto) == [Bar("IWM", T0, 200.0, 202.0, 200.0, 202.0, 200.0)]


def test_the_stream_url_carries_the_token_in_its_query() -> None:
    assert stream_url("wss://ws.finnhub.io", "a b&c") == "wss://ws.finnhub.io?token=a+b%26c"
    assert stream_url("ws://h:1/p?x=1", "t0") == "ws://h:1/p?x=1&token=t0"


def test_candles_decode_and_bad_rows_are_rejected() -> None:
    body = msgspec.json.encode(
        {
            "s": "ok",
            "t": [T0, T0 + 30, T0 + 120, T0 + 180],
            "o": [1.0, 1.0, 1.0, 1.0],
            "h": [2.0, 2.0, 0.5, 2.0],
            "l": [0.5, 0.5, 0.6, 0.5],
            "c": [1.5, 1.5, 0.55, 1.5],
            "v": [100, 1, 1, 0],
        }
    )
    bars, rejected = parse_candles(body, "IWM", frozenset(SYMBOLS), NOW)
    assert bars == [
        Bar("IWM", T0, 1.0, 2.0, 0.5, 1.5, 100.0),
        Bar("IWM", T0 + 180, 1.0, 2.0, 0.5, 1.5, 0.0),
    ]
    assert [r.reason for r in rejected] == ["bad_time", "high_below_low"]
    assert parse_candles(b'{"s":"no_data"}', "IWM", frozenset(SYMBOLS), NOW) == ([], [])
    for bad in (b"<html>", b'{"s":"ok","t":[1],"o":[]}', b'{"s":"ok","t":["x"]}', b'{"s":"x"}'):
        assert [r.reason for r in parse_candles(bad, "IWM", frozenset(SYMBOLS), NOW)[1]] == [
            "bad_response"
        ]


def _rest(handler: httpx.MockTransport, clock: FakeClock, **kwargs: object) -> tuple[
    FinnhubRest, httpx.AsyncClient
]:  # fmt: skip
    http = httpx.AsyncClient(transport=handler)
    rest = FinnhubRest(http, TOKEN, RestOptions(
        SYMBOLS, rest_url="https://finnhub.example",
        now=clock.now, sleep=clock.sleep, **kwargs,  # type: ignore[arg-type]
    ))  # fmt: skip
    return rest, http


def _candles(*starts: int) -> dict[str, object]:
    n = len(starts)
    return {"s": "ok", "t": list(starts), "o": [1.0] * n, "h": [2.0] * n, "l": [0.5] * n,
            "c": [1.5] * n, "v": [10] * n}  # fmt: skip


async def test_rest_asks_per_symbol_with_the_token_in_a_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.params["symbol"] == "SPY":
            return httpx.Response(200, json={"s": "no_data"})
        return httpx.Response(200, json=_candles(T0, T0 + 60, T0 + 600))

    rest, http = _rest(httpx.MockTransport(handler), FakeClock(NOW))
    async with http:
        got = await rest.bars(T0, T0 + 119)
    assert [(b.symbol, b.time) for _, g in got.batches for b in g] == [
        ("IWM", T0),
        ("IWM", T0 + 60),
        ("QQQ", T0),
        ("QQQ", T0 + 60),
    ]
    assert [r.reason for r in got.rejected] == ["outside_window"] * 2
    assert dict(seen[0].url.params) == {
        "symbol": "IWM",
        "resolution": "1",
        "from": str(T0),
        "to": str(T0 + 119),
    }
    assert seen[0].url.path == "/api/v1/stock/candle"
    assert all(r.headers["X-Finnhub-Token"] == TOKEN and TOKEN not in str(r.url) for r in seen)


async def test_403_turns_backfill_off_with_one_log_line_and_no_error() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(403, json={"error": "You don't have access to this resource."})

    rest, http = _rest(httpx.MockTransport(handler), FakeClock(NOW))
    with structlog.testing.capture_logs() as logs:
        async with http:
            for _ in range(3):
                assert await rest.bars(T0, T0 + 119) == Received()
    assert calls == 1 and rest.available is False
    lines = [e for e in logs if e["event"] == "feed.backfill_unavailable"]
    assert len(lines) == 1 and "403" in lines[0]["detail"] and "access" in lines[0]["detail"]


@pytest.mark.parametrize(
    ("status", "kind", "retried"),
    [
        (401, FeedAuthFailed, False),
        (400, FeedFatal, False),
        (429, FeedThrottled, True),
        (500, FeedUnavailable, True),
    ],
)
async def test_rest_errors_are_classified_without_leaking_the_token(
    status: int, kind: type[Exception], retried: bool
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(status, headers={"Retry-After": "2"}, json={"error": f"bad {TOKEN}"})

    clock = FakeClock(NOW)
    rest, http = _rest(httpx.MockTransport(handler), clock, max_retries=2)
    async with http:
        with pytest.raises(kind) as info:
            await rest.bars(T0, T0 + 59)
    assert type(info.value) is kind and calls == (3 if retried else 1)
    assert str(status) in str(info.value) and TOKEN not in str(info.value)
    assert clock.slept == ([2.0, 2.0] if status == 429 else [1.0, 2.0] if retried else [])
    assert TOKEN not in repr(rest)


# Fuzzing: whatever arrives, only valid, subscribed minute bars come out.

_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**66), max_value=2**66),
    st.sampled_from([0, -1, 1e308, 200.0, 0.0001]),
    st.text(max_size=4),
    st.none(),
)
_times = st.one_of(
    st.integers(min_value=MS - 120_000, max_value=MS + 600_000),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
_trade_like = st.fixed_dictionaries(
    {
        "s": st.sampled_from([*SYMBOLS, "iwm", "A/B", "", "TSLA"]) | st.text(max_size=6),
        "p": _numbers,
        "t": _times,
        "v": _numbers,
    },
    optional={"c": st.lists(st.text(max_size=2), max_size=2)},
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
_frames = st.one_of(
    st.lists(st.one_of(_trade_like, _json), max_size=6).map(
        lambda data: msgspec.json.encode({"type": "trade", "data": data})
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["trade", "ping", "error", "x"])},
        optional={"data": _json, "msg": _json},
    ).map(msgspec.json.encode),
    _json.map(msgspec.json.encode),
    st.binary(max_size=80),
    st.lists(_trade_like, max_size=3).map(
        lambda xs: json.dumps({"type": "trade", "data": xs}).replace("1e+308", "1e400")
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_frames, st.floats(min_value=0, max_value=400)), min_size=1, max_size=6))
def test_fuzzed_frames_never_raise_and_never_yield_a_bad_bar(
    frames: list[tuple[bytes | str, float]],
) -> None:
    proto = _proto()
    seen: set[tuple[str, int]] = set()
    for frame, offset_s in frames:
        proto.receive_frame(frame, T0 + offset_s)
        proto.tick(T0 + offset_s)
        for event in proto.events_received():
            assert isinstance(event, (BarsReceived, Pinged, Rejection))
            if isinstance(event, Rejection):
                assert event.reason and TOKEN not in event.detail
                continue
            if isinstance(event, BarsReceived):
                for bar in event.bars:
                    again = Bar(
                        bar.symbol, bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume
                    )
                    assert again == bar and bar.symbol in SYMBOLS and bar.time % 60 == 0
                    assert 0 <= bar.time <= T0 + 400 + 300
                    assert (bar.symbol, bar.time) not in seen  # a minute closes once
                    seen.add((bar.symbol, bar.time))
