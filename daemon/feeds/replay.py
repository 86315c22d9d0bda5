"""A local stand-in for Alpaca: a websocket server and a REST endpoint that replay a bar frame.

The websocket speaks the Alpaca market data v2 protocol (`connected`, `auth`,
`subscribe`, errors by code) and plays minute bars as `"T":"b"` messages, all
symbols of one minute in one frame, at `speed` bar-minutes per real second
(0 or infinity: as fast as the client reads). The timeline is global and
starts when the first client subscribes: like a real market it keeps moving
while a client is disconnected (with `manual=True` it moves only when a test
calls `advance(minutes)`, to keep step with a fake clock). `GET
/v2/stocks/bars` serves the same frame in Alpaca's REST shape, up to the
minute already played, so a client can repair a gap after a reconnect.

Both listen on loopback only, on free ports by default. The REST side is
`replay_rest.ReplayRest`. A subclass may refuse a session (`_refusal`),
hold bars back (`_sending_bars`), close after subscribing
(`_closes_after_subscribe`) and swap the REST side (`rest_type`); the feed
tests' fault injection does so.

Used by `iwm-alerts demo` / `replay` and by the feed tests.
"""

from __future__ import annotations

import asyncio
import math
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

import msgspec
import numpy as np
import polars as pl
import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from daemon.feeds.replay_rest import MAX_REQUEST_LINE, ReplayRest, rest_bar
from daemon.feeds.replay_wire import (
    COLUMNS,
    LOOPBACK,
    Client,
    ReplayFrames,
    ReplaySettings,
    Request,
    as_json,
    error_message,
    frame_from_rows,
)

__all__ = ["COLUMNS", "LOOPBACK", "ReplayServer", "ReplaySettings", "frame_from_rows"]

_log = structlog.get_logger(__name__)


class ReplayServer:
    """An Alpaca-compatible websocket + REST server on loopback that replays `bars`.

    `bars` has columns symbol, time (bar start, epoch seconds), open, high,
    low, close, volume; `settings` says how it plays, whom it lets in and where
    it listens (`ReplaySettings`); `history` and `daily` are bars its REST side
    also serves. Use as an async context manager; `url` and `rest_url` are
    valid inside it.
    """

    rest_type: type[ReplayRest] = ReplayRest

    def __init__(
        self,
        bars: pl.DataFrame,
        settings: ReplaySettings | None = None,
        *,
        history: pl.DataFrame | None = None,
        daily: pl.DataFrame | None = None,
    ) -> None:
        s = ReplaySettings() if settings is None else settings
        frames = ReplayFrames.of(bars, history, daily)
        self._frame = frames.live
        times = self._frame["time"].to_numpy()
        self._minutes: list[int] = np.unique(times).tolist()
        self._bounds: list[int] = np.searchsorted(
            times, [*self._minutes, np.iinfo(np.int64).max]
        ).tolist()
        self._speed = s.speed
        self._key, self._secret = s.key, s.secret
        self._host, self._port, self._http_port = s.host, s.port, s.http_port
        self._stream = s.stream
        self._auth_timeout_s = s.auth_timeout_s
        self._clients: dict[ServerConnection, Client] = {}
        self._subscribed: set[ServerConnection] = set()
        self._start = asyncio.Event()
        self._finished = asyncio.Event()
        self._progress = asyncio.Condition()
        self._played = 0
        self._sent = 0  # minutes whose frames have gone out (or were skipped while silent)
        self._manual = s.manual
        self._allowed = 0  # manual mode: minutes the test has let the timeline play
        self._stack = AsyncExitStack()
        self._player: asyncio.Task[None] | None = None
        self._ws_server: Server | None = None
        self._http_server: asyncio.Server | None = None
        self.connections_seen = 0
        """Websocket connections accepted so far."""
        self.auth_attempts = 0
        """`auth` messages received so far."""
        self.last_subscription: dict[str, list[str]] | None = None
        """The channels of the latest (un)subscribe, as the server now holds them."""
        self._rest = self.rest_type(frames, lambda: self.played_until, s)

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            group = await stack.enter_async_context(asyncio.TaskGroup())
            self._ws_server = await stack.enter_async_context(
                serve(self._handle, self._host, self._port, max_size=1 << 16)
            )
            self._http_server = await asyncio.start_server(
                self._rest.handle, self._host, self._http_port, limit=MAX_REQUEST_LINE
            )
            await stack.enter_async_context(self._http_server)
            self._player = group.create_task(self._play(), name="replay.player")
            self._stack = stack.pop_all()
        _log.info(
            "replay.started", url=self.url, rest_url=self.rest_url, minutes=len(self._minutes)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._player is not None:
            self._player.cancel()
        await self._stack.__aexit__(exc_type, exc, tb)

    # Where to connect.

    @property
    def port(self) -> int:
        """The websocket port actually bound."""
        if self._ws_server is None:
            raise RuntimeError("the replay server is not running")
        return int(self._ws_server.sockets[0].getsockname()[1])

    @property
    def http_port(self) -> int:
        """The REST port actually bound."""
        if self._http_server is None:
            raise RuntimeError("the replay server is not running")
        return int(self._http_server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The stream URL, `ws://127.0.0.1:PORT/v2/iex`."""
        return f"ws://{self._host}:{self.port}/v2/{self._stream}"

    @property
    def rest_url(self) -> str:
        """The REST base URL, `http://127.0.0.1:PORT`."""
        return f"http://{self._host}:{self.http_port}"

    # Progress.

    @property
    def minutes_total(self) -> int:
        """Distinct bar minutes in the frame."""
        return len(self._minutes)

    @property
    def minutes_played(self) -> int:
        """Minutes played so far."""
        return self._played

    @property
    def last_minute(self) -> int | None:
        """Start of the frame's last minute, or None for an empty frame."""
        return self._minutes[-1] if self._minutes else None

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
        """Start the timeline now instead of at the first subscription."""
        self._start.set()

    async def advance(self, minutes: int = 1) -> int:
        """Manual mode: play `minutes` more minutes and return once their frames are sent.

        Capped at the frame's length. Returns the minutes played so far.
        """
        if not self._manual:
            raise RuntimeError("advance() needs a server created with manual=True")
        if minutes < 0:
            raise ValueError(f"minutes must be >= 0, got {minutes}")
        self._allowed = min(len(self._minutes), self._allowed + minutes)
        target = self._allowed
        async with self._progress:
            self._progress.notify_all()
            await self._progress.wait_for(lambda: self._sent >= target)
        return self._played

    # Observation.

    @property
    def rest_requests(self) -> int:
        """REST requests answered so far."""
        return self._rest.requests

    @property
    def connected_clients(self) -> int:
        """Websocket clients connected right now, subscribed or not."""
        return len(self._clients)

    @property
    def streaming_clients(self) -> int:
        """Clients subscribed to bars right now."""
        return len(self._subscribed)

    # What a subclass may change: sessions refused, bars held back, early closes.

    def _refusal(self) -> int | None:
        """The error code to answer a session's `auth` with and close; None: judge the keys."""
        return None

    def _sending_bars(self) -> bool:
        """Whether played minutes go out to subscribers (the timeline moves either way)."""
        return True

    def _closes_after_subscribe(self) -> bool:
        """Whether to close each session right after confirming its subscription."""
        return False

    # Websocket side.

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections_seen += 1
        client = Client()
        self._clients[ws] = client
        try:
            await ws.send(as_json([{"T": "success", "msg": "connected"}]))
            authenticated = False
            while True:
                try:
                    async with asyncio.timeout(None if authenticated else self._auth_timeout_s):
                        message = await ws.recv()
                except TimeoutError:
                    await ws.send(error_message(404))
                    await ws.close()
                    return
                try:
                    request = msgspec.json.decode(message, type=Request)
                except (msgspec.DecodeError, RecursionError):
                    await ws.send(error_message(400))
                    continue
                if request.action == "auth":
                    authenticated = await self._auth(ws, request, authenticated)
                    if not authenticated:
                        return
                elif request.action in ("subscribe", "unsubscribe"):
                    if not authenticated:
                        await ws.send(error_message(401))
                        continue
                    if not await self._subscribe(ws, client, request):
                        return
                else:
                    await ws.send(error_message(400))
        except ConnectionClosed:
            return
        finally:
            self._clients.pop(ws, None)
            self._subscribed.discard(ws)

    async def _auth(self, ws: ServerConnection, request: Request, already: bool) -> bool:
        """Answer an auth message; False means the session was refused and closed."""
        self.auth_attempts += 1
        if already:
            await ws.send(error_message(403))
            return True
        code = self._refusal()
        if code is None and (request.key, request.secret) != (self._key, self._secret):
            code = None if self._key is None else 402
        if code is not None:
            await ws.send(error_message(code))
            await ws.close()
            return False
        await ws.send(as_json([{"T": "success", "msg": "authenticated"}]))
        return True

    async def _subscribe(self, ws: ServerConnection, client: Client, request: Request) -> bool:
        """Apply a (un)subscribe; False means the session was closed on purpose."""
        pairs = (
            (client.bars, request.bars),
            (client.updated, request.updated),
            (client.daily, request.daily),
        )
        for have, delta in pairs:
            if request.action == "subscribe":
                have.update(delta)
            else:
                have.difference_update(delta)
        if client.bars:
            self._subscribed.add(ws)  # before the reply: from now on this client gets live bars
        else:
            self._subscribed.discard(ws)
        self.last_subscription = {
            "bars": sorted(client.bars),
            "updatedBars": sorted(client.updated),
            "dailyBars": sorted(client.daily),
        }
        await ws.send(client.message())
        self._start.set()
        if self._closes_after_subscribe():
            await ws.close()
            return False
        return True

    async def _play(self) -> None:
        if not self._manual:
            await self._start.wait()
        loop = asyncio.get_running_loop()
        began = loop.time()
        fast = self._speed == 0 or math.isinf(self._speed)
        for index in range(len(self._minutes)):
            if self._manual:
                async with self._progress:
                    await self._progress.wait_for(lambda: self._allowed > index)  # noqa: B023
            elif fast:
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(max(0.0, began + index / self._speed - loop.time()))
            rows = self._frame.slice(
                self._bounds[index], self._bounds[index + 1] - self._bounds[index]
            )
            # Advance the timeline and pick the audience in one step: a client that
            # subscribes after this gets the minute from REST instead.
            self._played = index + 1
            audience = [(ws, self._clients.get(ws)) for ws in self._subscribed]
            async with self._progress:
                self._progress.notify_all()
            if not self._sending_bars():
                await self._minute_sent(index)
                continue
            messages = [
                {"T": "b", "S": row["symbol"], **rest_bar(row)}
                for row in rows.iter_rows(named=True)
            ]
            for ws, client in audience:
                chosen = [m for m in messages if client is None or client.wants(str(m["S"]))]
                if not chosen:
                    continue
                try:
                    await ws.send(as_json(chosen))
                except ConnectionClosed:
                    continue
            await self._minute_sent(index)
        self._finished.set()
        _log.info("replay.finished", minutes=len(self._minutes))

    async def _minute_sent(self, index: int) -> None:
        self._sent = index + 1
        if self._manual:
            async with self._progress:
                self._progress.notify_all()

    @property
    def finished(self) -> bool:
        """Every minute has been played."""
        return self._finished.is_set()
