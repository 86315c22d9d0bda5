"""Alpaca market data v2: the websocket protocol (sans-I/O) and the feed.

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

The REST backfill (`AlpacaRest`, "Historical bars") lives in `alpaca_rest.py`
and the decoding both share in `alpaca_wire.py`; the REST names are importable
from here too.

`AlpacaProtocol` is fed decoded websocket messages and read for events and
messages to send; it never raises on input: anything that is not a valid bar
comes back as a `Rejection` with a stable reason. `AlpacaFeed` moves bytes
and runs the shared `FeedLoop`.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

import httpx
import msgspec
import structlog

from daemon.feeds.alpaca_rest import (
    DEFAULT_REST_URL,
    AlpacaRest,
    BarsPage,
    parse_bars_page,
    rfc3339,
)
from daemon.feeds.alpaca_wire import (
    DETAIL_CHARS,
    ERROR_MESSAGES,
    ErrorMsg,
    Head,
    StreamBar,
    SubscriptionMsg,
    SuccessMsg,
    bar_or_rejection,
    error_for_code,
    excerpt,
    field_problem,
    scrub,
)
from daemon.feeds.base import (
    FeedKind,
    FeedStats,
)
from daemon.feeds.market_hours import xnys_is_open
from daemon.feeds.reconnect import (
    LoopSettings,
    Received,
    ReconnectPolicy,
    Rejection,
    StreamFeed,
    StreamSettings,
    StreamSource,
    checked_feed_args,
)
from daemon.feeds.wserrors import is_utf8
from daemon.feeds.wssession import WebsocketSession
from signals.bar import Bar, BarRejected

__all__ = [
    "DEFAULT_CHANNELS",
    "DEFAULT_REST_URL",
    "DEFAULT_STREAM_URL",
    "ERROR_MESSAGES",
    "AlpacaFeed",
    "AlpacaProtocol",
    "AlpacaRest",
    "Authenticated",
    "BarsPage",
    "BarsReceived",
    "Channel",
    "Connected",
    "Event",
    "ServerError",
    "State",
    "Stream",
    "Subscribed",
    "error_for_code",
    "parse_bars_page",
    "rfc3339",
]

_log = structlog.get_logger(__name__)

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
        try:
            items = _FAST_FRAME.decode(data)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            return False
        if not items:
            return False
        # Checks over whole columns first (C-level passes), then one Bar per message.
        stamps = self._stamps
        texts = [m.t for m in items]
        for text in set(texts):
            epoch = stamps.get(text)
            if epoch is None:
                epoch = self._learn_stamp(text)
                if epoch is None:
                    return False
            if epoch > now_s + self._max_future_s:
                return False
        if not self._symbol_set.issuperset([m.S for m in items]):
            return False
        try:
            bars = [Bar(m.S, stamps[m.t], m.o, m.h, m.l, m.c, m.v) for m in items]
        except BarRejected:
            return False
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
        return bar_or_rejection(
            msg.symbol,
            msg,
            minute=minute,
            symbols=self._symbol_set,
            now_s=now_s,
            max_future_s=self._max_future_s,
        )

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


@dataclass(frozen=True)
class _Settings(StreamSettings):
    """Everything a connection or a backfill needs: the shared settings and the credentials."""

    key: str = field(repr=False)
    secret: str = field(repr=False)
    channels: tuple[Channel, ...]
    rest_feed: str

    def scrub(self, text: str) -> str:
        """`text` with the credentials replaced by `***` (a server could echo them back)."""
        return scrub(self.key, self.secret, text)


class _AlpacaConnection(WebsocketSession):
    """One websocket session: entering connects, authenticates and subscribes; then `receive`."""

    def __init__(self, settings: _Settings) -> None:
        self._s = settings
        self._alpaca = AlpacaProtocol(
            settings.key,
            settings.secret,
            settings.symbols,
            channels=settings.channels,
            max_future_s=settings.max_future_s,
        )
        super().__init__(self._alpaca, settings)

    def _streaming(self) -> bool:
        return self._alpaca.state == "streaming"

    def _received(self) -> Received:
        batches: list[tuple[FeedKind, tuple[Bar, ...]]] = []
        rejected: list[Rejection] = []
        for event in self._alpaca.events_received():
            if isinstance(event, BarsReceived):
                batches.append((event.kind, event.bars))
            elif isinstance(event, Rejection):
                rejected.append(event)
            elif isinstance(event, ServerError):
                raise error_for_code(self._s.name, event.code, event.message)
            elif isinstance(event, Subscribed):
                self._check_subscription(event)
        return Received(tuple(batches), tuple(rejected))

    def _check_subscription(self, event: Subscribed) -> None:
        granted = {
            "bars": event.bars,
            "updatedBars": event.updated_bars,
            "dailyBars": event.daily_bars,
        }
        missing = {
            channel: sorted(set(self._s.symbols) - set(granted[channel]))
            for channel in self._s.channels
            if "*" not in granted[channel] and set(self._s.symbols) - set(granted[channel])
        }
        if missing:
            _log.warning("feed.subscription_incomplete", feed=self._s.name, missing=missing)
        else:
            _log.info("feed.subscribed", feed=self._s.name, channels=list(self._s.channels))


class AlpacaFeed(StreamFeed):
    """Alpaca market data v2 as a `Feed`: minute, updated and daily bars, REST backfill.

    `key` and `secret` are only ever sent to Alpaca; they never appear in a
    log line, a repr or an exception message. `url` overrides the stream URL
    (proxies, the replay server); `rest_url` the REST base. `max_frame_bytes`
    caps incoming websocket messages (bigger ones close the connection with
    1009, counted as `frame_too_big`). `now`, `sleep`, `is_market_open` and
    `rand` are injectable for tests; `http_transport` swaps httpx's transport.
    """

    _settings: _Settings

    def __init__(
        self,
        key: str,
        secret: str,
        symbols: Sequence[str],
        *,
        stream: Stream = "iex",
        url: str | None = None,
        rest_url: str = DEFAULT_REST_URL,
        channels: Sequence[Channel] = DEFAULT_CHANNELS,
        max_frame_bytes: int = 1 << 20,
        open_timeout_s: float = 10.0,
        handshake_timeout_s: float = 15.0,
        ping_interval_s: float | None = 20.0,
        ping_timeout_s: float | None = 20.0,
        http_timeout_s: float = 30.0,
        silence_timeout_s: float = 180.0,
        warmup_s: float = 3600.0,
        max_future_s: float = 300.0,
        policy: ReconnectPolicy | None = None,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        is_market_open: Callable[[float], bool] = xnys_is_open,
        rand: Callable[[], float] = random.random,
        http_transport: httpx.AsyncBaseTransport | None = None,
        name: str = "alpaca",
    ) -> None:
        if not key or not secret:
            raise ValueError("the Alpaca key and secret must both be non-empty")
        if stream not in ("iex", "sip", "test"):
            raise ValueError(f"stream must be iex, sip or test, got {stream!r}")
        wanted = checked_feed_args(
            symbols,
            max_frame_bytes=max_frame_bytes,
            warmup_s=warmup_s,
            positive={
                "open_timeout_s": open_timeout_s,
                "handshake_timeout_s": handshake_timeout_s,
                "http_timeout_s": http_timeout_s,
                "max_future_s": max_future_s,
            },
        )
        if not channels or not set(channels) <= set(DEFAULT_CHANNELS):
            raise ValueError(f"channels must be a non-empty subset of {DEFAULT_CHANNELS}")
        self.name = name
        self.stats = FeedStats()
        self._settings = _Settings(
            name=name,
            url=url or DEFAULT_STREAM_URL.format(stream=stream),
            rest_url=rest_url,
            key=key,
            secret=secret,
            symbols=wanted,
            channels=tuple(channels),
            rest_feed="sip" if stream == "sip" else "iex",
            max_frame_bytes=max_frame_bytes,
            open_timeout_s=open_timeout_s,
            handshake_timeout_s=handshake_timeout_s,
            ping_interval_s=ping_interval_s,
            ping_timeout_s=ping_timeout_s,
            max_future_s=max_future_s,
            now=now,
            sleep=sleep,
        )
        self._loop = LoopSettings(
            policy=policy or ReconnectPolicy(),
            silence_timeout_s=silence_timeout_s,
            warmup_s=warmup_s,
            http_timeout_s=http_timeout_s,
            http_transport=http_transport,
            now=now,
            sleep=sleep,
            is_market_open=is_market_open,
            rand=rand,
        )

    def _source(self, http: httpx.AsyncClient) -> StreamSource:
        s = self._settings
        rest = AlpacaRest(
            http,
            key=s.key,
            secret=s.secret,
            symbols=s.symbols,
            rest_url=s.rest_url,
            feed=s.rest_feed,
            name=s.name,
            now=s.now,
            sleep=s.sleep,
            max_future_s=s.max_future_s,
        )
        return StreamSource(s.name, s.url, lambda: _AlpacaConnection(s), rest.bars)
