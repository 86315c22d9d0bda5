"""Finnhub trades: the websocket protocol (sans-I/O), minute bars built here, the REST backfill, the feed.

The protocol, as documented by Finnhub ("Websocket Trades") and seen by its users:

- stream `wss://ws.finnhub.io?token=KEY`; a refused token fails the upgrade
  with HTTP 401; one connection per key;
- the client sends `{"type":"subscribe","symbol":"IWM"}` per symbol; there is
  no confirmation;
- the server sends JSON objects tagged by `"type"`: `trade` with `"data":
  [{"s","p","t","v","c"}]` (symbol, price, epoch ms, volume, conditions; `v`
  = 0 is a price update, not a trade), `ping` heartbeats every minute or two
  that need no answer (they only show the line is alive), and `error` with a
  `msg`;
- REST `GET {rest}/api/v1/stock/candle?symbol=..&resolution=1&from=..&to=..`
  (epoch seconds) returns `{"s":"ok","t":[..],"o":[..],"h","l","c","v"}` or
  `{"s":"no_data"}`; on many plans it is premium and answers 403 ("You don't
  have access to this resource"): then backfill is logged once as
  unavailable and the feed runs on without it. The token goes in the
  `X-Finnhub-Token` header, so no REST URL carries it.

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
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit, urlunsplit

import httpx
import msgspec
import structlog
from websockets.exceptions import ConnectionClosed, InvalidURI
from websockets.uri import parse_uri

from daemon.feeds.base import (
    FeedAuthFailed,
    FeedError,
    FeedFatal,
    FeedStats,
    FeedThrottled,
    FeedUnavailable,
)
from daemon.feeds.market_hours import xnys_is_open
from daemon.feeds.minute_builder import MinuteBuilder
from daemon.feeds.reconnect import (
    LoopSettings,
    Received,
    ReconnectPolicy,
    Rejection,
    StreamFeed,
    checked_feed_args,
)
from daemon.feeds.wserrors import is_utf8, retry_after_s
from daemon.feeds.wssession import WebsocketSession
from signals.bar import SYMBOL_PATTERN, Bar, BarRejected

_log = structlog.get_logger(__name__)

DEFAULT_STREAM_URL: Final = "wss://ws.finnhub.io"
DEFAULT_REST_URL: Final = "https://finnhub.io"

_DETAIL_CHARS = 160
_MIN_SCRUB_CHARS = 6  # real tokens are 20 characters; scrubbing "s" would mangle every message


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


class _Candles(msgspec.Struct):
    s: str
    t: list[int] = []
    o: list[float] = []
    h: list[float] = []
    l: list[float] = []  # noqa: E741 - the wire name
    c: list[float] = []
    v: list[float] = []


def _excerpt(data: bytes | str) -> str:
    text = data if isinstance(data, str) else data[:_DETAIL_CHARS].decode("utf-8", "replace")
    return text[:_DETAIL_CHARS]


def _scrub(token: str, text: str) -> str:
    if len(token) < _MIN_SCRUB_CHARS:
        return text
    return text.replace(token, "***").replace(quote_plus(token), "***")


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
            self._reject("bad_json", f"not UTF-8: {_excerpt(data)!r}")
            return
        try:
            kind = msgspec.json.decode(data, type=_Head).type
        except msgspec.ValidationError:
            self._reject("not_an_object", _excerpt(data))
            return
        except msgspec.DecodeError:
            self._reject("bad_json", _excerpt(data))
            return
        except RecursionError:
            self._reject("too_deep", _excerpt(data))
            return
        if kind == "trade":
            self._trades(data, now_s)
        elif kind == "ping":
            self._events.append(Pinged())
        elif kind == "error":
            try:
                message = msgspec.json.decode(data, type=_Error).msg
            except (msgspec.DecodeError, RecursionError):
                message = _excerpt(data)
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
            self._reject("bad_message", f"{exc}: {_excerpt(data)}")
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
            return Rejection(_field_problem(exc), f"{exc}: {_excerpt(bytes(raw))}")
        except (msgspec.DecodeError, RecursionError):
            return Rejection("bad_message", _excerpt(bytes(raw)))
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
        self._events.append(Rejection(reason, _scrub(self._token, detail)[:_DETAIL_CHARS]))


def parse_candles(
    body: bytes, symbol: str, symbols: frozenset[str], now_s: float, max_future_s: float = 300.0
) -> tuple[list[Bar], list[Rejection]]:
    """Decode a `/stock/candle` response for `symbol`. Never raises: a bad body is one rejection."""
    try:
        page = msgspec.json.decode(body, type=_Candles)
    except (msgspec.DecodeError, RecursionError) as exc:
        return [], [Rejection("bad_response", f"{exc}: {_excerpt(body)}")]
    if page.s == "no_data":
        return [], []
    columns = (page.t, page.o, page.h, page.l, page.c, page.v)
    if page.s != "ok" or len({len(col) for col in columns}) != 1:
        return [], [Rejection("bad_response", f"s={page.s[:20]!r} or ragged arrays")]
    bars: list[Bar] = []
    rejected: list[Rejection] = []
    for start, o, h, low, c, v in zip(*columns, strict=True):
        if start < 0 or start % 60:
            rejected.append(Rejection("bad_time", f"{symbol}: {start} is not a minute start"))
        elif start > now_s + max_future_s:
            rejected.append(Rejection("future_time", f"{symbol}: {start} is ahead of the clock"))
        elif symbol not in symbols:
            rejected.append(Rejection("unsubscribed_symbol", f"{symbol[:12]!r} was not asked for"))
        else:
            try:
                bars.append(Bar(symbol, start, o, h, low, c, v))
            except BarRejected as exc:
                rejected.append(Rejection(exc.reason, str(exc)))
    return bars, rejected


class _NoAccess(FeedFatal):
    """HTTP 403: the plan does not include candles."""


class FinnhubRest:
    """The `/stock/candle` minute backfill: one request per symbol, bounded retries.

    `http` is owned by the caller. A 403 (candles are premium on many plans)
    turns backfill off for good: logged once as `feed.backfill_unavailable`,
    every later call returns nothing at once. Otherwise retries 429, 5xx and
    network errors a few times, then raises `FeedThrottled`, `FeedAuthFailed`
    (401), `FeedFatal` (400/404) or `FeedUnavailable`.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        token: str,
        symbols: Sequence[str],
        rest_url: str = DEFAULT_REST_URL,
        name: str = "finnhub",
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_future_s: float = 300.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 60.0,
        max_body_bytes: int = 8 << 20,
    ) -> None:
        self._http, self._name, self._token = http, name, token
        self._symbols = tuple(symbols)
        self._symbol_set = frozenset(self._symbols)
        self._url = f"{rest_url.rstrip('/')}/api/v1/stock/candle"
        self._now, self._sleep, self._max_future_s = now, sleep, max_future_s
        self._max_retries, self._max_retry_wait_s = max_retries, max_retry_wait_s
        self._max_body_bytes = max_body_bytes
        self.available = True
        """False once the server said the plan has no candles (HTTP 403)."""

    def __repr__(self) -> str:
        return f"FinnhubRest(url={self._url!r}, symbols={self._symbols!r})"

    async def bars(self, start_s: int, end_s: int) -> Received:
        """Minute bars with start in `[start_s, end_s]` for every symbol, as kind `backfill`."""
        if not self.available:
            return Received()
        bars: list[Bar] = []
        rejected: list[Rejection] = []
        for symbol in self._symbols:
            params = {"symbol": symbol, "resolution": "1", "from": str(start_s), "to": str(end_s)}
            try:
                body = await self._get(params)
            except _NoAccess as exc:
                self.available = False
                _log.warning("feed.backfill_unavailable", feed=self._name, detail=exc.detail)
                return Received()
            got, bad = parse_candles(
                body, symbol, self._symbol_set, self._now(), self._max_future_s
            )
            rejected.extend(bad)
            for bar in got:
                if start_s <= bar.time <= end_s:
                    bars.append(bar)
                else:  # a forming minute would shadow the complete live bar
                    rejected.append(Rejection("outside_window", f"{symbol} {bar.time}"))
        return Received((("backfill", tuple(bars)),), tuple(rejected))

    async def _get(self, params: dict[str, str]) -> bytes:
        attempt = 0
        while True:
            try:
                return await self._get_once(params)
            except (FeedUnavailable, FeedThrottled) as exc:
                if attempt >= self._max_retries:
                    raise
                wait = exc.retry_after_s if isinstance(exc, FeedThrottled) else None
                await self._sleep(
                    min(self._max_retry_wait_s, wait if wait is not None else 2.0**attempt)
                )
                attempt += 1

    async def _get_once(self, params: dict[str, str]) -> bytes:
        headers = {"X-Finnhub-Token": self._token}
        try:
            async with self._http.stream("GET", self._url, params=params, headers=headers) as resp:
                limit = self._max_body_bytes if resp.status_code == 200 else 64 << 10
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise FeedUnavailable(
                            self._name, f"REST response larger than {limit} bytes"
                        )
                    chunks.append(chunk)
                if resp.status_code == 200:
                    return b"".join(chunks)
                raise self._status_error(resp.status_code, resp.headers, b"".join(chunks))
        except httpx.InvalidURL as exc:
            raise FeedFatal(self._name, _scrub(self._token, f"invalid REST URL: {exc}")) from exc
        except httpx.HTTPError as exc:
            detail = _scrub(self._token, f"REST {type(exc).__name__}: {exc}")
            raise FeedUnavailable(self._name, detail) from exc

    def _status_error(self, status: int, headers: httpx.Headers, body: bytes) -> FeedError:
        try:
            message = str(msgspec.json.decode(body, type=dict[str, object]).get("error", ""))
        except (msgspec.DecodeError, RecursionError):
            message = ""
        detail = _scrub(self._token, f"REST HTTP {status} {message[:_DETAIL_CHARS]}".rstrip())
        if status == 403:
            return _NoAccess(self._name, detail)
        if status == 429:
            return FeedThrottled(self._name, detail, retry_after_s(headers.multi_items()))
        if status == 401:
            return FeedAuthFailed(self._name, detail)
        if status in (400, 404):
            return FeedFatal(self._name, detail)
        return FeedUnavailable(self._name, detail)


def stream_url(url: str, token: str) -> str:
    """`url` with `token=...` added to its query: what the websocket connects to. Never log it."""
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), ("token", token)])
    return urlunsplit(parts._replace(query=query))


@dataclass(frozen=True)
class _Settings:
    """Everything a connection or a backfill needs, shared by both."""

    name: str
    url: str
    rest_url: str
    token: str = field(repr=False)
    symbols: tuple[str, ...]
    max_frame_bytes: int
    open_timeout_s: float
    ping_interval_s: float | None
    ping_timeout_s: float | None
    flush_interval_s: float
    max_future_s: float
    now: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]

    def scrub(self, text: str) -> str:
        """`text` without the token (a URL in an error message would carry it)."""
        return _scrub(self.token, text)


class _FinnhubConnection(WebsocketSession):
    """One websocket session: entering connects and subscribes; `receive` also runs the bar timer."""

    def __init__(self, settings: _Settings, builder: MinuteBuilder) -> None:
        self._s = settings
        self._finnhub = FinnhubProtocol(
            settings.symbols, builder, max_future_s=settings.max_future_s, token=settings.token
        )
        super().__init__(
            self._finnhub,
            name=settings.name,
            url=stream_url(settings.url, settings.token),
            max_frame_bytes=settings.max_frame_bytes,
            open_timeout_s=settings.open_timeout_s,
            ping_interval_s=settings.ping_interval_s,
            ping_timeout_s=settings.ping_timeout_s,
            handshake_timeout_s=settings.open_timeout_s,
            now=settings.now,
            scrub=settings.scrub,
        )

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


class _FinnhubSource:
    """What `FeedLoop` drives: fresh connections sharing one bar builder, and REST backfills."""

    def __init__(
        self, settings: _Settings, builder: MinuteBuilder, http: httpx.AsyncClient
    ) -> None:
        self.name, self.url = settings.name, settings.url
        self._settings, self._builder = settings, builder
        self._rest = FinnhubRest(
            http,
            token=settings.token,
            symbols=settings.symbols,
            rest_url=settings.rest_url,
            name=settings.name,
            now=settings.now,
            sleep=settings.sleep,
            max_future_s=settings.max_future_s,
        )

    def connection(self) -> _FinnhubConnection:
        return _FinnhubConnection(self._settings, self._builder)

    async def backfill(self, start_s: int, end_s: int) -> Received:
        return await self._rest.bars(start_s, end_s)


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

    def _source(self, http: httpx.AsyncClient) -> _FinnhubSource:
        # A fresh minute builder per run; within a run the minute being built
        # survives reconnects (the source keeps it).
        return _FinnhubSource(self._settings, MinuteBuilder(self._bar_close_delay_s), http)
