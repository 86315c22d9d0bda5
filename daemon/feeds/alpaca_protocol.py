"""Alpaca market data v2: the websocket protocol, sans I/O.

The protocol, as documented by Alpaca ("WebSocket Stream", "Real-time Stock
Data"):

- stream `wss://stream.data.alpaca.markets/v2/{iex|sip|test}`; every server
  message is a JSON array of objects tagged by `"T"`; control messages
  (`success`, `error`, `subscription`) come alone in their array;
- on connect: `[{"T":"success","msg":"connected"}]`; the client sends
  `{"action":"auth","key":..,"secret":..}` within about 10 s and gets
  `[{"T":"success","msg":"authenticated"}]` or an error such as
  `[{"T":"error","code":402,"msg":"auth failed"}]`;
- `{"action":"subscribe","bars":[..],"updatedBars":[..],"dailyBars":[..]}` is
  answered with the full `[{"T":"subscription",...}]` list;
- bars `{"T":"b"|"u"|"d","S":sym,"o","h","l","c","v","t",("n","vw")}`: `b`
  minute bars, `u` late corrections of a minute bar, `d` the forming daily
  bar; `t` is the bar START, RFC 3339 UTC.

The REST backfill (`AlpacaRest`, "Historical bars") lives in `alpaca_rest.py`,
the decoding both share in `alpaca_wire.py`, and the feed in `alpaca.py`.

`AlpacaProtocol` is fed decoded websocket messages and read for events and
messages to send; it never raises on input: anything that is not a valid bar
comes back as a `Rejection` with a stable reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

import msgspec

from daemon.feeds.alpaca_wire import (
    DETAIL_CHARS,
    ErrorMsg,
    Head,
    StreamBar,
    SubscriptionMsg,
    SuccessMsg,
    bar_or_rejection,
    excerpt,
    field_problem,
    scrub,
)
from daemon.feeds.base import FeedKind
from daemon.feeds.reconnect import Rejection
from daemon.feeds.rejects import BarLimits
from daemon.feeds.wserrors import is_utf8
from signals.bar import Bar, BarRejected

DEFAULT_STREAM_URL: Final = "wss://stream.data.alpaca.markets/v2/{stream}"

Stream = Literal["iex", "sip", "test"]
Channel = Literal["bars", "updatedBars", "dailyBars"]
DEFAULT_CHANNELS: Final[tuple[Channel, ...]] = ("bars", "updatedBars", "dailyBars")

_KINDS: Final[dict[str, FeedKind]] = {"b": "live", "u": "updated", "d": "daily"}
State = Literal["connecting", "authenticating", "subscribing", "streaming", "failed"]


# Events read back from the protocol.


@dataclass(frozen=True)
class Connected:
    """The server greeted us; the auth message is queued."""


@dataclass(frozen=True)
class Authenticated:
    """The server accepted the credentials; the subscribe message is queued."""


@dataclass(frozen=True)
class Subscribed:
    """The server's full list of subscriptions after our subscribe."""

    bars: tuple[str, ...]
    updated_bars: tuple[str, ...]
    daily_bars: tuple[str, ...]


@dataclass(frozen=True)
class BarsReceived:
    """Validated bars of one kind from one message, in order."""

    kind: FeedKind
    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class ServerError:
    """The server sent `{"T":"error"}`: the session is over. `message` is scrubbed of secrets."""

    code: int
    message: str


Event = Connected | Authenticated | Subscribed | BarsReceived | Rejection | ServerError


class _FastMinute(msgspec.Struct, tag_field="T", tag="b"):
    """A bar message as the fast path decodes it: the time stays text (see `_fast_bars`)."""

    S: str
    o: float
    h: float
    l: float  # noqa: E741 (Alpaca's field name)
    c: float
    v: float
    t: str


class _FastUpdated(_FastMinute, tag="u"):
    pass


class _FastDaily(_FastMinute, tag="d"):
    pass


_FAST_FRAME: Final = msgspec.json.Decoder(list[_FastMinute | _FastUpdated | _FastDaily])
_FAST_KINDS: Final[dict[type, FeedKind]] = {
    _FastMinute: "live",
    _FastUpdated: "updated",
    _FastDaily: "daily",
}
_STAMP_CACHE_MAX = 4096


class AlpacaProtocol:
    """The Alpaca v2 stream protocol, sans I/O.

    Feed each websocket message to `receive_frame`; read `events_received()`
    and send what `data_to_send()` returns, as text frames, in order. States:
    connecting -> authenticating -> subscribing -> streaming, or failed after
    a server error. Input never raises: bad input becomes a `Rejection` event.
    """

    def __init__(
        self,
        key: str,
        secret: str,
        symbols: Iterable[str],
        *,
        channels: Iterable[Channel] = DEFAULT_CHANNELS,
        max_future_s: float = 300.0,
    ) -> None:
        self.symbols = tuple(dict.fromkeys(symbols))
        if not self.symbols:
            raise ValueError("at least one symbol is required")
        chosen = tuple(dict.fromkeys(channels))
        if not chosen or not set(chosen) <= set(DEFAULT_CHANNELS):
            raise ValueError(f"channels must be a non-empty subset of {DEFAULT_CHANNELS}")
        self._symbol_set = frozenset(self.symbols)
        self._max_future_s = max_future_s
        self._key, self._secret = key, secret
        self._auth = msgspec.json.encode({"action": "auth", "key": key, "secret": secret}).decode()
        subscribe: dict[str, object] = {"action": "subscribe"}
        subscribe.update({channel: list(self.symbols) for channel in chosen})
        self._subscribe = msgspec.json.encode(subscribe).decode()
        self.state: State = "connecting"
        self._events: list[Event] = []
        self._outgoing: list[str] = []
        self._stamps: dict[str, int] = {}  # minute-aligned time texts already parsed

    def receive_frame(self, data: str | bytes, now_s: float) -> None:
        """Process one websocket message received at wall-clock `now_s` (epoch seconds)."""
        if self.state == "streaming" and self._fast_bars(data, now_s):
            return
        if not is_utf8(data):  # msgspec would raise UnicodeDecodeError deep in a message
            self._reject("bad_json", f"not UTF-8: {excerpt(data)}")
            return
        try:
            items = msgspec.json.decode(data, type=list[msgspec.Raw])
        except msgspec.ValidationError:
            self._reject("not_a_list", excerpt(data))
            return
        except msgspec.DecodeError:
            self._reject("bad_json", excerpt(data))
            return
        except RecursionError:
            self._reject("too_deep", excerpt(data))
            return
        pending: list[tuple[FeedKind, list[Bar]]] = []
        for raw in items:
            self._message(raw, now_s, pending)
        self._flush(pending)

    def _fast_bars(self, data: str | bytes, now_s: float) -> bool:
        """The hot path: a frame of nothing but good bars, decoded in one pass.

        Any surprise (another message type, a bad field, a time not seen before
        that fails its checks, a rejected or unsubscribed bar) returns False
        before anything is emitted, and the frame goes through the full path,
        which says exactly what was wrong. The results are the same either way.
        """
        decoded = self._fast_decode(data, now_s)
        if decoded is None:
            return False
        items, bars = decoded
        kinds = set(map(type, items))
        if len(kinds) == 1:  # the usual frame: bars of one kind
            self._events.append(BarsReceived(_FAST_KINDS[kinds.pop()], tuple(bars)))
            return True
        pending: list[tuple[FeedKind, list[Bar]]] = []
        for m, bar in zip(items, bars, strict=True):
            kind = _FAST_KINDS[type(m)]
            if pending and pending[-1][0] == kind:
                pending[-1][1].append(bar)
            else:
                pending.append((kind, [bar]))
        self._flush(pending)
        return True

    def _fast_decode(
        self, data: str | bytes, now_s: float
    ) -> tuple[list[_FastMinute], list[Bar]] | None:
        """The frame's messages and their bars, or None at the first surprise."""
        try:
            items = _FAST_FRAME.decode(data)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            return None
        if not items:
            return None
        # Checks over whole columns first (C-level passes), then one Bar per message.
        if not self._stamps_known({m.t for m in items}, now_s):
            return None
        if not self._symbol_set.issuperset([m.S for m in items]):
            return None
        stamps = self._stamps
        try:
            return items, [Bar(m.S, stamps[m.t], m.o, m.h, m.l, m.c, m.v) for m in items]
        except BarRejected:
            return None

    def _stamps_known(self, texts: set[str], now_s: float) -> bool:
        """Whether every time text is a minute-aligned UTC time not ahead of the clock
        (each one parsed once and remembered)."""
        stamps = self._stamps
        for text in texts:
            epoch = stamps.get(text)
            if epoch is None:
                epoch = self._learn_stamp(text)
                if epoch is None:
                    return False
            if epoch > now_s + self._max_future_s:
                return False
        return True

    def _learn_stamp(self, text: str) -> int | None:
        """The epoch of a minute-aligned UTC time text, remembered; None if it is anything else."""
        try:
            stamp = msgspec.convert(text, datetime)
            epoch = math.floor(stamp.timestamp())
        except (msgspec.ValidationError, OverflowError, ValueError):
            return None
        if stamp.tzinfo is None or stamp.microsecond or epoch % 60 or epoch < 0:
            return None
        if len(self._stamps) >= _STAMP_CACHE_MAX:
            self._stamps.clear()
        self._stamps[text] = epoch
        return epoch

    def events_received(self) -> list[Event]:
        """Events since the last call, in order."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[str]:
        """Messages to send since the last call, in order. They carry credentials: never log them."""
        out, self._outgoing = self._outgoing, []
        return out

    def _message(
        self, raw: msgspec.Raw, now_s: float, pending: list[tuple[FeedKind, list[Bar]]]
    ) -> None:
        try:
            kind = msgspec.json.decode(raw, type=Head).T
        except (msgspec.DecodeError, RecursionError):
            self._reject("bad_message", excerpt(bytes(raw)))
            return
        if kind in _KINDS:
            result = self._bar(raw, minute=kind != "d", now_s=now_s)
            if isinstance(result, Rejection):
                self._events.append(result)
                return
            feed_kind = _KINDS[kind]
            if pending and pending[-1][0] == feed_kind:
                pending[-1][1].append(result)
            else:
                pending.append((feed_kind, [result]))
            return
        self._flush(pending)  # keep bars and control events in arrival order
        if kind == "success":
            self._success(raw)
        elif kind == "subscription":
            self._subscription(raw)
        elif kind == "error":
            self._error(raw)
        else:
            self._reject("unknown_type", f"T={self._scrub(kind)[:20]!r}")

    def _bar(self, raw: msgspec.Raw, *, minute: bool, now_s: float) -> Bar | Rejection:
        if self.state != "streaming":
            return Rejection(
                "unexpected_message", f"bar before subscription: {excerpt(bytes(raw))}"
            )
        try:
            msg = msgspec.json.decode(raw, type=StreamBar)
        except msgspec.ValidationError as exc:
            return Rejection(field_problem(exc), f"{exc}: {self._scrub(excerpt(bytes(raw)))}")
        except (msgspec.DecodeError, RecursionError):
            return Rejection("bad_message", self._scrub(excerpt(bytes(raw))))
        limits = BarLimits(self._symbol_set, now_s, self._max_future_s)
        return bar_or_rejection(msg.symbol, msg, minute=minute, limits=limits)

    def _success(self, raw: msgspec.Raw) -> None:
        try:
            msg = msgspec.json.decode(raw, type=SuccessMsg).msg
        except (msgspec.DecodeError, RecursionError):
            self._reject("bad_message", self._scrub(excerpt(bytes(raw))))
            return
        if msg == "connected" and self.state == "connecting":
            self.state = "authenticating"
            self._outgoing.append(self._auth)
            self._events.append(Connected())
        elif msg == "authenticated" and self.state == "authenticating":
            self.state = "subscribing"
            self._outgoing.append(self._subscribe)
            self._events.append(Authenticated())
        else:
            self._reject("unexpected_message", f"success {self._scrub(msg)[:40]!r} in {self.state}")

    def _subscription(self, raw: msgspec.Raw) -> None:
        try:
            sub = msgspec.json.decode(raw, type=SubscriptionMsg)
        except (msgspec.DecodeError, RecursionError):
            self._reject("bad_message", self._scrub(excerpt(bytes(raw))))
            return
        if self.state not in ("subscribing", "streaming"):
            self._reject("unexpected_message", f"subscription in {self.state}")
            return
        self.state = "streaming"
        self._events.append(Subscribed(tuple(sub.bars), tuple(sub.updated), tuple(sub.daily)))

    def _error(self, raw: msgspec.Raw) -> None:
        try:
            err = msgspec.json.decode(raw, type=ErrorMsg)
        except (msgspec.DecodeError, RecursionError):
            self._reject("bad_message", self._scrub(excerpt(bytes(raw))))
            return
        self.state = "failed"
        self._events.append(ServerError(err.code, self._scrub(err.msg)[:DETAIL_CHARS]))

    def _flush(self, pending: list[tuple[FeedKind, list[Bar]]]) -> None:
        self._events.extend(BarsReceived(kind, tuple(bars)) for kind, bars in pending)
        pending.clear()

    def _reject(self, reason: str, detail: str) -> None:
        self._events.append(Rejection(reason, self._scrub(detail)))

    def _scrub(self, text: str) -> str:
        return scrub(self._key, self._secret, text)
