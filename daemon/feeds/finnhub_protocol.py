"""Finnhub trades: the websocket protocol, sans I/O, with the minute bars built here.

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

The REST candle backfill (`FinnhubRest`) lives in `finnhub_rest.py` and the
feed in `finnhub.py`.

The stream carries trades, so `MinuteBuilder` makes the bars: a bar closes on
the symbol's first trade of a later minute, or `bar_close_delay_s` after its
minute ends. "After" is read on the stream's own clock while trades flow (the
newest trade time, never ahead of the wall clock), so frames that queued up
while the process was busy do not turn their own trades late; when the line
is quiet, on the wall clock. `FinnhubProtocol` never raises on input.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from daemon.feeds.finnhub_wire import DETAIL_CHARS, excerpt, scrub
from daemon.feeds.minute_builder import MinuteBuilder
from daemon.feeds.reconnect import Rejection
from daemon.feeds.wserrors import is_utf8
from signals.bar import SYMBOL_PATTERN, Bar

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
        problem = self._problem(trade, now_s)
        if problem is not None:
            return problem
        self._stream_s = max(self._stream_s, trade.t / 1000)
        return self.builder.add(trade.s, trade.t, trade.p, trade.v)

    def _problem(self, trade: _Trade, now_s: float) -> Rejection | None:
        """Why a decoded trade cannot go into a bar, or None."""
        symbol, stamp = trade.s, trade.t
        name = f"{symbol[:12]!r}"
        if not SYMBOL_PATTERN.fullmatch(symbol):
            return Rejection("bad_symbol", f"{name} is not a symbol")
        if symbol not in self._symbol_set:
            return Rejection("unsubscribed_symbol", f"{name} was not subscribed")
        value = _value_problem(name, trade.p, trade.v)
        if value is not None:
            return value
        if stamp < 0:
            return Rejection("bad_time", f"{name}: time {stamp} ms is before 1970")
        # Compared in ms: `stamp / 1000` overflows a float for a huge int.
        if stamp > (now_s + self._max_future_s) * 1000:
            return Rejection("future_time", f"{name}: time {stamp} ms is ahead of the clock")
        return None

    def _emit(self, bars: list[Bar]) -> None:
        if bars:
            self._events.append(BarsReceived(tuple(sorted(bars, key=lambda b: (b.time, b.symbol)))))

    def _reject(self, reason: str, detail: str) -> None:
        self._events.append(Rejection(reason, scrub(self._token, detail)[:DETAIL_CHARS]))


def _value_problem(name: str, price: float, volume: float) -> Rejection | None:
    """Why a trade's price or volume cannot go into a bar, or None."""
    if not (
        math.isfinite(price) and math.isfinite(volume)
    ):  # msgspec refuses them; belt and braces
        return Rejection("non_finite", f"{name}: price {price!r} volume {volume!r}")
    if price <= 0.0:
        return Rejection("non_positive_price", f"{name}: price {price!r}")
    if volume < 0.0:
        return Rejection("negative_volume", f"{name}: volume {volume!r}")
    return None


def stream_url(url: str, token: str) -> str:
    """`url` with `token=...` added to its query: what the websocket connects to. Never log it."""
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), ("token", token)])
    return urlunsplit(parts._replace(query=query))
