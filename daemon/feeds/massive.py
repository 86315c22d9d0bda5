"""Massive (formerly Polygon.io) stocks: the websocket protocol (sans-I/O) and the feed.

The protocol, as documented by Massive ("WebSocket / Stocks / Aggregates (Per
Minute)") and spoken by Polygon's clients:

- stream `wss://socket.massive.com/stocks` (real time) or
  `wss://delayed.massive.com/stocks` (15 min delayed); every server message is
  a JSON array of objects tagged by `"ev"`;
- on connect a status greeting: `[{"ev":"status","status":"connected",...}]`
  on the wire, `"status":"success","message":"Connected Successfully"` in
  Massive's AsyncAPI spec; any status that is not a failure greets. The client
  sends `{"action":"auth","params":KEY}` and gets `status` `auth_success` (older
  servers: `success` / "authenticated") or `auth_failed`; `auth_timeout` if it
  waits too long; `max_connections` ("Maximum number of websocket connections
  exceeded") before the server closes with 1008, as the connection quota is per
  account;
- `{"action":"subscribe","params":"AM.IWM,AM.SPY"}` is confirmed per channel
  with `status` `success`, "subscribed to: AM.IWM";
- minute aggregates `{"ev":"AM","sym","v","av","op","vw","o","c","h","l","a",
  "z","s","e"}` with `s`/`e` the window start/end in epoch milliseconds.

The REST backfill (`MassiveRest`, "REST / Stocks / Custom Bars") lives in
`massive_rest.py`; its names are importable from here too.

`MassiveProtocol` never raises on input: what is not a valid bar becomes a
`Rejection` with the same reasons as the Alpaca adapter. Rejections during the
handshake count in the feed's stats like any other, even when the handshake
then fails or times out.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Self

import httpx
import msgspec
import structlog
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from daemon.feeds.base import (
    FeedAuthFailed,
    FeedError,
    FeedStats,
    FeedThrottled,
    FeedUnavailable,
)
from daemon.feeds.market_hours import xnys_is_open
from daemon.feeds.massive_rest import DEFAULT_REST_URL, AggsPage, MassiveRest, parse_aggs_page
from daemon.feeds.massive_wire import DETAIL_CHARS, excerpt, field_problem, minute_bar, scrub
from daemon.feeds.reconnect import (
    LoopSettings,
    Received,
    ReconnectPolicy,
    Rejection,
    RejectLog,
    StreamFeed,
    StreamSettings,
    StreamSource,
    checked_feed_args,
)
from daemon.feeds.wserrors import is_utf8
from daemon.feeds.wssession import WebsocketSession
from signals.bar import Bar

__all__ = [
    "DEFAULT_REST_URL",
    "DEFAULT_STREAM_URL",
    "DELAYED_STREAM_URL",
    "AggsPage",
    "Authenticated",
    "BarsReceived",
    "Connected",
    "Event",
    "MassiveFeed",
    "MassiveProtocol",
    "MassiveRest",
    "ServerStatus",
    "State",
    "Subscribed",
    "error_for_status",
    "parse_aggs_page",
]

_log = structlog.get_logger(__name__)

DEFAULT_STREAM_URL: Final = "wss://socket.massive.com/stocks"
DELAYED_STREAM_URL: Final = "wss://delayed.massive.com/stocks"

State = Literal["connecting", "authenticating", "subscribing", "streaming", "failed"]


@dataclass(frozen=True)
class Connected:
    """The server greeted us (any non-failure status); the auth message is queued."""


@dataclass(frozen=True)
class Authenticated:
    """The key was accepted; the subscribe message is queued."""


@dataclass(frozen=True)
class Subscribed:
    """The server confirmed a subscription ("subscribed to: AM.IWM")."""

    message: str


@dataclass(frozen=True)
class BarsReceived:
    """Validated minute bars from one message, in order."""

    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class ServerStatus:
    """A status that ends the session (`auth_failed`, `max_connections`...); scrubbed of secrets."""

    status: str
    message: str


Event = Connected | Authenticated | Subscribed | BarsReceived | ServerStatus | Rejection

_FAILURES: Final = frozenset({"auth_failed", "auth_timeout", "max_connections", "error"})


class _Head(msgspec.Struct):
    ev: str


class _Status(msgspec.Struct):
    status: str
    message: str = ""


class _Agg(msgspec.Struct):
    sym: str
    o: float
    h: float
    l: float  # noqa: E741 - the wire name
    c: float
    v: float
    s: int


class MassiveProtocol:
    """The Massive stocks stream protocol, sans I/O.

    Feed each websocket message to `receive_frame`; read `events_received()`
    and send what `data_to_send()` returns, as text frames, in order. States:
    connecting -> authenticating -> subscribing -> streaming, or failed after
    a failure status. The first status that is not a failure is the greeting,
    whatever it says (`connected`, or `success` as Massive's spec has it).
    Input never raises: bad input becomes a `Rejection`.
    """

    def __init__(
        self, api_key: str, symbols: Iterable[str], *, max_future_s: float = 300.0
    ) -> None:
        self.symbols = tuple(dict.fromkeys(symbols))
        if not self.symbols:
            raise ValueError("at least one symbol is required")
        self._symbol_set = frozenset(self.symbols)
        self._key, self._max_future_s = api_key, max_future_s
        self._auth = msgspec.json.encode({"action": "auth", "params": api_key}).decode()
        params = ",".join(f"AM.{s}" for s in self.symbols)
        self._subscribe = msgspec.json.encode({"action": "subscribe", "params": params}).decode()
        self.state: State = "connecting"
        self._events: list[Event] = []
        self._outgoing: list[str] = []

    def receive_frame(self, data: str | bytes, now_s: float) -> None:
        """Process one websocket message received at wall-clock `now_s` (epoch seconds)."""
        if not is_utf8(data):
            self._reject("bad_json", f"not UTF-8: {excerpt(data)!r}")
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
        pending: list[Bar] = []
        for raw in items:
            self._message(raw, now_s, pending)
        self._flush(pending)

    def events_received(self) -> list[Event]:
        """Events since the last call, in order."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[str]:
        """Messages to send since the last call, in order. They carry the key: never log them."""
        out, self._outgoing = self._outgoing, []
        return out

    def _message(self, raw: msgspec.Raw, now_s: float, pending: list[Bar]) -> None:
        try:
            ev = msgspec.json.decode(raw, type=_Head).ev
        except (msgspec.DecodeError, RecursionError):
            self._reject("bad_message", excerpt(bytes(raw)))
            return
        if ev == "AM":
            result = self._bar(raw, now_s)
            if isinstance(result, Rejection):
                self._reject(result.reason, result.detail)
            else:
                pending.append(result)
            return
        self._flush(pending)  # keep bars and control events in arrival order
        if ev == "status":
            self._status(raw)
        else:
            self._reject("unknown_type", f"ev={self._scrub(ev)[:20]!r}")

    def _bar(self, raw: msgspec.Raw, now_s: float) -> Bar | Rejection:
        if self.state != "streaming":
            return Rejection("unexpected_message", f"bar before subscription: {self._raw(raw)}")
        try:
            m = msgspec.json.decode(raw, type=_Agg)
        except msgspec.ValidationError as exc:
            return Rejection(field_problem(exc, "s"), f"{exc}: {self._raw(raw)}")
        except (msgspec.DecodeError, RecursionError):
            return Rejection("bad_message", self._raw(raw))
        return minute_bar(
            m.sym,
            m.s,
            (m.o, m.h, m.l, m.c, m.v),
            symbols=self._symbol_set,
            now_s=now_s,
            max_future_s=self._max_future_s,
        )

    def _status(self, raw: msgspec.Raw) -> None:
        try:
            msg = msgspec.json.decode(raw, type=_Status)
        except (msgspec.DecodeError, RecursionError):
            self._reject("bad_message", self._raw(raw))
            return
        status, text = msg.status, self._scrub(msg.message)[:DETAIL_CHARS]
        if status in _FAILURES or status.endswith("_failed"):
            if status == "error" and self.state == "authenticating":
                status = "auth_failed"  # how older servers refused a key
            self.state = "failed"
            self._events.append(ServerStatus(self._scrub(status)[:40], text))
        elif self.state == "connecting":
            self.state = "authenticating"
            self._outgoing.append(self._auth)
            self._events.append(Connected())
        elif self.state == "authenticating" and (
            status == "auth_success" or (status == "success" and text == "authenticated")
        ):
            self.state = "subscribing"
            self._outgoing.append(self._subscribe)
            self._events.append(Authenticated())
        elif status == "success" and self.state in ("subscribing", "streaming"):
            self.state = "streaming"
            self._events.append(Subscribed(text))
        else:
            self._reject(
                "unexpected_message", f"status {self._scrub(status)[:40]!r} in {self.state}"
            )

    def _flush(self, pending: list[Bar]) -> None:
        if pending:
            self._events.append(BarsReceived(tuple(pending)))
            pending.clear()

    def _raw(self, raw: msgspec.Raw) -> str:
        return self._scrub(excerpt(bytes(raw)))

    def _reject(self, reason: str, detail: str) -> None:
        self._events.append(Rejection(reason, self._scrub(detail)))

    def _scrub(self, text: str) -> str:
        return scrub(self._key, text)


def error_for_status(feed: str, status: str, message: str) -> FeedError:
    """The feed error a failure status means: what the reconnect loop must do."""
    detail = f"server status {status} ({message or 'no message'})"
    if status == "auth_failed":  # a few retries (key being rotated), then fatal
        return FeedAuthFailed(feed, detail)
    if status == "max_connections":  # another session holds the account's one slot
        return FeedThrottled(feed, detail)
    return FeedUnavailable(feed, detail)  # auth_timeout, error, *_failed: reconnect afresh


@dataclass(frozen=True)
class _Settings(StreamSettings):
    """Everything a connection or a backfill needs: the shared settings and the credentials."""

    api_key: str = field(repr=False)

    def scrub(self, text: str) -> str:
        """`text` without the key (a server could echo it back)."""
        return scrub(self.api_key, text)


class _MassiveConnection(WebsocketSession):
    """One websocket session: entering connects, authenticates and subscribes; then `receive`.

    Rejections while entering (the handshake) go straight to `handshake_rejects`, which
    counts them in the feed's stats: a handshake that fails or times out never hands its
    messages to the loop. So do rejections in a message that also carries a failure status.
    """

    def __init__(self, settings: _Settings, handshake_rejects: RejectLog) -> None:
        self._s = settings
        self._massive = MassiveProtocol(
            settings.api_key, settings.symbols, max_future_s=settings.max_future_s
        )
        self._handshake_rejects = handshake_rejects
        self._entered = False
        super().__init__(self._massive, settings)

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self._entered = True
        return self

    def _streaming(self) -> bool:
        return self._massive.state == "streaming"

    def _received(self) -> Received:
        bars: list[Bar] = []
        rejected: list[Rejection] = []
        for event in self._massive.events_received():
            if isinstance(event, BarsReceived):
                bars.extend(event.bars)
            elif isinstance(event, Rejection):
                rejected.append(event)
            elif isinstance(event, ServerStatus):
                self._count(rejected)
                raise error_for_status(self._s.name, event.status, event.message)
            elif isinstance(event, Subscribed):
                _log.info("feed.subscribed", feed=self._s.name, message=event.message)
        if not self._entered:
            self._count(rejected)
            rejected = []
        return Received((("live", tuple(bars)),) if bars else (), tuple(rejected))

    def _count(self, rejected: list[Rejection]) -> None:
        for rejection in rejected:
            self._handshake_rejects.record(rejection.reason, rejection.detail)


class MassiveFeed(StreamFeed):
    """Massive (Polygon) stocks as a `Feed`: `AM.*` minute aggregates, REST backfill.

    `api_key` is only ever sent to Massive; it never appears in a log line, a
    repr or an exception message. `url` overrides the stream URL (default the
    real-time cluster, or the delayed one with `delayed=True`); `rest_url` the
    REST base. The other knobs are `AlpacaFeed`'s: `max_frame_bytes` caps
    incoming messages (bigger ones close with 1009, counted as
    `frame_too_big`); `now`, `sleep`, `is_market_open`, `rand` and
    `http_transport` are injectable for tests.
    """

    _settings: _Settings

    def __init__(
        self,
        api_key: str,
        symbols: Sequence[str],
        *,
        url: str | None = None,
        rest_url: str | None = None,
        delayed: bool = False,
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
        name: str = "massive",
    ) -> None:
        if not api_key:
            raise ValueError("the Massive API key must be non-empty")
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
        stream = url or (DELAYED_STREAM_URL if delayed else DEFAULT_STREAM_URL)
        try:
            parse_uri(stream)
        except (ValueError, InvalidURI) as exc:
            raise ValueError(f"url must be a ws:// or wss:// URL: {exc}") from None
        self.name = name
        self.stats = FeedStats()
        self._settings = _Settings(
            name=name,
            url=stream,
            rest_url=rest_url or DEFAULT_REST_URL,
            api_key=api_key,
            symbols=wanted,
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
        rest = MassiveRest(
            http,
            api_key=s.api_key,
            symbols=s.symbols,
            rest_url=s.rest_url,
            name=s.name,
            now=s.now,
            sleep=s.sleep,
            max_future_s=s.max_future_s,
        )
        rejects = RejectLog(s.name, self.stats, self._loop.policy.reject_log_interval_s, s.now)
        return StreamSource(s.name, s.url, lambda: _MassiveConnection(s, rejects), rest.bars)
