"""Hostile input: fuzzed frames into the three feed decoders, through real sockets, into the daemon.

Each provider's sans-I/O protocol (`AlpacaProtocol`, `MassiveProtocol`,
`FinnhubProtocol`) is fed frames as they leave the socket (`str` for text
frames, `bytes` for binary ones): wrong types, NaN/Infinity as JSON tokens
and as strings, 1e400 and 10**30-sized numbers, zero and negative prices and
volumes, high < low, 10,000-deep nesting, invalid UTF-8, malformed, pre-1970
and far-future times, bad symbols, with valid records mixed in. The
generator knows what each record must become, so the properties are exact:
no exception escapes, the valid records come through as exactly the bars they
describe, and every invalid record is one rejection with the reason predicted.

The size cap and the UTF-8 check of text frames live in the websocket layer,
so a few hundred frames per provider also go through a real local server to
the live feed (oversized ones close with 1009, bad text with 1007), and a
short daemon run checks that hostile frames alone raise no alert while one
valid bar does.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import re
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol, TypeVar

import msgspec
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection

from daemon.app import Ingest, run_daemon
from daemon.config import Config, load_config
from daemon.config_errors import ConfigError
from daemon.feeds.alpaca import AlpacaFeed, AlpacaProtocol
from daemon.feeds.alpaca import BarsReceived as AlpacaBars
from daemon.feeds.base import FeedStats
from daemon.feeds.finnhub import BarsReceived as FinnhubBars
from daemon.feeds.finnhub import FinnhubFeed, FinnhubProtocol, Pinged
from daemon.feeds.massive import BarsReceived as MassiveBars
from daemon.feeds.massive import MassiveFeed, MassiveProtocol
from daemon.feeds.minute_builder import MinuteBuilder
from daemon.feeds.reconnect import Rejection
from daemon.feeds.replay import ReplayServer, frame_from_rows
from daemon.secrets import Secrets
from signals.bar import Bar
from signals.score import SIGNALS
from tests.daemon.daemon_config import write_config
from tests.daemon.feeds.feedkit import FAST, KEY, SECRET, never_open, wait_until
from tests.daemon.feeds.finnhub_server import FinnhubServer, make_tape
from tests.daemon.feeds.massive_server import MassiveServer
from tests.daemon.feeds.massive_server import running as run_feed
from tests.reliability.scale import scale

pytestmark = pytest.mark.reliability

T = TypeVar("T")

T0 = 1_704_205_800  # 2024-01-02 14:30 UTC
SYMBOLS = ("IWM", "SPY", "QQQ")
NOW = T0 + 30 * 86_400  # the decoders' wall clock: a month after the first bar
FRAMES_PER_EXAMPLE = 25
EXAMPLES = scale(100, 420)
MIN_FRAMES = scale(2_000, 10_000)
LIVE_FRAMES = scale(300, 1_500)
MAX_FRAME_BYTES = 1 << 16
DEEP = (2_000, 10_000)
KINDS = {"b": "live", "u": "updated", "d": "daily"}

Trade = tuple[str, int, float, float]
"""symbol, time (epoch ms), price, volume."""


# -- choices: the same generators run on hypothesis draws or on a seeded random -------


class Pick(Protocol):
    def choice(self, options: Sequence[T]) -> T: ...

    def integer(self, lo: int, hi: int) -> int: ...

    def number(self, lo: float, hi: float) -> float: ...


class HypothesisPick:
    """Choices drawn by hypothesis (shrinkable)."""

    def __init__(self, data: st.DataObject) -> None:
        self._data = data

    def choice(self, options: Sequence[T]) -> T:
        return self._data.draw(st.sampled_from(options))

    def integer(self, lo: int, hi: int) -> int:
        return self._data.draw(st.integers(lo, hi))

    def number(self, lo: float, hi: float) -> float:
        return self._data.draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))


class RandomPick:
    """Choices from a seeded `random.Random`, for the frames sent over real sockets."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def choice(self, options: Sequence[T]) -> T:
        return self._rng.choice(options)

    def integer(self, lo: int, hi: int) -> int:
        return self._rng.randint(lo, hi)

    def number(self, lo: float, hi: float) -> float:
        return self._rng.uniform(lo, hi)


# -- JSON text pieces -------------------------------------------------------------------


def _q(text: str) -> str:
    return json.dumps(text)


def _num(x: float) -> str:
    return repr(float(x))


def _obj(fields: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{_q(k)}:{v}" for k, v in fields) + "}"


def _set(fields: list[tuple[str, str]], key: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k == key else v) for k, v in fields]


def _drop(fields: list[tuple[str, str]], key: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in fields if k != key]


WRONG_TYPES = (
    '"abc"', "true", "false", "null", "[]", "{}", '"NaN"', '"Infinity"', '"-Infinity"',
    '"1e308"', '"100.5"', "[1.5]",
)  # fmt: skip
NON_FINITE = ("1e400", "-1e400", "1.5e309", "-2e999")
BAD_SYMBOLS = (
    '""', '"iwm"', _q("A" * 200), '"I\\u0000WM"', '"IW\\nM"', '"\\u00c9WM"',
    json.dumps("ÏWM", ensure_ascii=False), '"IWM "', '" IWM"', '"IWM\\u200b"', '"I/WM"',
    '"\\u0007"', _q("SPY" * 4),
)  # fmt: skip
UNSUBSCRIBED = ('"ZZZZ"', '"BRK.B"', '"TNA"', '"A"', '"IWM-W"')
NON_POSITIVE = ("0", "0.0", "-0.0", "-1", "-1e308", "-0.01")
NEGATIVE_VOLUME = ("-1", "-0.001", "-1e308")
# Not JSON. Each starts the way its provider's frames do: msgspec reports a wrong
# top-level type before it reads further, so `[` to Finnhub is "not an object".
LIST_JUNK = ("", " ", "[", "]", "[,]", "[1,]", "[] []", "[{'T':'b'}]", "[\x01]", '["\x02"]', "}{")
FINNHUB_JUNK = (
    "",
    " ",
    "{",
    "}",
    "{,}",
    '{"type":}',
    '{"type":"ping"} {}',
    "{'type':'trade'}",
    '{"type":"\x02"}',
)
BAD_UTF8 = (b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80")


@dataclass
class Batch:
    """Frames and what the decoder must make of them."""

    frames: list[str | bytes] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    bars: list[tuple[str, Bar]] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    hostile_frames: int = 0


class Frames:
    """Hostile and valid frames of one provider, with the expected outcome of each record.

    Valid records get strictly increasing times (`start_s` on), so no valid
    minute bar is ever a duplicate or a late trade. `now_s` is the decoder's
    clock; `utf8_in_strings` adds binary frames with invalid UTF-8 inside a
    JSON string.
    """

    def __init__(
        self,
        provider: str,
        now_s: float,
        start_s: int,
        *,
        utf8_in_strings: bool = True,
        valid: bool = True,
    ) -> None:
        self.provider = provider
        self.now_s = now_s
        self.minute = start_s // 60 * 60
        self.ms = start_s * 1000
        self.utf8_in_strings = utf8_in_strings
        self.valid = valid
        future = (int(now_s) // 60 + 60) * 60
        self.future_s = future
        self.future_ms = future * 1000

    # One frame.

    def frame(self, pick: Pick, out: Batch) -> None:
        kind = pick.choice(("mixed", "mixed", "mixed", "valid", "hostile", "hostile"))
        if kind == "hostile" or (not self.valid and pick.integer(0, 1)):
            data, reason = self.hostile_frame(pick)
            out.frames.append(data)
            out.hostile_frames += 1
            if reason is not None:
                out.reasons[reason] += 1
            return
        records: list[str] = []
        for _ in range(pick.integer(1, 6)):
            if self.valid and (kind == "valid" or pick.integer(0, 2) == 0):
                records.append(self.valid_record(pick, out))
            else:
                text, reason = self.invalid_record(pick)
                records.append(text)
                out.reasons[reason] += 1
        out.frames.append(self.wrap(pick, records))

    def wrap(self, pick: Pick, records: list[str]) -> str | bytes:
        if self.provider == "finnhub":
            text = _obj([("type", '"trade"'), ("data", "[" + ",".join(records) + "]")])
        else:
            text = "[" + ",".join(records) + "]"
        return text.encode() if pick.integer(0, 3) == 0 else text

    # Valid records.

    def prices(self, pick: Pick, extreme: bool = True) -> tuple[float, float, float, float]:
        if extreme and pick.integer(0, 30) == 0:
            return (1e308, 1e308, 1e308, 1e308)  # absurd but a valid bar: it must come through
        low = pick.number(0.01, 5000.0)
        high = low + pick.number(0.0, 50.0)
        return (pick.number(low, high), high, low, pick.number(low, high))

    def volume(self, pick: Pick) -> str:
        return pick.choice(
            (str(pick.integer(0, 10**7)), _num(pick.number(0.0, 1e9)), "0", str(10**30))
        )

    def stamp(self, pick: Pick, epoch: int) -> str:
        moment = datetime.fromtimestamp(epoch, UTC)
        style = pick.integer(0, 4)
        if style == 0:
            return _q(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))
        if style == 1:
            return _q(moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        offset = timezone(timedelta(minutes=pick.choice((0, -300, 330, 840, -720))))
        return _q(moment.astimezone(offset).isoformat())

    def valid_record(self, pick: Pick, out: Batch) -> str:
        symbol = pick.choice(SYMBOLS)
        if self.provider == "finnhub":
            self.ms += pick.integer(1, 45_000)
            price = pick.number(0.01, 5000.0)
            volume = pick.choice((0.0, float(pick.integer(1, 10_000)), pick.number(0.0, 1e6)))
            out.trades.append((symbol, self.ms, price, volume))
            fields = [("s", _q(symbol)), ("p", _num(price)), ("t", str(self.ms))]
            fields += [("v", _num(volume)), ("c", '["1","12"]')]
            return _obj(fields)
        self.minute += 60 * pick.integer(1, 3)
        o, h, low, c = self.prices(pick)
        size = self.volume(pick)
        bar = Bar(symbol, self.minute, o, h, low, c, float(size))
        prices = [("o", _num(o)), ("h", _num(h)), ("l", _num(low)), ("c", _num(c))]
        if self.provider == "massive":
            fields = [("ev", '"AM"'), ("sym", _q(symbol)), ("v", size), ("av", "99")]
            fields += [
                *prices,
                ("s", str(self.minute * 1000)),
                ("e", str(self.minute * 1000 + 60_000)),
            ]
            out.bars.append(("live", bar))
        else:
            tag = pick.choice(("b", "b", "b", "u", "d"))
            fields = [("T", _q(tag)), ("S", _q(symbol)), *prices, ("v", size)]
            fields += [("t", self.stamp(pick, self.minute)), ("n", "42"), ("vw", _num(low))]
            out.bars.append((KINDS[tag], bar))
        if pick.integer(0, 9) == 0:
            fields.append(("x", "[" * 50 + "]" * 50))  # unknown fields are ignored, even nested
        if pick.integer(0, 1):
            fields.reverse()
        return _obj(fields)

    # Invalid records: one mutation of a valid-looking record, and the reason it must get.

    def base(self, pick: Pick) -> list[tuple[str, str]]:
        o, h, low, c = self.prices(pick, extreme=False)
        prices = [("o", _num(o)), ("h", _num(h)), ("l", _num(low)), ("c", _num(c))]
        symbol = _q(pick.choice(SYMBOLS))
        if self.provider == "massive":
            start = str((T0 // 60 + pick.integer(0, 10_000)) * 60_000)
            return [("ev", '"AM"'), ("sym", symbol), *prices, ("v", "100"), ("s", start)]
        if self.provider == "finnhub":
            return [("s", symbol), ("p", _num(o)), ("t", str(T0 * 1000 + pick.integer(0, 10**9)))]
        stamp = self.stamp(pick, (T0 // 60 + pick.integer(0, 10_000)) * 60)
        return [("T", '"b"'), ("S", symbol), *prices, ("v", "100"), ("t", stamp)]

    def invalid_record(self, pick: Pick) -> tuple[str, str]:
        if self.provider == "finnhub":
            return self.invalid_trade(pick)
        massive = self.provider == "massive"
        sym, tag, when = ("sym", "ev", "s") if massive else ("S", "T", "t")
        fields = self.base(pick)
        price_field = pick.choice(("o", "h", "l", "c"))
        category = pick.integer(0, 16)
        if category == 0:
            return _obj(
                _set(fields, pick.choice(("o", "h", "l", "c", "v")), pick.choice(WRONG_TYPES))
            ), "bad_field"
        if category == 1:
            return _obj(_set(fields, sym, pick.choice(("5", "null", '["IWM"]', "{}")))), "bad_field"
        if category == 2:
            return _obj(
                _drop(fields, pick.choice((sym, "o", "h", "l", "c", "v", when)))
            ), "bad_field"
        if category == 3:
            return _obj(
                _set(fields, pick.choice(("o", "h", "l", "c", "v")), pick.choice(NON_FINITE))
            ), "non_finite"
        if category == 4:
            return _obj(_set(fields, price_field, pick.choice(NON_POSITIVE))), "non_positive_price"
        if category == 5:
            return _obj(_set(fields, "v", pick.choice(NEGATIVE_VOLUME))), "negative_volume"
        if category == 6:
            floor = float(dict(fields)["l"])
            below = pick.choice((_num(floor / 2), _num(floor * 0.999)))
            swapped = _set(_set(fields, "h", below), "l", pick.choice((_num(floor), str(10**30))))
            return _obj(swapped), "high_below_low"
        if category == 7:
            high, low = float(dict(fields)["h"]), float(dict(fields)["l"])
            which, value = pick.choice(
                (("o", high * 2), ("c", high * 2), ("o", low / 2), ("c", low / 2))
            )
            return _obj(_set(fields, which, _num(value))), "open_close_outside_range"
        if category == 8:
            return _obj(_set(fields, when, pick.choice(self.bad_times()))), "bad_time"
        if category == 9:
            return _obj(_set(fields, when, pick.choice(self.future_times()))), "future_time"
        if category == 10:
            return _obj(_set(fields, sym, pick.choice(BAD_SYMBOLS))), "bad_symbol"
        if category == 11:
            return _obj(_set(fields, sym, pick.choice(UNSUBSCRIBED))), "unsubscribed_symbol"
        if category == 12:
            return pick.choice(
                ("5", '"b"', "null", "[]", '[{"T":"b"}]', "true", "1e400", "-7")
            ), "bad_message"
        if category == 13:
            other = pick.choice(
                ("{}", _obj([(sym, '"IWM"')]), _obj([(tag, "5")]), _obj([(tag, "null")]))
            )
            return other, "bad_message"
        if category == 14:
            unknown = (
                ('"Q"', '"A"', '"am"', '""', '"T"')
                if massive
                else ('"q"', '"t"', '"bb"', '""', '"B"', '"trades"')
            )
            return _obj([(tag, pick.choice(unknown)), *fields[1:]]), "unknown_type"
        if category == 15:
            if massive:
                control = pick.choice(
                    (
                        '{"ev":"status","status":"connected"}',
                        '{"ev":"status","status":"auth_success"}',
                    )
                )
            else:
                control = pick.choice(
                    ('{"T":"success","msg":"connected"}', '{"T":"success","msg":"authenticated"}')
                )
            return control, "unexpected_message"
        control = (
            '{"ev":"status"}'
            if massive
            else pick.choice(('{"T":"success"}', '{"T":"success","msg":5}'))
        )
        return control, "bad_message"

    def bad_times(self) -> tuple[str, ...]:
        if self.provider == "massive":
            return (
                "-60000", str(T0 * 1000 + 30_000), str(T0 * 1000) + ".0", _q(str(T0 * 1000)),
                "null", "true", "1e400", "-1e400", str(-60_000 * 10**30), str(T0 * 1000 + 1),
            )  # fmt: skip
        return (
            '"2024-13-45T14:31:00Z"', '"not a time"', str(T0), str(T0) + ".0",
            '"2024-01-02T14:31:00"', '"2024-01-02T14:31:30Z"', '"2024-01-02T14:31:00.5Z"',
            '"1969-12-31T23:59:00Z"', '"0001-01-01T00:00:00Z"', '"10000-01-01T00:00:00Z"',
            '""', "null", '"2024-01-02"', '"14:31:00"', '"2024-01-02T14:31:00+25:00"',
            '"1970-01-01T00:00:00+00:01"',
        )  # fmt: skip

    def future_times(self) -> tuple[str, ...]:
        if self.provider == "massive":
            return (str(self.future_ms), str(60_000 * 10**30), str(60_000 * 10**400))
        stamp = datetime.fromtimestamp(self.future_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return ('"2999-01-01T00:00:00Z"', '"9999-12-31T23:59:00Z"', _q(stamp))

    def invalid_trade(self, pick: Pick) -> tuple[str, str]:
        fields = [*self.base(pick), ("v", "100")]
        category = pick.integer(0, 12)
        if category == 0:
            return _obj(
                _set(fields, pick.choice(("p", "v")), pick.choice(WRONG_TYPES))
            ), "bad_field"
        if category == 1:
            return _obj(_set(fields, "s", pick.choice(("5", "null", '["IWM"]', "{}")))), "bad_field"
        if category == 2:
            return _obj(_drop(fields, pick.choice(("s", "p", "t", "v")))), "bad_field"
        if category == 3:
            return pick.choice(("5", '"x"', "null", "[]", "true")), "bad_field"
        if category == 4:
            return _obj(
                _set(fields, pick.choice(("p", "v")), pick.choice(NON_FINITE))
            ), "non_finite"
        if category == 5:
            return _obj(_set(fields, "p", pick.choice(NON_POSITIVE))), "non_positive_price"
        if category == 6:
            return _obj(_set(fields, "v", pick.choice(NEGATIVE_VOLUME))), "negative_volume"
        if category == 7:
            bad = (
                '"x"',
                "null",
                "1.5",
                str(T0 * 1000) + ".0",
                "true",
                "1e400",
                "-1",
                str(-(10**30)),
                "[]",
            )
            return _obj(_set(fields, "t", pick.choice(bad))), "bad_time"
        if category == 8:
            future = (str(self.future_ms), str(10**30), str(10**400))
            return _obj(_set(fields, "t", pick.choice(future))), "future_time"
        if category == 9:
            return _obj(_set(fields, "s", pick.choice(BAD_SYMBOLS))), "bad_symbol"
        if category == 10:
            return _obj(_set(fields, "s", pick.choice(UNSUBSCRIBED))), "unsubscribed_symbol"
        if category == 11:
            return _obj(_set(fields, "p", pick.choice(("0", "-5")))), "non_positive_price"
        return _obj(_set(fields, "v", "-1e-9")), "negative_volume"

    # Whole frames that are hostile as a whole: one rejection each (None: a harmless frame).

    def hostile_frame(self, pick: Pick) -> tuple[str | bytes, str | None]:
        finnhub = self.provider == "finnhub"
        category = pick.integer(0, 7)
        record = _obj([*self.base(pick), ("v", "100")] if finnhub else self.base(pick))
        whole = self.wrap(pick, [record])
        text = whole.decode() if isinstance(whole, bytes) else whole
        if category == 0:  # NaN / Infinity as JSON tokens
            token = pick.choice(("NaN", "Infinity", "-Infinity", "nan", "inf"))
            field_name = "p" if finnhub else "o"
            return text.replace(f'"{field_name}":', f'"{field_name}":{token},"_":', 1), "bad_json"
        if category == 1:  # truncated, or not JSON at all
            junk = FINNHUB_JUNK if finnhub else LIST_JUNK
            cut = pick.integer(1, len(text) - 1)
            return pick.choice((text[:cut], pick.choice(junk))), "bad_json"
        if category == 2:  # binary frames that are not UTF-8
            noise = pick.choice(BAD_UTF8)
            if self.utf8_in_strings and pick.integer(0, 1):
                raw = text.encode()
                at = raw.index(b'":"') + 3 if b'":"' in raw else 1
                return raw[:at] + noise + raw[at:], "bad_json"
            return noise + text.encode(), "bad_json"
        if category == 3:  # 2,000 to 10,000 levels deep
            depth = pick.choice(DEEP)
            arrays, objects = "[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth
            inner = pick.choice((arrays, objects))
            if finnhub:
                deep = (
                    objects,
                    f'{{"type":"trade","data":{arrays}}}',
                    f'{{"type":"ping","x":{inner}}}',
                )
                return pick.choice(deep), "too_deep"
            deep = (arrays, f"[{objects}]", f'[{{"T":"b","x":{inner}}}]')
            return pick.choice(deep), "too_deep"
        if finnhub:
            return self.finnhub_frame(pick, category)
        if category == 4:
            return pick.choice(
                ("{}", '{"T":"b"}', '"x"', "42", "null", "true", "1e400", '""')
            ), "not_a_list"
        if category == 5:  # a raw control character inside a string is not JSON
            return text.replace('":"', '":"\x01', 1) if '":"' in text else "[\x01]", "bad_json"
        empty: str = pick.choice(("[]", " [ ] "))
        return (empty.encode() if pick.integer(0, 1) else empty), None  # nothing, no rejection

    def finnhub_frame(self, pick: Pick, category: int) -> tuple[str | bytes, str | None]:
        if category == 4:
            return pick.choice(
                (
                    "[]",
                    '[{"type":"trade"}]',
                    "5",
                    '"trade"',
                    "null",
                    "{}",
                    '{"type":5}',
                    '{"type":null}',
                    '{"data":[]}',
                )
            ), "not_an_object"
        if category == 5:
            return pick.choice(
                ('{"type":"news"}', '{"type":""}', '{"type":"Trade"}', '{"type":"pong"}')
            ), "unknown_type"
        if category == 6:
            return pick.choice(
                (
                    '{"type":"error","msg":"Invalid symbol"}',
                    '{"type":"error"}',
                    '{"type":"error","msg":5}',
                )
            ), "server_error"
        if pick.integer(0, 2) == 0:
            return '{"type":"ping"}', None
        return pick.choice(
            (
                '{"type":"trade"}',
                '{"type":"trade","data":5}',
                '{"type":"trade","data":{}}',
                '{"type":"trade","data":null}',
            )
        ), "bad_message"


# -- the decoders, fed directly ------------------------------------------------------------


@dataclass
class Outcome:
    """What a decoder made of a batch: bars with their kind, rejections, anything else."""

    bars: list[tuple[str, Bar]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    other: list[object] = field(default_factory=list)


def _alpaca_streaming(now_s: float) -> AlpacaProtocol:
    proto = AlpacaProtocol(KEY, SECRET, SYMBOLS)
    for frame in (
        '[{"T":"success","msg":"connected"}]',
        '[{"T":"success","msg":"authenticated"}]',
        '[{"T":"subscription","bars":["IWM","SPY","QQQ"],"updatedBars":[],"dailyBars":[]}]',
    ):
        proto.receive_frame(frame, now_s)
    proto.events_received()
    assert proto.state == "streaming"
    return proto


def _massive_streaming(now_s: float) -> MassiveProtocol:
    proto = MassiveProtocol("mAsSiVe-KEY-0123456789abcdef", SYMBOLS)
    for status in ("connected", "auth_success", "success"):
        proto.receive_frame(f'[{{"ev":"status","status":"{status}","message":"x"}}]', now_s)
    proto.events_received()
    assert proto.state == "streaming"
    return proto


def _decode(provider: str, frames: Sequence[str | bytes], now_s: float) -> Outcome:
    """Feed `frames` to a fresh decoder of `provider`; any exception escapes (that is a bug)."""
    out = Outcome()
    events: list[object] = []
    if provider == "alpaca":
        alpaca = _alpaca_streaming(now_s)
        for data in frames:
            alpaca.receive_frame(data, now_s)
        events = list(alpaca.events_received())
        assert alpaca.state == "streaming"
    elif provider == "massive":
        massive = _massive_streaming(now_s)
        for data in frames:
            massive.receive_frame(data, now_s)
        events = list(massive.events_received())
        assert massive.state == "streaming"
    else:
        finnhub = FinnhubProtocol(SYMBOLS, MinuteBuilder(2.0), token="fInNhUb-tok3n-0123456789")
        for data in frames:
            finnhub.receive_frame(data, now_s)
        finnhub.tick(now_s)  # closes every minute still open
        events = [e for e in finnhub.events_received() if not isinstance(e, Pinged)]
        bars = [bar for e in events if isinstance(e, FinnhubBars) for bar in e.bars]
        events = [e for e in events if not isinstance(e, FinnhubBars)]
        # Each message's bars are ordered; across messages they close as trades arrive.
        out.bars = [("live", bar) for bar in sorted(bars, key=lambda b: (b.time, b.symbol))]
    for event in events:
        if isinstance(event, Rejection):
            out.reasons[event.reason] += 1
        elif isinstance(event, AlpacaBars):
            out.bars += [(event.kind, bar) for bar in event.bars]
        elif isinstance(event, MassiveBars | FinnhubBars):
            out.bars += [("live", bar) for bar in event.bars]
        else:
            out.other.append(event)
    return out


def _minute_bars(trades: Sequence[Trade]) -> list[tuple[str, Bar]]:
    """The reference model of `MinuteBuilder` for time-ordered trades, ordered by (time, symbol)."""
    forming: dict[tuple[str, int], list[float]] = {}
    for symbol, t, price, volume in trades:
        key = (symbol, t // 60_000 * 60)
        if key not in forming:
            forming[key] = [price, price, price, price, volume]
        else:
            bar = forming[key]
            bar[1], bar[2], bar[3] = max(bar[1], price), min(bar[2], price), price
            bar[4] += volume
    bars = [Bar(sym, minute, *values) for (sym, minute), values in forming.items()]
    return [("live", b) for b in sorted(bars, key=lambda b: (b.time, b.symbol))]


FUZZ_TOTALS: dict[str, Counter[str]] = {}


@pytest.mark.parametrize("provider", ["alpaca", "massive", "finnhub"])
def test_fuzzed_frames_never_crash_a_decoder_and_every_bad_record_is_counted(
    provider: str,
) -> None:
    totals: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        pick = HypothesisPick(data)
        frames = Frames(provider, NOW, T0)
        batch = Batch()
        for _ in range(FRAMES_PER_EXAMPLE):
            frames.frame(pick, batch)
        got = _decode(provider, batch.frames, NOW)
        want = _minute_bars(batch.trades) if provider == "finnhub" else batch.bars
        assert got.other == []
        assert got.bars == want
        assert got.reasons == batch.reasons
        totals["frames"] += len(batch.frames)
        totals["hostile_frames"] += batch.hostile_frames
        totals["rejections"] += sum(got.reasons.values())
        totals["bars"] += len(got.bars)
        totals["valid_trades"] += len(batch.trades)
        totals.update({f"reason:{k}": v for k, v in got.reasons.items()})

    fuzz()
    FUZZ_TOTALS[provider] = totals
    print(f"\n{provider}: {dict(sorted(totals.items()))}")
    assert totals["frames"] >= MIN_FRAMES
    assert totals["rejections"] > totals["frames"] // 2 and totals["bars"] > 0
    # every reason the generator aims at was really produced
    want_reasons = {"bad_json", "too_deep", "bad_field", "non_finite", "non_positive_price",
                    "negative_volume", "bad_time", "future_time", "bad_symbol",
                    "unsubscribed_symbol"}  # fmt: skip
    assert want_reasons <= {k.removeprefix("reason:") for k in totals}


def test_finnhub_volumes_that_overflow_a_minute_are_rejected_not_raised() -> None:
    ms = T0 * 1000
    frame = _obj([("type", '"trade"'), ("data", "[" + ",".join(
        _obj([("s", '"IWM"'), ("p", "10.0"), ("t", str(ms + i)), ("v", "1e308")]) for i in range(3)
    ) + "]")])  # fmt: skip
    got = _decode("finnhub", [frame], NOW)
    assert got.reasons == Counter(non_finite=2)
    assert got.bars == [("live", Bar("IWM", T0, 10.0, 10.0, 10.0, 10.0, 1e308))]


ALPACA_BAD_UTF8 = (
    b'[{"T":"b","S":"I\xffWM","o":1,"h":1,"l":1,"c":1,"v":1,"t":"2024-01-02T14:31:00Z"}]'
)


def test_alpaca_binary_frame_with_invalid_utf8_in_a_string_is_one_rejection() -> None:
    got = _decode("alpaca", [ALPACA_BAD_UTF8], NOW)
    assert got.reasons == Counter(bad_json=1) and got.bars == []


# -- the live feeds, through real local servers ---------------------------------------------


@dataclass
class Wire:
    """How a test reaches a server's current clients."""

    send_raw: Callable[[str | bytes], Awaitable[int]]
    clients: Callable[[], set[ServerConnection]]


OVERSIZE = "[" + " " * MAX_FRAME_BYTES + "]"
BAD_TEXT = b'[{"T":"b","S":"\xff\xfe"}]'


def _live_items(frames: list[str | bytes], pick: RandomPick) -> list[tuple[str, str | bytes]]:
    """The frames with a few oversized and a few non-UTF-8 text frames spread among them."""
    items: list[tuple[str, str | bytes]] = [("frame", f) for f in frames]
    for kind, data in [("oversize", OVERSIZE)] * scale(3, 8) + [("bad_text", BAD_TEXT)] * scale(
        2, 5
    ):
        items.insert(pick.integer(1, len(items)), (kind, data))
    return items


def _backfills(logs: list[MutableMapping[str, object]]) -> int:
    return sum(1 for e in logs if e["event"] in ("feed.backfill", "feed.backfill_failed"))


async def _deliver(
    wire: Wire,
    stats: FeedStats,
    items: list[tuple[str, str | bytes]],
    logs: list[MutableMapping[str, object]] | None,
) -> None:
    """Send each item to the one connected client. After one that kills the session, wait for
    the feed to be back on a new connection and done with its backfill (live bars are held
    back until then, and dropped if the session dies first: the next backfill is meant to
    fetch them, which the local servers cannot for bars they never played)."""
    for kind, data in items:
        if kind == "frame":
            assert await wire.send_raw(data) == 1
            continue
        before = wire.clients()
        assert len(before) == 1
        connects = stats.connects
        if kind == "oversize":
            assert await wire.send_raw(data) == 1
        else:
            for ws in before:
                await ws.send(data, text=True)  # a text frame that is not UTF-8

        def back(connects: int = connects, before: set[ServerConnection] = before) -> bool:
            now = wire.clients()
            return stats.connects == connects + 1 and len(now) == 1 and not now & before

        await wait_until(back, timeout_s=15)
        if logs is not None:
            await wait_until(lambda: _backfills(logs) == stats.reconnects, timeout_s=15)


def _expected_rejections(
    reasons: Counter[str], items: list[tuple[str, str | bytes]]
) -> Counter[str]:
    kinds = Counter(kind for kind, _ in items)
    return reasons + Counter(frame_too_big=kinds["oversize"], bad_utf8=kinds["bad_text"])


LIVE_SUMMARY: dict[str, dict[str, object]] = {}


async def _run_live(
    provider: str,
    feed: AlpacaFeed | MassiveFeed | FinnhubFeed,
    wire: Wire,
    initial: list[tuple[str, Bar]],
    utf8_in_strings: bool = True,
) -> None:
    pick = RandomPick(20_240_102 + len(provider))
    frames = Frames(provider, time.time(), T0 + 3600, utf8_in_strings=utf8_in_strings)
    batch = Batch()
    while len(batch.frames) < LIVE_FRAMES:
        frames.frame(pick, batch)
    items = _live_items(batch.frames, pick)
    sentinel = Batch()
    frames.valid = True
    while not (sentinel.bars or sentinel.trades):
        sentinel.frames = [frames.wrap(pick, [frames.valid_record(pick, sentinel)])]
    if provider == "finnhub":  # a trade in a later minute closes the sentinel's own minute
        closer = Batch()
        frames.ms += 120_000
        sentinel.frames.append(frames.wrap(pick, [frames.valid_record(pick, closer)]))
    assert len(batch.bars) + len(batch.trades) > 50  # valid records really are mixed in
    out_bars: list[tuple[str, Bar]] = []
    with structlog.testing.capture_logs() as logs:
        async with run_feed(feed) as out:
            await wait_until(
                lambda: feed.stats.connected and len(wire.clients()) == 1, timeout_s=10
            )
            if provider != "finnhub":
                await wait_until(lambda: len(out.pairs()) == len(initial), timeout_s=10)
            await _deliver(wire, feed.stats, items, logs)
            for data in sentinel.frames:
                assert await wire.send_raw(data) == 1
            last = sentinel.trades[-1] if sentinel.trades else None
            mark = (
                (last[0], last[1] // 60_000 * 60) if last is not None else
                (sentinel.bars[-1][1].symbol, sentinel.bars[-1][1].time)
            )  # fmt: skip
            await wait_until(lambda: mark in out.pairs(), timeout_s=20)
            await asyncio.sleep(0.1)  # nothing more comes
            out_bars = [(b.kind, bar) for b in out.batches for bar in b.bars]
    if provider == "finnhub":
        want = sorted(
            [*initial, *_minute_bars([*batch.trades, *sentinel.trades])],
            key=lambda kb: (kb[1].time, kb[1].symbol),
        )
        assert sorted(out_bars, key=lambda kb: (kb[1].time, kb[1].symbol)) == want
    else:
        assert out_bars == [*initial, *batch.bars, *sentinel.bars]
    expected = _expected_rejections(batch.reasons, items)
    assert Counter(feed.stats.rejected) == expected
    resets = sum(1 for kind, _ in items if kind != "frame")
    assert feed.stats.connects == 1 + resets and feed.stats.reconnects == resets
    LIVE_SUMMARY[provider] = {
        "frames_sent": len(items) + len(sentinel.frames),
        "rejected": feed.stats.rejected_total,
        "reconnects": feed.stats.reconnects,
    }
    print(f"\n{provider} live: {LIVE_SUMMARY[provider]} {dict(feed.stats.rejected)}")


def _replay_bars(minutes: int) -> list[tuple[str, Bar]]:
    return [
        ("live", Bar(sym, T0 + 60 * i, p, p + 1.0, p - 1.0, p + 0.5, 1000.0 + i))
        for i in range(minutes)
        for sym, p in sorted((s, 100.0 + 50.0 * j + 0.25 * i) for j, s in enumerate(SYMBOLS))
    ]


def _initial_frame(minutes: int) -> list[tuple[str, int, float, float, float, float, float]]:
    return [
        (bar.symbol, bar.time, bar.open, bar.high, bar.low, bar.close, bar.volume)
        for _, bar in _replay_bars(minutes)
    ]


async def test_alpaca_feed_survives_hostile_frames_over_a_real_socket_and_counts_them() -> None:
    rows = _initial_frame(3)
    async with ReplayServer(frame_from_rows(rows)) as server:
        feed = AlpacaFeed(
            KEY, SECRET, SYMBOLS, url=server.url, rest_url=server.rest_url, warmup_s=0.0,
            silence_timeout_s=0.0, is_market_open=never_open, policy=FAST,
            max_frame_bytes=MAX_FRAME_BYTES,
        )  # fmt: skip
        wire = Wire(server.send_raw, lambda: set(server._subscribed))
        await _run_live("alpaca", feed, wire, _replay_bars(3))


async def test_massive_feed_survives_hostile_frames_over_a_real_socket_and_counts_them() -> None:
    rows = _initial_frame(3)
    async with MassiveServer(frame_from_rows(rows)) as server:
        feed = MassiveFeed(
            "mAsSiVe-KEY-0123456789abcdef", SYMBOLS, url=server.url, rest_url=server.rest_url,
            warmup_s=0.0, silence_timeout_s=0.0, is_market_open=never_open, policy=FAST,
            max_frame_bytes=MAX_FRAME_BYTES,
        )  # fmt: skip
        wire = Wire(server.send_raw, lambda: {ws for ws, s in server._clients.items() if s})
        await _run_live("massive", feed, wire, _replay_bars(3))


async def test_finnhub_feed_survives_hostile_frames_over_a_real_socket_and_counts_them() -> None:
    tape = make_tape(1)
    async with FinnhubServer(tape) as server:
        server.rest_unavailable = True  # no backfill: what comes out is what was streamed
        feed = FinnhubFeed(
            "fInNhUb-tok3n-0123456789", SYMBOLS, url=server.url, rest_url=server.rest_url,
            warmup_s=0.0, silence_timeout_s=0.0, is_market_open=never_open, policy=FAST,
            max_frame_bytes=MAX_FRAME_BYTES, flush_interval_s=60.0,
        )  # fmt: skip
        wire = Wire(server.send_raw, lambda: set(server._clients))
        initial = _minute_bars([(s, t, p, v) for s, t, p, v in tape])
        await _run_live("finnhub", feed, wire, initial)


async def test_alpaca_feed_survives_a_binary_frame_with_invalid_utf8_in_a_string() -> None:
    async with ReplayServer(frame_from_rows(_initial_frame(1))) as server:
        feed = AlpacaFeed(
            KEY, SECRET, SYMBOLS, url=server.url, rest_url=server.rest_url, warmup_s=0.0,
            silence_timeout_s=0.0, is_market_open=never_open, policy=FAST,
        )  # fmt: skip
        out: list[object] = []
        task = asyncio.create_task(feed.run(out.append), name="alpaca-under-test")
        try:
            await wait_until(lambda: len(out) >= 1 or task.done(), timeout_s=10)
            assert await server.send_raw(ALPACA_BAD_UTF8) == 1
            good = '[{"T":"b","S":"IWM","o":1,"h":1,"l":1,"c":1,"v":1,"t":"2024-01-02T15:00:00Z"}]'
            await asyncio.sleep(0.2)
            await server.send_raw(good)
            await wait_until(lambda: len(out) >= 2 or task.done(), timeout_s=10)
            died = task.exception() if task.done() and not task.cancelled() else None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert died is None, f"the feed died: {died!r}"
    assert feed.stats.rejected == {"bad_json": 1}


# -- the daemon: hostile frames alone raise no alert ------------------------------------------

ANY_BAR_RULE = """
[[rule]]
name = "any_bar"
operator = "greater_than"
timeframe = "1m"
value = "close"
threshold = 0
sessions = "extended"
"""


async def test_hostile_frames_into_the_daemon_raise_no_alert_and_one_valid_bar_does(
    tmp_path: Path,
) -> None:
    (tmp_path / "rules.toml").write_text(ANY_BAR_RULE)
    async with ReplayServer(frame_from_rows([])) as server:
        path = write_config(
            tmp_path,
            feed=f'url = "{server.url}"\nrest_url = "{server.rest_url}"\n'
            f"max_frame_bytes = {MAX_FRAME_BYTES}",
            rules=tmp_path / "rules.toml",
        )
        config = load_config(path)
        pick = RandomPick(7)
        frames = Frames("alpaca", time.time(), T0, valid=False)
        batch = Batch()
        while len(batch.frames) < scale(300, 1_500):
            frames.frame(pick, batch)
        assert not batch.bars and sum(batch.reasons.values()) > len(batch.frames) // 2
        items = _live_items(batch.frames, pick)
        stop = asyncio.Event()
        ingests: list[Ingest] = []
        seen: dict[str, int] = {}

        async def attack() -> None:
            await wait_until(lambda: bool(ingests) and ingests[0].backend is not None, timeout_s=10)
            backend = ingests[0].backend
            assert backend is not None
            await wait_until(lambda: backend.feed is not None and backend.feed.stats.connected, 10)
            assert backend.feed is not None
            stats = backend.feed.stats
            wire = Wire(server.send_raw, lambda: set(server._subscribed))
            await _deliver(wire, stats, items, None)  # no valid bar: none held back
            expected = _expected_rejections(batch.reasons, items)
            await wait_until(lambda: Counter(stats.rejected) == expected, timeout_s=20)
            await asyncio.sleep(0.2)
            seen["rejected"] = stats.rejected_total
            seen["bars_before"] = ingests[0].stats.bars
            seen["alerts_before"] = ingests[0].stats.alerts_emitted
            good = '[{"T":"b","S":"IWM","o":1,"h":1,"l":1,"c":1,"v":1,"t":"2024-01-02T15:00:00Z"}]'
            assert await server.send_raw(good) == 1
            await wait_until(lambda: ingests[0].stats.alerts_emitted >= 1, timeout_s=10)
            stop.set()

        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(90), asyncio.TaskGroup() as tg:
                tg.create_task(attack())
                stats = await run_daemon(
                    config, Secrets.load(config), stop, realtime=False, on_ingest=ingests.append
                )
    assert seen["rejected"] == sum(_expected_rejections(batch.reasons, items).values())
    assert seen["bars_before"] == 0 and seen["alerts_before"] == 0
    assert stats.bars == 1 and stats.alerts_emitted == 1  # the rule does fire on a valid bar
    assert [e["event"] for e in logs].count("alert.emitted") == 1
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line)["rule"] for line in lines] == ["any_bar"]
    print(f"\ndaemon: {len(items)} hostile frames, {seen['rejected']} rejections, 0 alerts")


# -- config files: one bad key at a time --------------------------------------------------

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config.example.toml"
CONFIG_EXAMPLES = scale(300, 2_000)
TomlValue = str | int | float | bool | list[object] | dict[str, object]
LEAKED = ("Traceback", "msgspec", "ValidationError", "tomllib", "TOMLDecodeError", "$.")


def _base_config() -> dict[str, object]:
    """The example file with every optional section switched on, so all of them get fuzzed."""
    raw: dict[str, object] = tomllib.loads(EXAMPLE_CONFIG.read_text())
    sinks = raw["sinks"]
    engine = raw["engine"]
    assert isinstance(sinks, dict) and isinstance(engine, dict)
    sinks["jsonl"] = {"path": "alerts.jsonl"}
    sinks["mqtt"] = {"url": "mqtt://127.0.0.1:1883", "username": "iwm", "qos": 1}
    sinks["telegram"] = {"access": "allowlist", "allowed_user_ids": [42], "rate_per_chat_s": 1.0}
    engine["symbols"] = {"IWM": {"benchmark": "SPY", "comparator": "QQQ"}}
    return raw


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _to_toml(raw: dict[str, object], prefix: tuple[str, ...] = ()) -> str:
    """TOML text for `raw`: scalars and arrays first, then one `[table]` per sub-table."""
    scalars = [(k, v) for k, v in raw.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in raw.items() if isinstance(v, dict)]
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars]
    text = ""
    if prefix and (lines or not tables):
        text += "[" + ".".join(_toml_key(p) for p in prefix) + "]\n"
    text += "".join(line + "\n" for line in lines)
    for k, v in tables:
        assert isinstance(v, dict)
        text += "\n" + _to_toml(v, (*prefix, k))
    return text


def _key_path(parts: Sequence[str | int]) -> str:
    """The documented key notation: `a.b[0]`, with non-bare keys quoted (`engine.symbols."X.Y"`)."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += f".{name}" if out else name
    return out


def _schema(path: Sequence[str]) -> msgspec.inspect.Type:
    """The declared type at `path` in `Config`, optionals unwrapped."""
    node: msgspec.inspect.Type = msgspec.inspect.type_info(Config)
    for part in path:
        node = _unwrap(node)
        if isinstance(node, msgspec.inspect.StructType):
            node = next(f.type for f in node.fields if f.encode_name == part)
        elif isinstance(node, msgspec.inspect.DictType):
            node = node.value_type
        else:
            raise AssertionError(f"no table at {path}")
    return _unwrap(node)


def _unwrap(node: msgspec.inspect.Type) -> msgspec.inspect.Type:
    if isinstance(node, msgspec.inspect.UnionType):
        arms = [t for t in node.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(arms) == 1:
            return arms[0]
    return node


def _paths(raw: dict[str, object], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key of `raw` (tables and leaves), depth first."""
    out: list[tuple[str, ...]] = []
    for key, value in raw.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += _paths(value, (*prefix, key))
    return out


def _wrong_types(node: msgspec.inspect.Type) -> list[TomlValue]:
    """TOML values msgspec must refuse for `node` (ints are fine where floats are)."""
    table: dict[str, object] = {"zz": 1}
    if isinstance(node, msgspec.inspect.BoolType):
        return ["yes", 1, 0.5, [True], table]
    if isinstance(node, msgspec.inspect.IntType):
        return ["7", True, 2.5, [7], table]
    if isinstance(node, msgspec.inspect.FloatType):
        return ["1.0", False, [1.0], table]
    if isinstance(node, msgspec.inspect.StrType | msgspec.inspect.LiteralType):
        return [7, 2.5, True, ["x"], table]
    if isinstance(node, msgspec.inspect.CustomType):  # Path
        return [7, 2.5, True, ["x"], table, ""]
    if isinstance(node, msgspec.inspect.VarTupleType | msgspec.inspect.ListType):
        return ["x", 7, table]
    if isinstance(node, msgspec.inspect.StructType | msgspec.inspect.DictType):
        return ["x", 7, [1]]
    raise AssertionError(f"unhandled schema node {node}")


def _out_of_range(node: msgspec.inspect.Type) -> list[TomlValue]:
    if isinstance(node, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        bad: list[TomlValue] = []
        if node.gt is not None:
            bad += [node.gt, node.gt - 1]
        if node.ge is not None:
            bad += [node.ge - 1]
        if node.le is not None:
            bad += [node.le + 1, 10**6]
        if isinstance(node, msgspec.inspect.FloatType) and node.gt is not None:
            bad += [-1e300]
        return bad
    if isinstance(node, msgspec.inspect.LiteralType):
        return ["bogus", str(node.values[0]).upper(), ""]
    return []


# Semantic checks a type cannot express: (path, bad value, key the error must name).
SEMANTIC: tuple[tuple[tuple[str, ...], TomlValue, str], ...] = (
    (("feed", "symbols"), ["iwm", "SPY", "QQQ"], "feed.symbols[0]"),
    (("feed", "symbols"), ["IWM", "SPY", "SPY", "QQQ"], "feed.symbols[2]"),
    (("feed", "symbols"), ["IWM", "SPY", "QQQ", "A" * 11], "feed.symbols[3]"),
    (("feed", "symbols"), [], "feed.symbols"),
    (("rates", "url"), "ftp://example.com/x.csv", "rates.url"),
    (("rates", "url"), "https://exa mple.com", "rates.url"),
    (("rates", "proxy_symbol"), "shy", "rates.proxy_symbol"),
    (("health", "host"), "local host", "health.host"),
    (("engine", "benchmark"), "DIA", "engine.benchmark"),
    (("engine", "comparator"), "qqq", "engine.comparator"),
    (("sinks", "mqtt", "url"), "http://127.0.0.1:1883", "sinks.mqtt.url"),
    (("sinks", "mqtt", "url"), "mqtt://127.0.0.1:99999", "sinks.mqtt.url"),
    (("sinks", "mqtt", "base_topic"), "iwm/#", "sinks.mqtt.base_topic"),
    (("sinks", "telegram", "api_base_url"), "ws://127.0.0.1/bot", "sinks.telegram.api_base_url"),
    (("sinks", "telegram", "allowed_user_ids"), [-5], "sinks.telegram.allowed_user_ids[0]"),
    (("engine", "symbols", "IWM", "benchmark"), "DIA", "engine.symbols.IWM.benchmark"),
)


def _put(raw: dict[str, object], path: Sequence[str], value: object) -> None:
    node = raw
    for part in path[:-1]:
        child = node[part]
        assert isinstance(child, dict)
        node = child
    node[path[-1]] = value


def _check_config_error(path: Path, key: str | None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert info.value.file == path and message.startswith(f"{path}: ")
    assert info.value.key == key, message
    if key is not None:
        assert message.startswith(f"{path}: {key}: ")
    assert not any(word in message for word in LEAKED), message
    return message


def _broken_toml(text: str, pick: Pick) -> str:
    lines = text.splitlines()
    settings_at = [i for i, line in enumerate(lines) if re.match(r"^[a-z_]+ = ", line)]
    i = pick.choice(settings_at)
    kind = pick.integer(0, 5)
    if kind == 0:
        lines[i] = lines[i].replace(" = ", " ", 1)  # no `=`
    elif kind == 1:
        lines.insert(i, lines[i])  # the same key twice
    elif kind == 2:
        lines[i] = lines[i].split(" = ")[0] + ' = "unterminated'
    elif kind == 3:
        lines[i] = lines[i].split(" = ")[0] + " = 01x"
    elif kind == 4:
        lines.insert(i, "[[[feed")
    else:
        lines.insert(i, "[feed]")  # the same table twice
    return "\n".join(lines) + "\n"


def test_fuzzed_config_files_fail_with_the_key_and_file_named(tmp_path: Path) -> None:
    base = _base_config()
    good = tmp_path / "good.toml"
    good.write_text(_to_toml(base))
    load_config(good)  # the base is valid: every failure below is the mutation's
    leaves = _paths(base)
    tables = [()] + [p for p in leaves if isinstance(_lookup(base, p), dict)]
    counts: Counter[str] = Counter()

    @settings(
        max_examples=CONFIG_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        pick = HypothesisPick(data)
        raw = copy.deepcopy(base)
        path = tmp_path / "fuzzed.toml"
        kind = pick.choice(
            ("wrong_type", "wrong_type", "out_of_range", "semantic", "unknown", "toml")
        )
        key: str | None
        if kind == "toml":
            path.write_text(_broken_toml(EXAMPLE_CONFIG.read_text(), pick))
            message = _check_config_error(path, None)
            assert "invalid TOML" in message and "line" in message
            counts[kind] += 1
            return
        if kind == "semantic":
            where, value, key = pick.choice(SEMANTIC)
            _put(raw, where, value)
        elif kind == "unknown":
            table = pick.choice(tables)
            name = data.draw(
                st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
                | st.sampled_from(["with space", "dot.ted", "ünï", "UPPER", "1st"])
            )
            node = _schema(table) if table else msgspec.inspect.type_info(Config)
            here = _lookup(base, table)
            assert isinstance(here, dict)
            known = set(here)
            if isinstance(node, msgspec.inspect.StructType):
                known |= {f.encode_name for f in node.fields}
            if table == ("engine", "weights"):
                known |= set(SIGNALS)
            if name in known:
                counts["skipped"] += 1
                return
            _put(raw, (*table, name), 1)
            key = _key_path([*table, name])
        else:
            where = pick.choice(leaves)
            node = _schema(where)
            candidates = _wrong_types(node) if kind == "wrong_type" else _out_of_range(node)
            if not candidates:
                counts["skipped"] += 1
                return
            value = pick.choice(candidates)
            key = _key_path(where)
            if isinstance(node, msgspec.inspect.VarTupleType) and pick.integer(0, 1):
                value = [7] if not isinstance(node.item_type, msgspec.inspect.IntType) else ["x"]
                key += "[0]"
            _put(raw, where, value)
        path.write_text(_to_toml(raw))
        _check_config_error(path, key)
        counts[kind] += 1

    fuzz()
    print(f"\nconfig cases: {dict(counts)}")
    assert sum(v for k, v in counts.items() if k != "skipped") >= CONFIG_EXAMPLES // 2
    assert all(counts[k] > 0 for k in ("wrong_type", "out_of_range", "semantic", "unknown", "toml"))


def _lookup(raw: dict[str, object], path: Sequence[str]) -> dict[str, object] | object:
    node: object = raw
    for part in path:
        assert isinstance(node, dict)
        node = node[part]
    return node


def test_check_config_exits_non_zero_with_the_key_and_no_traceback(tmp_path: Path) -> None:
    base = _base_config()
    cases: list[tuple[str, str]] = []
    for name, where, value, key in (
        ("type", ("health", "port"), "9108", "health.port"),
        ("unknown", ("sinks", "mqtt", "pasword_file"), "x", "sinks.mqtt.pasword_file"),
        ("range", ("engine", "min_signals"), 99, "engine.min_signals"),
    ):
        raw = copy.deepcopy(base)
        _put(raw, where, value)
        path = tmp_path / f"{name}.toml"
        path.write_text(_to_toml(raw))
        cases.append((str(path), key))
    broken = tmp_path / "broken.toml"
    broken.write_text(
        EXAMPLE_CONFIG.read_text().replace('provider = "alpaca"', 'provider = "alpaca')
    )
    cases.append((str(broken), "invalid TOML"))
    cli = Path(sys.executable).with_name("iwm-alerts")
    procs = [
        subprocess.Popen(
            [str(cli), "check-config", "--config", path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path, _ in cases
    ]
    for proc, (file, needle) in zip(procs, cases, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (out, err)
        assert f"{file}: {needle}" in err and "Traceback" not in err + out, err
        assert err.startswith("iwm-alerts: config error: ") and err.count("\n") == 1, err
