"""Finnhub trades: the websocket protocol (sans-I/O), minute bars built here, the feed.

The protocol, as documented by Finnhub ("Websocket Trades") and seen by its users:

- stream `wss://ws.finnhub.io?token=KEY`; a refused token fails the upgrade
  with HTTP 401; one connection per key;
- the client sends `{"type":"subscribe","symbol":"IWM"}` per symbol; there is
  no confirmation;
- the server sends JSON objects tagged by `"type"`: `trade` with `"data":
  [{"s","p","t","v","c"}]` (symbol, price, epoch ms, volume, conditions; `v`
  = 0 is a price update, not a trade), `ping` heartbeats every minute or two
  that need no answer (they only show the line is alive), and `error` with a
  `msg`.

The REST candle backfill (`FinnhubRest`) lives in `finnhub_rest.py`; its
names are importable from here too.

The stream carries trades, so `MinuteBuilder` makes the bars: a bar closes on
the symbol's first trade of a later minute, or `bar_close_delay_s` after its
minute ends. "After" is read on the stream's own clock while trades flow (the
newest trade time, never ahead of the wall clock), so frames that queued up
while the process was busy do not turn their own trades late; when the line
is quiet, on the wall clock. `FinnhubProtocol` never raises on input.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import msgspec
import structlog
from websockets.exceptions import ConnectionClosed, InvalidURI
from websockets.uri import parse_uri

from daemon.feeds.base import FeedStats
from daemon.feeds.finnhub_rest import DEFAULT_REST_URL, FinnhubRest, parse_candles
from daemon.feeds.finnhub_wire import DETAIL_CHARS, excerpt, scrub
from daemon.feeds.market_hours import xnys_is_open
from daemon.feeds.minute_builder import MinuteBuilder
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
from signals.bar import SYMBOL_PATTERN, Bar

__all__ = [
    "DEFAULT_REST_URL",
    "DEFAULT_STREAM_URL",
    "BarsReceived",
    "Event",
    "FinnhubFeed",
    "FinnhubProtocol",
    "FinnhubRest",
    "Pinged",
    "parse_candles",
    "stream_url",
]

_log = structlog.get_logger(__name__)

DEFAULT_STREAM_URL: Final = "wss://ws.finnhub.io"


@dataclass(frozen=True)
class BarsReceived:
    """Minute bars closed by one message or one timer tick, ordered by (time, symbol)."""

    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class Pinged:
    """The server's heartbeat: the connection is alive."""


Event = BarsReceived | Pinged | Rejection


class _Head(msgspec.Struct):
    type: str


class _Trades(msgspec.Struct):
    data: list[msgspec.Raw]


class _Trade(msgspec.Struct):
    s: str
    p: float
    t: int
    v: float


class _Error(msgspec.Struct):
    msg: str = ""


def _field_problem(exc: msgspec.ValidationError) -> str:
    """A reason for a trade that did not fit its struct."""
    text = str(exc)
    if "`$.t`" in text:
        return "bad_time"
    if "out of range" in text:  # 1e400 and friends: JSON numbers beyond a double
        return "non_finite"
    return "bad_field"


class FinnhubProtocol:
    """The Finnhub trades stream, sans I/O, with the minute bars built from it.

    `data_to_send()` first returns the subscribe messages. Feed each websocket
    message to `receive_frame` and call `tick(now_s)` when none came for a
    while (it closes bars by the wall clock); read `events_received()`.
    `builder` may outlive this object, so a reconnect keeps the minute being
    built. Input never raises: bad input becomes a `Rejection`.
    """

    def __init__(
        self,
        symbols: Iterable[str],
        builder: MinuteBuilder | None = None,
        *,
        max_future_s: float = 300.0,
        token: str = "",
    ) -> None:
        self.symbols = tuple(dict.fromkeys(symbols))
        if not self.symbols:
            raise ValueError("at least one symbol is required")
        self.builder = builder if builder is not None else MinuteBuilder()
        self._symbol_set = frozenset(self.symbols)
        self._max_future_s, self._token = max_future_s, token
        self._stream_s = -math.inf  # the newest trade time seen, epoch seconds
        self._events: list[Event] = []
        self._outgoing = [
            msgspec.json.encode({"type": "subscribe", "symbol": s}).decode() for s in self.symbols
        ]

    def receive_frame(self, data: str | bytes, now_s: float) -> None:
        """Process one websocket message received at wall-clock `now_s` (epoch seconds)."""
        if not is_utf8(data):
            self._reject("bad_json", f"not UTF-8: {excerpt(data)!r}")
            return
        try:
            kind = msgspec.json.decode(data, type=_Head).type
        except msgspec.ValidationError:
            self._reject("not_an_object", excerpt(data))
            return
        except msgspec.DecodeError:
            self._reject("bad_json", excerpt(data))
            return
        except RecursionError:
            self._reject("too_deep", excerpt(data))
            return
        if kind == "trade":
            self._trades(data, now_s)
        elif kind == "ping":
            self._events.append(Pinged())
        elif kind == "error":
            try:
                message = msgspec.json.decode(data, type=_Error).msg
            except (msgspec.DecodeError, RecursionError):
                message = excerpt(data)
            self._reject("server_error", message)
        else:
            self._reject("unknown_type", f"type={kind[:20]!r}")

    def tick(self, now_s: float) -> None:
        """Close the bars whose minute ended `builder.close_delay_s` or more before `now_s`."""
        self._emit(self.builder.flush(now_s))

    def events_received(self) -> list[Event]:
        """Events since the last call, in order."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[str]:
        """Messages to send since the last call, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def _trades(self, data: str | bytes, now_s: float) -> None:
        try:
            items = msgspec.json.decode(data, type=_Trades).data
        except (msgspec.DecodeError, RecursionError) as exc:
            self._reject("bad_message", f"{exc}: {excerpt(data)}")
            return
        closed: list[Bar] = []
        for raw in items:
            result = self._trade(raw, now_s)
            if isinstance(result, Rejection):
                self._reject(result.reason, result.detail)
            elif result is not None:
                closed.append(result)
        closed.extend(self.builder.flush(min(now_s, self._stream_s)))
        self._emit(closed)

    def _trade(self, raw: msgspec.Raw, now_s: float) -> Bar | Rejection | None:
        try:
            trade = msgspec.json.decode(raw, type=_Trade)
        except msgspec.ValidationError as exc:
            return Rejection(_field_problem(exc), f"{exc}: {excerpt(bytes(raw))}")
        except (msgspec.DecodeError, RecursionError):
            return Rejection("bad_message", excerpt(bytes(raw)))
        symbol, price, volume, stamp = trade.s, trade.p, trade.v, trade.t
        name = f"{symbol[:12]!r}"
        if not SYMBOL_PATTERN.fullmatch(symbol):
            return Rejection("bad_symbol", f"{name} is not a symbol")
        if symbol not in self._symbol_set:
            return Rejection("unsubscribed_symbol", f"{name} was not subscribed")
        if not (
            math.isfinite(price) and math.isfinite(volume)
        ):  # msgspec refuses them; belt and braces
            return Rejection("non_finite", f"{name}: price {price!r} volume {volume!r}")
        if price <= 0.0:
            return Rejection("non_positive_price", f"{name}: price {price!r}")
        if volume < 0.0:
            return Rejection("negative_volume", f"{name}: volume {volume!r}")
        if stamp < 0:
            return Rejection("bad_time", f"{name}: time {stamp} ms is before 1970")
        # Compared in ms: `stamp / 1000` overflows a float for a huge int.
        if stamp > (now_s + self._max_future_s) * 1000:
            return Rejection("future_time", f"{name}: time {stamp} ms is ahead of the clock")
        self._stream_s = max(self._stream_s, stamp / 1000)
        return self.builder.add(symbol, stamp, price, volume)

    def _emit(self, bars: list[Bar]) -> None:
        if bars:
            self._events.append(BarsReceived(tuple(sorted(bars, key=lambda b: (b.time, b.symbol)))))

    def _reject(self, reason: str, detail: str) -> None:
        self._events.append(Rejection(reason, scrub(self._token, detail)[:DETAIL_CHARS]))


def stream_url(url: str, token: str) -> str:
    """`url` with `token=...` added to its query: what the websocket connects to. Never log it."""
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), ("token", token)])
    return urlunsplit(parts._replace(query=query))


@dataclass(frozen=True)
class _Settings(StreamSettings):
    """Everything a connection or a backfill needs: the shared settings and the credentials."""

    token: str = field(repr=False)
    flush_interval_s: float

    def scrub(self, text: str) -> str:
        """`text` without the token (a URL in an error message would carry it)."""
        return scrub(self.token, text)


class _FinnhubConnection(WebsocketSession):
    """One websocket session: entering connects and subscribes; `receive` also runs the bar timer."""

    def __init__(self, settings: _Settings, builder: MinuteBuilder) -> None:
        self._s = settings
        self._finnhub = FinnhubProtocol(
            settings.symbols, builder, max_future_s=settings.max_future_s, token=settings.token
        )
        super().__init__(self._finnhub, settings, url=stream_url(settings.url, settings.token))

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        _log.info("feed.subscribed", feed=self._s.name, symbols=list(self._s.symbols))
        return self

    def _streaming(self) -> bool:
        return True  # Finnhub confirms no subscription: streaming once the subscribes are sent

    def _received(self) -> Received:
        bars: list[Bar] = []
        rejected: list[Rejection] = []
        for event in self._finnhub.events_received():
            if isinstance(event, BarsReceived):
                bars.extend(event.bars)
            elif isinstance(event, Rejection):
                rejected.append(event)
        return Received((("live", tuple(bars)),) if bars else (), tuple(rejected))

    async def receive(self) -> Received:
        """The next message's closed bars and rejections, or bars the timer closed.

        Waits at most `flush_interval_s` for a message, then runs the timer; a
        quiet tick with nothing to close waits on (the loop counts every
        return as activity). Raises a `FeedError` when the session ends.
        """
        ws = self._socket()
        while True:
            try:
                async with asyncio.timeout(self._s.flush_interval_s):
                    data = await ws.recv()  # cancelling recv loses nothing
            except TimeoutError:
                self._finnhub.tick(self._s.now())
                data = None
            except ConnectionClosed as exc:
                raise self._translate(exc) from exc
            if data is not None:
                self._finnhub.receive_frame(data, self._s.now())
            received = self._received()
            if data is not None or received.batches:
                return received


class FinnhubFeed(StreamFeed):
    """Finnhub trades as a `Feed`: minute bars built from trades, REST candle backfill.

    `token` is only ever sent to Finnhub; it never appears in a log line, a
    repr or an exception message (the stream URL that carries it is built at
    connect time and scrubbed from errors). A bar closes on its symbol's first
    trade of a later minute, or `bar_close_delay_s` after its minute ends,
    checked every `flush_interval_s` of quiet. The other knobs are
    `AlpacaFeed`'s; `now`, `sleep`, `is_market_open`, `rand` and
    `http_transport` are injectable for tests.
    """

    _settings: _Settings

    def __init__(
        self,
        token: str,
        symbols: Sequence[str],
        *,
        url: str | None = None,
        rest_url: str | None = None,
        bar_close_delay_s: float = 2.0,
        flush_interval_s: float = 1.0,
        max_frame_bytes: int = 1 << 20,
        open_timeout_s: float = 10.0,
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
        name: str = "finnhub",
    ) -> None:
        if not token:
            raise ValueError("the Finnhub token must be non-empty")
        wanted = checked_feed_args(
            symbols,
            max_frame_bytes=max_frame_bytes,
            warmup_s=warmup_s,
            positive={
                "flush_interval_s": flush_interval_s,
                "open_timeout_s": open_timeout_s,
                "http_timeout_s": http_timeout_s,
                "max_future_s": max_future_s,
            },
        )
        stream = url or DEFAULT_STREAM_URL
        try:
            parse_uri(stream_url(stream, "t"))
        except (ValueError, InvalidURI) as exc:
            raise ValueError(f"url must be a ws:// or wss:// URL: {exc}") from None
        self.name = name
        self.stats = FeedStats()
        self._bar_close_delay_s = MinuteBuilder(bar_close_delay_s).close_delay_s  # validates
        self._settings = _Settings(
            name=name,
            url=stream,
            rest_url=rest_url or DEFAULT_REST_URL,
            token=token,
            symbols=wanted,
            max_frame_bytes=max_frame_bytes,
            open_timeout_s=open_timeout_s,
            handshake_timeout_s=open_timeout_s,  # Finnhub confirms nothing: no handshake to wait for
            ping_interval_s=ping_interval_s,
            ping_timeout_s=ping_timeout_s,
            flush_interval_s=flush_interval_s,
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
        # A fresh minute builder per run; within a run the minute being built
        # survives reconnects (the connections share it).
        builder = MinuteBuilder(self._bar_close_delay_s)
        rest = FinnhubRest(
            http,
            token=s.token,
            symbols=s.symbols,
            rest_url=s.rest_url,
            name=s.name,
            now=s.now,
            sleep=s.sleep,
            max_future_s=s.max_future_s,
        )
        return StreamSource(s.name, s.url, lambda: _FinnhubConnection(s, builder), rest.bars)
