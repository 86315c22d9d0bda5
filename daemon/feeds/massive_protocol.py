"""Massive (formerly Polygon.io) stocks: the websocket protocol, sans I/O.

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
`massive_rest.py` and the feed in `massive.py`.

`MassiveProtocol` never raises on input: what is not a valid bar becomes a
`Rejection` with the same reasons as the Alpaca adapter. Rejections during the
handshake count in the feed's stats like any other, even when the handshake
then fails or times out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

from daemon.feeds.base import FeedAuthFailed, FeedError, FeedThrottled, FeedUnavailable
from daemon.feeds.massive_wire import DETAIL_CHARS, excerpt, field_problem, minute_bar, scrub
from daemon.feeds.reconnect import Rejection
from daemon.feeds.rejects import BarLimits
from daemon.feeds.wserrors import is_utf8
from signals.bar import Bar

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
        limits = BarLimits(self._symbol_set, now_s, self._max_future_s)
        return minute_bar(m.sym, m.s, (m.o, m.h, m.l, m.c, m.v), limits=limits)

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
