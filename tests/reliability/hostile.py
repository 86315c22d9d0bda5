"""Hostile feed frames with their expected outcome, shared by the hostile-input suites.

`Frames` writes frames for one provider (Alpaca, Massive, Finnhub) as they
leave the socket (`str` for text frames, `bytes` for binary ones): wrong
types, NaN/Infinity as JSON tokens and as strings, 1e400 and 10**30-sized
numbers, zero and negative prices and volumes, high < low, 10,000-deep
nesting, invalid UTF-8, malformed, pre-1970 and far-future times, bad
symbols, with valid records mixed in. It knows what each record must become
(a `Batch`: the bars, and one rejection reason per invalid record), so the
suites can assert exactly. Its choices come from a `Pick`: hypothesis draws
(shrinkable) or a seeded random, for frames sent over real sockets.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Protocol, TypeVar

from hypothesis import strategies as st

from signals.bar import Bar

T = TypeVar("T")

T0 = 1_704_205_800  # 2024-01-02 14:30 UTC
SYMBOLS = ("IWM", "SPY", "QQQ")
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


def obj(fields: Sequence[tuple[str, str]]) -> str:
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
            text = obj([("type", '"trade"'), ("data", "[" + ",".join(records) + "]")])
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
            return obj(fields)
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
        return obj(fields)

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
            return obj(
                _set(fields, pick.choice(("o", "h", "l", "c", "v")), pick.choice(WRONG_TYPES))
            ), "bad_field"
        if category == 1:
            return obj(_set(fields, sym, pick.choice(("5", "null", '["IWM"]', "{}")))), "bad_field"
        if category == 2:
            return obj(
                _drop(fields, pick.choice((sym, "o", "h", "l", "c", "v", when)))
            ), "bad_field"
        if category == 3:
            return obj(
                _set(fields, pick.choice(("o", "h", "l", "c", "v")), pick.choice(NON_FINITE))
            ), "non_finite"
        if category == 4:
            return obj(_set(fields, price_field, pick.choice(NON_POSITIVE))), "non_positive_price"
        if category == 5:
            return obj(_set(fields, "v", pick.choice(NEGATIVE_VOLUME))), "negative_volume"
        if category == 6:
            floor = float(dict(fields)["l"])
            below = pick.choice((_num(floor / 2), _num(floor * 0.999)))
            swapped = _set(_set(fields, "h", below), "l", pick.choice((_num(floor), str(10**30))))
            return obj(swapped), "high_below_low"
        if category == 7:
            high, low = float(dict(fields)["h"]), float(dict(fields)["l"])
            which, value = pick.choice(
                (("o", high * 2), ("c", high * 2), ("o", low / 2), ("c", low / 2))
            )
            return obj(_set(fields, which, _num(value))), "open_close_outside_range"
        if category == 8:
            return obj(_set(fields, when, pick.choice(self.bad_times()))), "bad_time"
        if category == 9:
            return obj(_set(fields, when, pick.choice(self.future_times()))), "future_time"
        if category == 10:
            return obj(_set(fields, sym, pick.choice(BAD_SYMBOLS))), "bad_symbol"
        if category == 11:
            return obj(_set(fields, sym, pick.choice(UNSUBSCRIBED))), "unsubscribed_symbol"
        if category == 12:
            return pick.choice(
                ("5", '"b"', "null", "[]", '[{"T":"b"}]', "true", "1e400", "-7")
            ), "bad_message"
        if category == 13:
            other = pick.choice(
                ("{}", obj([(sym, '"IWM"')]), obj([(tag, "5")]), obj([(tag, "null")]))
            )
            return other, "bad_message"
        if category == 14:
            unknown = (
                ('"Q"', '"A"', '"am"', '""', '"T"')
                if massive
                else ('"q"', '"t"', '"bb"', '""', '"B"', '"trades"')
            )
            return obj([(tag, pick.choice(unknown)), *fields[1:]]), "unknown_type"
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
            return obj(_set(fields, pick.choice(("p", "v")), pick.choice(WRONG_TYPES))), "bad_field"
        if category == 1:
            return obj(_set(fields, "s", pick.choice(("5", "null", '["IWM"]', "{}")))), "bad_field"
        if category == 2:
            return obj(_drop(fields, pick.choice(("s", "p", "t", "v")))), "bad_field"
        if category == 3:
            return pick.choice(("5", '"x"', "null", "[]", "true")), "bad_field"
        if category == 4:
            return obj(_set(fields, pick.choice(("p", "v")), pick.choice(NON_FINITE))), "non_finite"
        if category == 5:
            return obj(_set(fields, "p", pick.choice(NON_POSITIVE))), "non_positive_price"
        if category == 6:
            return obj(_set(fields, "v", pick.choice(NEGATIVE_VOLUME))), "negative_volume"
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
            return obj(_set(fields, "t", pick.choice(bad))), "bad_time"
        if category == 8:
            future = (str(self.future_ms), str(10**30), str(10**400))
            return obj(_set(fields, "t", pick.choice(future))), "future_time"
        if category == 9:
            return obj(_set(fields, "s", pick.choice(BAD_SYMBOLS))), "bad_symbol"
        if category == 10:
            return obj(_set(fields, "s", pick.choice(UNSUBSCRIBED))), "unsubscribed_symbol"
        if category == 11:
            return obj(_set(fields, "p", pick.choice(("0", "-5")))), "non_positive_price"
        return obj(_set(fields, "v", "-1e-9")), "negative_volume"

    # Whole frames that are hostile as a whole: one rejection each (None: a harmless frame).

    def hostile_frame(self, pick: Pick) -> tuple[str | bytes, str | None]:
        finnhub = self.provider == "finnhub"
        category = pick.integer(0, 7)
        record = obj([*self.base(pick), ("v", "100")] if finnhub else self.base(pick))
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


def minute_bars(trades: Sequence[Trade]) -> list[tuple[str, Bar]]:
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


ALPACA_BAD_UTF8 = (
    b'[{"T":"b","S":"I\xffWM","o":1,"h":1,"l":1,"c":1,"v":1,"t":"2024-01-02T14:31:00Z"}]'
)
