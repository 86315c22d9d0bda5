"""A local stand-in for Finnhub: the trades websocket and the `/api/v1/stock/candle` endpoint.

The websocket checks `?token=` at the upgrade (HTTP 401 when wrong), takes
`{"type":"subscribe","symbol":..}` messages and plays a trade tape as
`{"type":"trade","data":[..]}` frames, a few per minute, `minute_s` real
seconds per minute. Time is virtual: `now()` follows the tape (the latest
trade played, then the end of each minute once it has been played), so a feed
that uses it as its clock sees minutes end exactly when the tape says.

Playback starts when a client has subscribed to every symbol of the tape.
`kill_before(index, outage_minutes)` drops every client before that minute and
plays the next `outage_minutes` minutes to nobody (trades lost, as in a real
outage), then waits for a fully subscribed client again: a deterministic gap
that only a backfill can repair. REST serves candles of the minutes that have
ended, aggregated from the whole tape.
"""

from __future__ import annotations

import asyncio
import math
from contextlib import AsyncExitStack, suppress
from http import HTTPStatus
from itertools import groupby
from types import TracebackType
from typing import Any, Self
from urllib.parse import SplitResult, parse_qs, urlsplit

import msgspec
import polars as pl
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request
from websockets.http11 import Response as WsResponse

from tests.daemon.feeds.feedkit import SYMBOLS, T0
from tests.daemon.feeds.massive_server import LoopbackHttp, Response, dumps

Trade = tuple[str, int, float, float]
"""symbol, time (epoch ms), price, volume."""

NO_ACCESS = b'{"error":"You don\'t have access to this resource."}'


def make_tape(
    minutes: int, symbols: tuple[str, ...] = SYMBOLS, start: int = T0, per_minute: int = 6
) -> list[Trade]:
    """A deterministic tape: `per_minute` trades of every symbol in every minute, one a price update."""
    tape: list[Trade] = []
    step_ms = 60_000 // per_minute
    for i in range(minutes):
        for j, symbol in enumerate(symbols):
            for k in range(per_minute):
                t = (start + 60 * i) * 1000 + k * step_ms + 7 * j + 1
                price = round(100.0 + 50.0 * j + 0.25 * i + 0.1 * ((k * 7 + i) % 5 - 2), 4)
                volume = 0.0 if k == 2 else float(100 + 10 * k + i)
                tape.append((symbol, t, price, volume))
    return sorted(tape, key=lambda trade: trade[1])


def candles(trades: list[Trade]) -> pl.DataFrame:
    """Minute bars of `trades` (in arrival order): open first by time, high max, low min, close
    last by time, volume sum. Columns symbol, time, open, high, low, close, volume."""
    schema = {"symbol": pl.String, "t": pl.Int64, "price": pl.Float64, "volume": pl.Float64}
    frame = pl.DataFrame(trades, schema=schema, orient="row")
    return (
        frame.with_row_index("seq")
        .sort("t", "seq")
        .with_columns(time=pl.col("t") // 60_000 * 60)
        .group_by("symbol", "time", maintain_order=True)
        .agg(
            open=pl.col("price").first(),
            high=pl.col("price").max(),
            low=pl.col("price").min(),
            close=pl.col("price").last(),
            volume=pl.col("volume").sum(),
        )
        .sort("time", "symbol")
    )


class FinnhubServer:
    """Finnhub's trades websocket and candle REST on loopback, playing `tape`."""

    def __init__(
        self, tape: list[Trade], *, token: str | None = None, minute_s: float = 0.0, chunks: int = 3
    ) -> None:
        self._tape = sorted(tape, key=lambda trade: trade[1])
        self._minutes = [
            (minute, list(group))
            for minute, group in groupby(self._tape, key=lambda tr: tr[1] // 60_000 * 60)
        ]
        self._symbols = {trade[0] for trade in self._tape}
        self._candles = candles(self._tape)
        self._token, self._minute_s, self._chunks = token, minute_s, chunks
        self._clock = float(self._minutes[0][0]) if self._minutes else 0.0
        self._clients: dict[ServerConnection, set[str]] = {}
        self._audience = asyncio.Condition()
        self._progress = asyncio.Condition()
        self._kills: dict[int, int] = {}
        self._refuse: int | None = None
        self.rest_unavailable = False
        """Answer every candle request with 403, as plans without candles do."""
        self._stack = AsyncExitStack()
        self._ws: Server | None = None
        self._http = LoopbackHttp(self._respond)
        self.played = 0
        """Minutes played so far."""
        self.finished = asyncio.Event()
        self.connections_seen = 0
        self.subscriptions: list[dict[str, Any]] = []
        """Every client message, decoded."""

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            group = await stack.enter_async_context(asyncio.TaskGroup())
            self._ws = await stack.enter_async_context(
                serve(
                    self._handle,
                    "127.0.0.1",
                    0,
                    process_request=self._check_upgrade,
                    max_size=1 << 16,
                )
            )
            await stack.enter_async_context(self._http)
            player = group.create_task(self._play(), name="finnhub.player")
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

    def now(self) -> float:
        """The virtual wall clock, epoch seconds."""
        return self._clock

    @property
    def url(self) -> str:
        """`ws://127.0.0.1:PORT` (the feed adds `?token=`)."""
        assert self._ws is not None
        return f"ws://127.0.0.1:{self._ws.sockets[0].getsockname()[1]}"

    @property
    def rest_url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return self._http.url

    @property
    def rest_requests(self) -> list[tuple[SplitResult, dict[str, str]]]:
        """Every REST request: target and headers."""
        return self._http.requests

    @property
    def minutes(self) -> int:
        """Minutes on the tape."""
        return len(self._minutes)

    async def wait_played(self, minutes: int) -> None:
        """Return once at least `minutes` minutes have been played."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.played >= min(minutes, self.minutes))

    def kill_before(self, index: int, outage_minutes: int = 2) -> None:
        """Before minute `index`, drop every client and play `outage_minutes` minutes to nobody."""
        self._kills[index] = outage_minutes

    def refuse_upgrade(self, status: int | None) -> None:
        """Refuse new websocket upgrades with HTTP `status` (e.g. 429); None stops."""
        self._refuse = status

    async def send_raw(self, data: str | bytes) -> int:
        """Send `data` as one message to every client. Returns how many got it."""
        sent = 0
        for ws in list(self._clients):
            with suppress(ConnectionClosed):
                await ws.send(data)
                sent += 1
        return sent

    def _check_upgrade(self, connection: ServerConnection, request: Request) -> WsResponse | None:
        self.connections_seen += 1
        token = parse_qs(urlsplit(request.path).query).get("token", [""])[-1]
        if self._refuse is not None:
            return connection.respond(HTTPStatus(self._refuse), "refused\n")
        if self._token is not None and token != self._token:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self._clients[ws] = set()
        try:
            async for message in ws:
                request = msgspec.json.decode(message, type=dict[str, Any])
                self.subscriptions.append(request)
                symbol = request.get("symbol")
                symbols = self._clients.get(ws)
                if (
                    request.get("type") == "subscribe"
                    and isinstance(symbol, str)
                    and symbols is not None
                ):
                    symbols.add(symbol)
                    async with self._audience:
                        self._audience.notify_all()
                else:
                    await ws.send(dumps({"type": "error", "msg": "Unknown message type"}))
        except ConnectionClosed:
            return
        finally:
            self._clients.pop(ws, None)

    def _ready(self) -> bool:
        return any(symbols >= self._symbols for symbols in self._clients.values())

    async def _play(self) -> None:
        outage = 0
        for index, (minute, trades) in enumerate(self._minutes):
            if index in self._kills:
                for ws in list(self._clients):
                    ws.transport.abort()
                    del self._clients[ws]  # now: the handler only notices on its next await
                outage = self._kills[index]
            if outage:  # no awaits: a reconnect cannot land inside the outage
                outage -= 1
            else:
                async with self._audience:
                    await self._audience.wait_for(self._ready)
                size = math.ceil(len(trades) / self._chunks)
                for first in range(0, len(trades), size):
                    chunk = trades[first : first + size]
                    self._clock = max(self._clock, chunk[-1][1] / 1000)
                    for ws, symbols in list(self._clients.items()):
                        data = [
                            {"s": s, "p": p, "t": t, "v": v, "c": ["1", "12"]}
                            for s, t, p, v in chunk
                            if s in symbols
                        ]
                        if data:
                            with suppress(ConnectionClosed):
                                await ws.send(dumps({"type": "trade", "data": data}))
                    await asyncio.sleep(self._minute_s / self._chunks)
            self._clock = max(self._clock, minute + 60.0)
            self.played = index + 1
            async with self._progress:
                self._progress.notify_all()
        self._clock += 180.0  # the session ends: every bar is due
        self.finished.set()

    def _respond(self, target: SplitResult, headers: dict[str, str]) -> Response:
        query = {k: v[-1] for k, v in parse_qs(target.query).items()}
        token = headers.get("x-finnhub-token") or query.get("token")
        if target.path != "/api/v1/stock/candle":
            return 404, b'{"error":"Not found"}', []
        if self._token is not None and token != self._token:
            return 401, b'{"error":"Invalid API key"}', []
        if self.rest_unavailable:
            return 403, NO_ACCESS, []
        if query.get("resolution") != "1":
            return 422, b'{"error":"Wrong resolution"}', []
        rows = self._candles.filter(
            (pl.col("symbol") == query.get("symbol", ""))
            & (pl.col("time") >= int(query["from"]))
            & (pl.col("time") <= int(query["to"]))
            & (pl.col("time") + 60 <= self._clock)  # only minutes that have ended
        )
        if rows.is_empty():
            return 200, b'{"s":"no_data"}', []
        body: dict[str, object] = {"s": "ok", "t": rows["time"].to_list()}
        for name in ("open", "high", "low", "close", "volume"):
            body[name[0]] = rows[name].to_list()
        return 200, msgspec.json.encode(body), []
