"""Alpaca market data v2: the websocket protocol (sans-I/O), the REST backfill, and the feed.

The protocol, as documented by Alpaca ("WebSocket Stream", "Real-time Stock
Data", "Historical bars"):

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
  bar; `t` is the bar START, RFC 3339 UTC;
- REST `GET {rest}/v2/stocks/bars?symbols=..&timeframe=1Min&start=..&end=..
  &limit=..&feed=..&page_token=..` with `APCA-API-KEY-ID` /
  `APCA-API-SECRET-KEY` headers returns `{"bars":{sym:[{t,o,h,l,c,v,n,vw}]},
  "next_page_token":str|null}`, sorted by symbol then time; 429 when rate
  limited.

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
from datetime import UTC, datetime
from typing import Final, Literal

import httpx
import msgspec
import structlog

from daemon.feeds.base import (
    FeedAuthFailed,
    FeedError,
    FeedFatal,
    FeedKind,
    FeedStats,
    FeedThrottled,
    FeedUnavailable,
)
from daemon.feeds.market_hours import xnys_is_open
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
from signals.bar import Bar, BarRejected

_log = structlog.get_logger(__name__)

DEFAULT_STREAM_URL: Final = "wss://stream.data.alpaca.markets/v2/{stream}"
DEFAULT_REST_URL: Final = "https://data.alpaca.markets"

Stream = Literal["iex", "sip", "test"]
Channel = Literal["bars", "updatedBars", "dailyBars"]
DEFAULT_CHANNELS: Final[tuple[Channel, ...]] = ("bars", "updatedBars", "dailyBars")

ERROR_MESSAGES: Final[dict[int, str]] = {
    400: "invalid syntax",
    401: "not authenticated",
    402: "auth failed",
    403: "already authenticated",
    404: "auth timeout",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
    407: "slow client",
    408: "v2 not enabled",
    409: "insufficient subscription",
    410: "invalid subscribe action for this feed",
    500: "internal error",
}
"""Alpaca's stream error codes and their documented messages."""

_KINDS: Final[dict[str, FeedKind]] = {"b": "live", "u": "updated", "d": "daily"}
_DETAIL_CHARS = 160
_MIN_SCRUB_CHARS = 6  # real keys are 20+ characters; scrubbing "s" would mangle every message

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


# Wire structs, one per message type. Unknown fields (n, vw...) are ignored.


class _Head(msgspec.Struct):
    T: str


class _Success(msgspec.Struct):
    msg: str


class _Error(msgspec.Struct):
    code: int
    msg: str = ""


class _Subscription(msgspec.Struct, rename={"updated": "updatedBars", "daily": "dailyBars"}):
    bars: list[str] = []
    updated: list[str] = []
    daily: list[str] = []


_BAR_RENAME: Final = {
    "symbol": "S",
    "time": "t",
    "open": "o",
    "high": "h",
    "low": "l",
    "close": "c",
    "volume": "v",
}


class _StreamBar(msgspec.Struct, rename=_BAR_RENAME):
    symbol: str
    time: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


class _RestBar(msgspec.Struct, rename=_BAR_RENAME):
    time: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


class _RestPage(msgspec.Struct):
    bars: dict[str, list[msgspec.Raw]] | None = None
    next_page_token: str | None = None


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


def _excerpt(data: bytes | str) -> str:
    text = data if isinstance(data, str) else data[:_DETAIL_CHARS].decode("utf-8", "replace")
    return text[:_DETAIL_CHARS]


def _field_problem(exc: msgspec.ValidationError) -> str:
    """A reason for a bar that did not fit its struct."""
    text = str(exc)
    if "out of range" in text:  # 1e400 and friends: JSON numbers beyond a double
        return "non_finite"
    if "`$.t`" in text:
        return "bad_time"
    return "bad_field"


def _bar_or_rejection(
    symbol: str,
    msg: _StreamBar | _RestBar,
    *,
    minute: bool,
    symbols: frozenset[str],
    now_s: float,
    max_future_s: float,
) -> Bar | Rejection:
    """A validated `Bar` from decoded fields, or why not."""
    stamp = msg.time
    if stamp.tzinfo is None:
        return Rejection("bad_time", f"{symbol[:12]!r}: time without a UTC offset: {stamp}")
    try:
        seconds = stamp.timestamp()
    except (OverflowError, ValueError):
        return Rejection("bad_time", f"{symbol[:12]!r}: time out of range: {stamp}")
    epoch = math.floor(seconds)
    if minute and (stamp.microsecond or epoch % 60):
        return Rejection("bad_time", f"{symbol[:12]!r}: minute bar not on a minute: {stamp}")
    if epoch < 0:
        return Rejection("bad_time", f"{symbol[:12]!r}: time before 1970: {stamp}")
    if epoch > now_s + max_future_s:
        return Rejection("future_time", f"{symbol[:12]!r}: {stamp} is ahead of the clock")
    try:
        bar = Bar(symbol, epoch, msg.open, msg.high, msg.low, msg.close, msg.volume)
    except BarRejected as exc:
        return Rejection(exc.reason, str(exc))
    if bar.symbol not in symbols:
        return Rejection("unsubscribed_symbol", f"{bar.symbol!r} was not subscribed")
    return bar


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
        self._secrets = tuple(s for s in (key, secret) if len(s) >= _MIN_SCRUB_CHARS)
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
            self._reject("bad_json", f"not UTF-8: {_excerpt(data)}")
            return
        try:
            items = msgspec.json.decode(data, type=list[msgspec.Raw])
        except msgspec.ValidationError:
            self._reject("not_a_list", _excerpt(data))
            return
        except msgspec.DecodeError:
            self._reject("bad_json", _excerpt(data))
            return
        except RecursionError:
            self._reject("too_deep", _excerpt(data))
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
            kind = msgspec.json.decode(raw, type=_Head).T
        except (msgspec.DecodeError, RecursionError):
            self._reject("bad_message", _excerpt(bytes(raw)))
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
                "unexpected_message", f"bar before subscription: {_excerpt(bytes(raw))}"
            )
        try:
            msg = msgspec.json.decode(raw, type=_StreamBar)
        except msgspec.ValidationError as exc:
            return Rejection(_field_problem(exc), f"{exc}: {self._scrub(_excerpt(bytes(raw)))}")
        except (msgspec.DecodeError, RecursionError):
            return Rejection("bad_message", self._scrub(_excerpt(bytes(raw))))
        return _bar_or_rejection(
            msg.symbol,
            msg,
            minute=minute,
            symbols=self._symbol_set,
            now_s=now_s,
            max_future_s=self._max_future_s,
        )

    def _success(self, raw: msgspec.Raw) -> None:
        try:
            msg = msgspec.json.decode(raw, type=_Success).msg
        except (msgspec.DecodeError, RecursionError):
            self._reject("bad_message", self._scrub(_excerpt(bytes(raw))))
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
            sub = msgspec.json.decode(raw, type=_Subscription)
        except (msgspec.DecodeError, RecursionError):
            self._reject("bad_message", self._scrub(_excerpt(bytes(raw))))
            return
        if self.state not in ("subscribing", "streaming"):
            self._reject("unexpected_message", f"subscription in {self.state}")
            return
        self.state = "streaming"
        self._events.append(Subscribed(tuple(sub.bars), tuple(sub.updated), tuple(sub.daily)))

    def _error(self, raw: msgspec.Raw) -> None:
        try:
            err = msgspec.json.decode(raw, type=_Error)
        except (msgspec.DecodeError, RecursionError):
            self._reject("bad_message", self._scrub(_excerpt(bytes(raw))))
            return
        self.state = "failed"
        self._events.append(ServerError(err.code, self._scrub(err.msg)[:_DETAIL_CHARS]))

    def _flush(self, pending: list[tuple[FeedKind, list[Bar]]]) -> None:
        self._events.extend(BarsReceived(kind, tuple(bars)) for kind, bars in pending)
        pending.clear()

    def _reject(self, reason: str, detail: str) -> None:
        self._events.append(Rejection(reason, self._scrub(detail)))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def error_for_code(feed: str, code: int, message: str) -> FeedError:
    """The feed error an Alpaca stream error code means: what the reconnect loop must do."""
    detail = f"server error {code} ({ERROR_MESSAGES.get(code, message or 'unknown')})"
    if code in (401, 402):  # refused or lost credentials: a few retries, then fatal
        return FeedAuthFailed(feed, detail)
    if code == 406:  # another session holds our slot; Alpaca frees half-dead ones after ~90 s
        return FeedThrottled(feed, detail)
    if code in (400, 405, 408, 409, 410):  # our request or our plan: retrying cannot fix it
        return FeedFatal(feed, detail)
    return FeedUnavailable(feed, detail)  # 403, 404, 407, 500, unknown: reconnect afresh


@dataclass(frozen=True)
class BarsPage:
    """One decoded REST page: valid bars, rejections, and the token of the next page."""

    bars: tuple[Bar, ...]
    rejected: tuple[Rejection, ...]
    next_page_token: str | None


def parse_bars_page(
    body: bytes, symbols: frozenset[str], now_s: float, max_future_s: float = 300.0
) -> BarsPage:
    """Decode a `/v2/stocks/bars` response body. Never raises: a bad envelope is one rejection."""
    try:
        page = msgspec.json.decode(body, type=_RestPage)
    except (msgspec.DecodeError, RecursionError) as exc:
        return BarsPage((), (Rejection("bad_response", f"{exc}: {_excerpt(body)}"),), None)
    bars: list[Bar] = []
    rejected: list[Rejection] = []
    for symbol, rows in (page.bars or {}).items():
        for raw in rows:
            try:
                msg = msgspec.json.decode(raw, type=_RestBar)
            except msgspec.ValidationError as exc:
                rejected.append(Rejection(_field_problem(exc), f"{exc}: {_excerpt(bytes(raw))}"))
                continue
            except (msgspec.DecodeError, RecursionError):
                rejected.append(Rejection("bad_message", _excerpt(bytes(raw))))
                continue
            result = _bar_or_rejection(
                symbol, msg, minute=True, symbols=symbols, now_s=now_s, max_future_s=max_future_s
            )
            if isinstance(result, Rejection):
                rejected.append(result)
            else:
                bars.append(result)
    return BarsPage(tuple(bars), tuple(rejected), page.next_page_token or None)


def rfc3339(epoch_s: int) -> str:
    """`2024-01-02T14:31:00Z` for an epoch second."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scrub(key: str, secret: str, text: str) -> str:
    for value in (key, secret):
        if len(value) >= _MIN_SCRUB_CHARS:
            text = text.replace(value, "***")
    return text


@dataclass(frozen=True)
class _Settings:
    """Everything a connection or a backfill needs, shared by both."""

    name: str
    url: str
    rest_url: str
    key: str = field(repr=False)
    secret: str = field(repr=False)
    symbols: tuple[str, ...]
    channels: tuple[Channel, ...]
    rest_feed: str
    max_frame_bytes: int
    open_timeout_s: float
    handshake_timeout_s: float
    ping_interval_s: float | None
    ping_timeout_s: float | None
    max_future_s: float
    now: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]

    def scrub(self, text: str) -> str:
        """`text` with the credentials replaced by `***` (a server could echo them back)."""
        return _scrub(self.key, self.secret, text)


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
        super().__init__(
            self._alpaca,
            name=settings.name,
            url=settings.url,
            max_frame_bytes=settings.max_frame_bytes,
            open_timeout_s=settings.open_timeout_s,
            ping_interval_s=settings.ping_interval_s,
            ping_timeout_s=settings.ping_timeout_s,
            handshake_timeout_s=settings.handshake_timeout_s,
            now=settings.now,
            scrub=settings.scrub,
        )

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


class AlpacaRest:
    """The `/v2/stocks/bars` backfill: pagination, bounded retries on 429 and 5xx, typed errors.

    `http` is owned by the caller. Errors: `FeedThrottled` (429 after the
    retries), `FeedAuthFailed` (401), `FeedFatal` (400/403/404/422: the request
    or the plan is wrong), `FeedUnavailable` (5xx, network, oversized body).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        key: str,
        secret: str,
        symbols: Sequence[str],
        rest_url: str = DEFAULT_REST_URL,
        feed: str = "iex",
        name: str = "alpaca",
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_future_s: float = 300.0,
        page_limit: int = 10_000,
        max_pages: int = 100,
        max_retries: int = 3,
        max_retry_wait_s: float = 60.0,
        max_body_bytes: int = 32 << 20,
    ) -> None:
        self._http, self._name = http, name
        self._key, self._secret = key, secret
        self._symbols = tuple(symbols)
        self._symbol_set = frozenset(self._symbols)
        self._url = f"{rest_url.rstrip('/')}/v2/stocks/bars"
        self._feed = feed
        self._now, self._sleep, self._max_future_s = now, sleep, max_future_s
        self._page_limit, self._max_pages = page_limit, max_pages
        self._max_retries, self._max_retry_wait_s = max_retries, max_retry_wait_s
        self._max_body_bytes = max_body_bytes

    def __repr__(self) -> str:
        return f"AlpacaRest(url={self._url!r}, symbols={self._symbols!r})"

    async def bars(
        self, start_s: int, end_s: int, timeframe: Literal["1Min", "1Day"] = "1Min"
    ) -> Received:
        """Bars with start in `[start_s, end_s]` for every symbol, as kind `backfill`.

        Daily bars (`1Day`, for warm-up) keep Alpaca's time, midnight in New York.
        """
        params = {
            "symbols": ",".join(self._symbols),
            "timeframe": timeframe,
            "start": rfc3339(start_s),
            "end": rfc3339(end_s),
            "limit": str(self._page_limit),
            "feed": self._feed,
            "adjustment": "raw",
            "sort": "asc",
        }
        bars: list[Bar] = []
        rejected: list[Rejection] = []
        token: str | None = None
        for _ in range(self._max_pages):
            body = await self._get(params if token is None else {**params, "page_token": token})
            page = parse_bars_page(body, self._symbol_set, self._now(), self._max_future_s)
            bars.extend(page.bars)
            rejected.extend(
                Rejection(r.reason, _scrub(self._key, self._secret, r.detail))
                for r in page.rejected
            )
            token = page.next_page_token
            if token is None:
                break
        else:
            rejected.append(
                Rejection("backfill_truncated", f"stopped after {self._max_pages} pages")
            )
        return Received((("backfill", tuple(bars)),), tuple(rejected))

    async def _get(self, params: dict[str, str]) -> bytes:
        url = self._url
        headers = {"APCA-API-KEY-ID": self._key, "APCA-API-SECRET-KEY": self._secret}
        attempt = 0
        while True:
            try:
                return await self._get_once(url, params, headers)
            except (FeedUnavailable, FeedThrottled) as exc:
                if attempt >= self._max_retries:
                    raise
                wait = exc.retry_after_s if isinstance(exc, FeedThrottled) else None
                await self._sleep(
                    min(self._max_retry_wait_s, wait if wait is not None else 2.0**attempt)
                )
                attempt += 1

    async def _get_once(self, url: str, params: dict[str, str], headers: dict[str, str]) -> bytes:
        name = self._name
        try:
            async with self._http.stream("GET", url, params=params, headers=headers) as resp:
                if resp.status_code == 200:
                    return await self._read(resp, self._max_body_bytes)
                body = await self._read(resp, 64 << 10)
                raise self._status_error(resp.status_code, resp.headers, body)
        except httpx.InvalidURL as exc:
            raise FeedFatal(name, f"invalid REST URL: {exc}") from exc
        except httpx.HTTPError as exc:
            raise FeedUnavailable(
                name, _scrub(self._key, self._secret, f"REST {type(exc).__name__}: {exc}")
            ) from exc

    async def _read(self, resp: httpx.Response, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise FeedUnavailable(self._name, f"REST response larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _status_error(self, status: int, headers: httpx.Headers, body: bytes) -> FeedError:
        name = self._name
        try:
            message = str(msgspec.json.decode(body, type=dict[str, object]).get("message", ""))
        except (msgspec.DecodeError, RecursionError):
            message = ""
        detail = _scrub(
            self._key, self._secret, f"REST HTTP {status} {message[:_DETAIL_CHARS]}".rstrip()
        )
        if status == 429:
            return FeedThrottled(name, detail, retry_after_s(headers.multi_items(), self._now()))
        if status == 401:
            return FeedAuthFailed(name, detail)
        if status in (400, 403, 404, 422):  # bad request or a plan without this data
            return FeedFatal(name, detail)
        return FeedUnavailable(name, detail)


class _AlpacaSource:
    """What `FeedLoop` drives: fresh connections and REST backfills."""

    def __init__(self, settings: _Settings, http: httpx.AsyncClient) -> None:
        self.name, self.url = settings.name, settings.url
        self._settings = settings
        self._rest = AlpacaRest(
            http,
            key=settings.key,
            secret=settings.secret,
            symbols=settings.symbols,
            rest_url=settings.rest_url,
            feed=settings.rest_feed,
            name=settings.name,
            now=settings.now,
            sleep=settings.sleep,
            max_future_s=settings.max_future_s,
        )

    def connection(self) -> _AlpacaConnection:
        return _AlpacaConnection(self._settings)

    async def backfill(self, start_s: int, end_s: int) -> Received:
        return await self._rest.bars(start_s, end_s)


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

    def _source(self, http: httpx.AsyncClient) -> _AlpacaSource:
        return _AlpacaSource(self._settings, http)
