"""One provider websocket session around a sans-I/O protocol object, shared by every feed.

Entering connects, sends what the protocol wants to send, and (for providers
with a handshake) feeds frames to the protocol until it streams; messages that
arrive during the handshake are kept for `receive`. `receive` reads one frame,
answers what the protocol asks, and turns its events into `Received`. What
differs per provider is only the protocol and how its events map to bars.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Protocol, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException

from daemon.feeds.base import FeedError, FeedUnavailable
from daemon.feeds.reconnect import Received
from daemon.feeds.stream import StreamSettings
from daemon.feeds.wserrors import websocket_error


class SansIO(Protocol):
    """What a provider's protocol class offers the session."""

    def receive_frame(self, data: str | bytes, now_s: float) -> None: ...

    def data_to_send(self) -> list[str]: ...


class WebsocketSession(ABC):
    """A `Connection` for `FeedLoop`: connect, handshake, then frames in, `Received` out.

    `url` overrides `settings.url` (a provider whose stream URL carries its token).
    """

    def __init__(
        self, protocol: SansIO, settings: StreamSettings, *, url: str | None = None
    ) -> None:
        self._protocol = protocol
        self._name, self._url = settings.name, settings.url if url is None else url
        options = settings.options
        self._max_frame_bytes = options.max_frame_bytes
        self._open_timeout_s = options.open_timeout_s
        self._ping = (options.ping_interval_s, options.ping_timeout_s)
        self._handshake_timeout_s = settings.handshake_timeout_s
        self._now, self._scrub = options.now, settings.scrub
        self._stack = AsyncExitStack()
        self._ws: ClientConnection | None = None
        self._early: list[Received] = []

    @abstractmethod
    def _streaming(self) -> bool:
        """Whether the handshake is done (True at once for providers without one)."""

    @abstractmethod
    def _received(self) -> Received:
        """The protocol's pending events as bars and rejections; raises a `FeedError` on a
        server error."""

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            try:
                self._ws = ws = await stack.enter_async_context(
                    connect(
                        self._url,
                        max_size=self._max_frame_bytes,
                        open_timeout=self._open_timeout_s,
                        ping_interval=self._ping[0],
                        ping_timeout=self._ping[1],
                        close_timeout=2.0,
                    )
                )
                await self._send(ws, self._protocol.data_to_send())
            except (WebSocketException, OSError, TimeoutError, EOFError) as exc:
                # An invalid URI's message is the URL, which may carry a token: never chain it.
                raise self._translate(exc) from (None if isinstance(exc, InvalidURI) else exc)
            try:
                async with asyncio.timeout(self._handshake_timeout_s):
                    while not self._streaming():
                        self._early.append(await self._next())
            except TimeoutError as exc:
                raise FeedUnavailable(
                    self._name,
                    f"no subscription confirmed within {self._handshake_timeout_s:g} s",
                ) from exc
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def receive(self) -> Received:
        """The next message as bars and rejections; raises a `FeedError` when the session ends."""
        if self._early:
            return self._early.pop(0)
        return await self._next()

    def _socket(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("receive() before the connection was entered")
        return self._ws

    async def _next(self) -> Received:
        ws = self._socket()
        try:
            data = await ws.recv()
        except ConnectionClosed as exc:
            raise self._translate(exc) from exc
        self._protocol.receive_frame(data, self._now())
        await self._send(ws, self._protocol.data_to_send())
        return self._received()

    async def _send(self, ws: ClientConnection, messages: Sequence[str]) -> None:
        for message in messages:
            try:
                await ws.send(message)
            except ConnectionClosed as exc:
                raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> FeedError:
        return websocket_error(
            exc, feed=self._name, max_frame_bytes=self._max_frame_bytes,
            scrub=self._scrub, now_s=self._now(),
        )  # fmt: skip
