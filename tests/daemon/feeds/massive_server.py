"""A local stand-in for Massive (Polygon): the stocks websocket and the `/v2/aggs` REST endpoint.

The websocket speaks Massive's protocol (a status greeting, `connected` or, as
Massive's AsyncAPI spec shows it, `success`; `auth`, `auth_success` /
`auth_failed` / `max_connections`, `subscribe` confirmed per channel) and plays
a bar frame as `AM` events, all subscribed symbols of one minute in one frame,
at `speed` bar-minutes per real second (0: as fast as the client reads). Like
`ReplayServer`, the timeline is global, starts at the first subscription and
keeps moving while a client is away; REST serves what has been played, with
`next_url` pages.

`LoopbackHttp` is the tiny HTTP/1.1 server both provider stand-ins use.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from datetime import UTC, datetime, time
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import SplitResult, parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo

import msgspec
import polars as pl
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from daemon.feeds.base import Feed
from tests.daemon.feeds.feedkit import Collector

Response = tuple[int, bytes, list[str]]
Handler = Callable[[SplitResult, dict[str, str]], Response]


def dumps(value: object) -> str:
    """JSON text."""
    return msgspec.json.encode(value).decode()


def status(status: str, message: str) -> dict[str, str]:
    """A Massive status event."""
    return {"ev": "status", "status": status, "message": message}


class LoopbackHttp:
    """GET-only HTTP/1.1 on 127.0.0.1, one request per connection; `handler(target, headers)`."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self.requests: list[tuple[SplitResult, dict[str, str]]] = []
        """Every request answered: target and lower-cased headers."""

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                parts = (await reader.readline()).decode("latin-1").split()
                headers: dict[str, str] = {}
                while (line := (await reader.readline()).decode("latin-1")) not in ("\r\n", ""):
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            extra: list[str] = []
            if len(parts) != 3 or parts[0] != "GET":
                code, body = 405, b"{}"
            else:
                target = urlsplit(parts[1])
                self.requests.append((target, headers))
                code, body, extra = self._handler(target, headers)
            head = [f"HTTP/1.1 {code} {HTTPStatus(code).phrase}", "Content-Type: application/json"]
            head += [f"Content-Length: {len(body)}", "Connection: close", *extra, "", ""]
            writer.write("\r\n".join(head).encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()


@asynccontextmanager
async def running(feed: Feed) -> AsyncIterator[Collector]:
    """Run any `feed` in a task group while the block runs; cancel it after."""
    collector = Collector()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(feed.run(collector), name="feed-under-test")
        try:
            yield collector
        finally:
            task.cancel()


def am_event(row: dict[str, Any]) -> dict[str, object]:
    """A Massive `AM` event for a bar row (time = bar start, epoch seconds)."""
    start_ms = row["time"] * 1000
    typical = round((row["high"] + row["low"] + row["close"]) / 3, 4)
    return {
        "ev": "AM",
        "sym": row["symbol"],
        "v": int(row["volume"]),
        "av": int(row["volume"]) * 10,
        "op": row["open"],
        "vw": typical,
        "o": row["open"],
        "c": row["close"],
        "h": row["high"],
        "l": row["low"],
        "a": typical,
        "z": 12,
        "s": start_ms,
        "e": start_ms + 60_000,
    }


class MassiveServer:
    """Massive's stocks websocket and `/v2/aggs` REST on loopback, replaying `bars`.

    With `api_key` set only that key authenticates (`auth_failed` otherwise).
    `greeting` is the status of the first message (`connected`, or `success` as in
    Massive's AsyncAPI spec); `handshake_noise` are raw messages sent right after it,
    while the client is still authenticating.
    `page_size` caps REST pages below the client's `limit`, to exercise `next_url`.
    `daily` (symbol, time = session date at 00:00 UTC, OHLCV) answers `range/1/day`,
    stamped at midnight New York as Massive does; days from `daily_until` on are left out.
    """

    def __init__(
        self,
        bars: pl.DataFrame,
        *,
        speed: float = 0.0,
        api_key: str | None = None,
        page_size: int = 50_000,
        daily: pl.DataFrame | None = None,
        greeting: str = "connected",
        handshake_noise: Sequence[str | bytes] = (),
    ) -> None:
        self._greeting, self._noise = greeting, tuple(handshake_noise)
        self._frame = bars.sort("time", "symbol")
        self._daily = daily
        self._minutes: list[int] = self._frame["time"].unique(maintain_order=True).to_list()
        self._speed, self._key, self._page_size = speed, api_key, page_size
        self._clients: dict[ServerConnection, set[str]] = {}
        self._start = asyncio.Event()
        self._progress = asyncio.Condition()
        self._played = 0
        self._refuse: str | None = None
        self._silent = False
        self._mute_auth = False
        self._rest_failures: list[tuple[int, float | None]] = []
        self._stack = AsyncExitStack()
        self._ws: Server | None = None
        self._http = LoopbackHttp(self._respond)
        self.connections_seen = 0
        self.auth_attempts = 0
        self.received: list[dict[str, object]] = []
        """Every client message, decoded."""

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            group = await stack.enter_async_context(asyncio.TaskGroup())
            self._ws = await stack.enter_async_context(
                serve(self._handle, "127.0.0.1", 0, max_size=1 << 16)
            )
            await stack.enter_async_context(self._http)
            player = group.create_task(self._play(), name="massive.player")
            stack.callback(player.cancel)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)

    @property
    def url(self) -> str:
        """`ws://127.0.0.1:PORT/stocks`."""
        assert self._ws is not None
        return f"ws://127.0.0.1:{self._ws.sockets[0].getsockname()[1]}/stocks"

    @property
    def rest_url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return self._http.url

    @property
    def rest_requests(self) -> list[tuple[SplitResult, dict[str, str]]]:
        """Every REST request: target and headers."""
        return self._http.requests

    @property
    def played_until(self) -> int | None:
        """Start of the last minute played, or None before the first."""
        return self._minutes[self._played - 1] if self._played else None

    async def wait_played(self, minutes: int) -> None:
        """Return once at least `minutes` minutes (capped at the total) have been played."""
        target = min(minutes, len(self._minutes))
        async with self._progress:
            await self._progress.wait_for(lambda: self._played >= target)

    def start(self) -> None:
        """Start the timeline without waiting for a subscription."""
        self._start.set()

    def kill_connections(self) -> None:
        """Drop every client at the TCP level, without a close frame."""
        for ws in list(self._clients):
            ws.transport.abort()

    def refuse_with(self, state: str | None) -> None:
        """Answer new auths with status `state` (`auth_failed`, `max_connections`...) and close."""
        self._refuse = state

    def ignore_auth(self, ignore: bool = True) -> None:
        """Leave auth messages unanswered (the client's handshake then times out)."""
        self._mute_auth = ignore

    def go_silent(self, silent: bool = True) -> None:
        """Stop (or resume) sending bars; the timeline goes on."""
        self._silent = silent

    def fail_rest(self, code: int, times: int = 1, retry_after_s: float | None = None) -> None:
        """Answer the next `times` REST requests with `code`."""
        self._rest_failures.extend([(code, retry_after_s)] * times)

    async def send_raw(self, data: str | bytes) -> int:
        """Send `data` as one message to every subscribed client. Returns how many got it."""
        sent = 0
        for ws, symbols in list(self._clients.items()):
            if symbols:
                with suppress(ConnectionClosed):
                    await ws.send(data)
                    sent += 1
        return sent

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections_seen += 1
        self._clients[ws] = set()
        try:
            await ws.send(dumps([status(self._greeting, "Connected Successfully")]))
            for noise in self._noise:
                await ws.send(noise)
            authenticated = False
            async for message in ws:
                request = msgspec.json.decode(message, type=dict[str, Any])
                self.received.append(request)
                params = str(request.get("params", ""))
                if request.get("action") == "auth":
                    self.auth_attempts += 1
                    if self._mute_auth:
                        continue
                    refuse = self._refuse
                    if refuse is None and self._key is not None and params != self._key:
                        refuse = "auth_failed"
                    if refuse is not None:
                        text = "Maximum number of websocket connections exceeded."
                        reply = text if refuse == "max_connections" else "authentication failed"
                        await ws.send(dumps([status(refuse, reply)]))
                        await ws.close(1008 if refuse == "max_connections" else 1000)
                        return
                    authenticated = True
                    await ws.send(dumps([status("auth_success", "authenticated")]))
                elif request.get("action") == "subscribe" and authenticated:
                    channels = [p.strip() for p in params.split(",") if p.strip()]
                    self._clients[ws].update(c[3:] for c in channels if c.startswith("AM."))
                    replies = [status("success", f"subscribed to: {c}") for c in channels]
                    await ws.send(dumps(replies))
                    self._start.set()
                else:
                    await ws.send(dumps([status("error", "not authorized")]))
        except ConnectionClosed:
            return
        finally:
            self._clients.pop(ws, None)

    async def _play(self) -> None:
        await self._start.wait()
        loop = asyncio.get_running_loop()
        began = loop.time()
        fast = self._speed == 0 or math.isinf(self._speed)
        for index, minute in enumerate(self._minutes):
            if fast:
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(max(0.0, began + index / self._speed - loop.time()))
            rows = self._frame.filter(pl.col("time") == minute).iter_rows(named=True)
            events = [am_event(row) for row in rows]
            self._played = index + 1  # and the audience, in one step: later subscribers use REST
            audience = list(self._clients.items())
            async with self._progress:
                self._progress.notify_all()
            if self._silent:
                continue
            for ws, symbols in audience:
                chosen = [e for e in events if e["sym"] in symbols]
                if chosen:
                    with suppress(ConnectionClosed):
                        await ws.send(dumps(chosen))

    def _respond(self, target: SplitResult, headers: dict[str, str]) -> Response:
        query = {k: v[-1] for k, v in parse_qs(target.query).items()}
        key = headers.get("authorization", "").removeprefix("Bearer ") or query.get("apiKey")
        if self._key is not None and key != self._key:
            return 401, b'{"status":"ERROR","error":"Unknown API Key"}', []
        if self._rest_failures:
            code, retry_after = self._rest_failures.pop(0)
            extra = [] if retry_after is None else [f"Retry-After: {retry_after:g}"]
            return code, msgspec.json.encode({"status": "ERROR", "error": "nope"}), extra
        parts = target.path.split("/")
        # /v2/aggs/ticker/{sym}/range/1/{minute|day}/{from}/{to}
        if (
            len(parts) != 10
            or parts[1:4] != ["v2", "aggs", "ticker"]
            or parts[5:7] != ["range", "1"]
            or parts[7] not in ("minute", "day")
            or (parts[7] == "day" and self._daily is None)
        ):
            return 404, b'{"status":"NOT_FOUND"}', []
        symbol, start_ms, end_ms = parts[4], int(parts[8]), int(parts[9])
        if parts[7] == "day":
            assert self._daily is not None
            stamped = self._daily.with_columns(
                time=pl.col("time").map_elements(_ny_midnight, pl.Int64)
            )
            rows = stamped.filter(
                (pl.col("symbol") == symbol)
                & (pl.col("time") * 1000 >= start_ms)
                & (pl.col("time") * 1000 <= end_ms)
            ).sort("time")
        else:
            played = self.played_until if self.played_until is not None else -1
            rows = self._frame.filter(
                (pl.col("symbol") == symbol)
                & (pl.col("time") * 1000 >= start_ms)
                & (pl.col("time") * 1000 <= end_ms)
                & (pl.col("time") <= played)
            )
        offset = int(query.get("cursor", "0"))
        size = min(int(query.get("limit", "5000")), self._page_size)
        page = rows.slice(offset, size)
        results = [
            {k: v for k, v in am_event(r).items() if k in ("v", "vw", "o", "h", "l", "c")}
            | {"t": r["time"] * 1000, "n": 7}
            for r in page.iter_rows(named=True)
        ]
        body: dict[str, object] = {
            "ticker": symbol,
            "adjusted": query.get("adjusted") == "true",
            "resultsCount": len(results),
            "status": "OK",
            "request_id": "local",
            "results": results,
        }
        if offset + page.height < rows.height:
            rest = {**query, "cursor": str(offset + page.height)}
            body["next_url"] = f"{self.rest_url}{target.path}?{urlencode(rest)}"
        return 200, msgspec.json.encode(body), []


def _ny_midnight(label: int) -> int:
    """The epoch second of midnight New York on the UTC date `label` (04:00 or 05:00 UTC)."""
    day = datetime.fromtimestamp(label, UTC).date()
    return int(datetime.combine(day, time(0), tzinfo=ZoneInfo("America/New_York")).timestamp())
