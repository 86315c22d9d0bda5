"""Finnhub trades as a `Feed` (minute bars built from trades), and its registry entry.

The protocol (sans I/O) is `finnhub_protocol.py`, the REST candle backfill
`finnhub_rest.py`; their public names are importable from here too. Finnhub's
candles are a paid extra, so the provider fetches no start-up history.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

import httpx
import structlog
from websockets.exceptions import ConnectionClosed, InvalidURI
from websockets.uri import parse_uri

from daemon.feeds.base import FeedForbidden
from daemon.feeds.finnhub_protocol import (
    DEFAULT_STREAM_URL,
    BarsReceived,
    Event,
    FinnhubProtocol,
    Pinged,
    stream_url,
)
from daemon.feeds.finnhub_rest import DEFAULT_REST_URL, FinnhubRest, parse_candles
from daemon.feeds.finnhub_wire import scrub
from daemon.feeds.minute_builder import MinuteBuilder
from daemon.feeds.options import FeedOptions
from daemon.feeds.provider import FeedProvider
from daemon.feeds.reconnect import Received, Rejection
from daemon.feeds.stream import StreamFeed, StreamSettings, StreamSource
from daemon.feeds.wssession import WebsocketSession
from signals.bar import Bar

if TYPE_CHECKING:
    from daemon.config import FeedSettings
    from daemon.feeds.provider import HistoryTimeframe
    from daemon.feeds.rest_options import RestOptions
    from daemon.secrets import Secrets

__all__ = [
    "DEFAULT_REST_URL",
    "DEFAULT_STREAM_URL",
    "PROVIDER",
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

FINNHUB_API_KEY = "FINNHUB_API_KEY"


@dataclass(frozen=True, kw_only=True)
class _Settings(StreamSettings):
    """Everything a connection or a backfill needs: the shared settings and the credentials."""

    token: str = field(repr=False)
    flush_interval_s: float

    @property
    def handshake_timeout_s(self) -> float:
        """Finnhub confirms nothing: there is no handshake to wait for beyond the open."""
        return self.options.open_timeout_s

    def scrub(self, text: str) -> str:
        """`text` without the token (a URL in an error message would carry it)."""
        return scrub(self.token, text)


class _FinnhubConnection(WebsocketSession):
    """One websocket session: entering connects and subscribes; `receive` also runs the bar timer."""

    def __init__(self, settings: _Settings, builder: MinuteBuilder) -> None:
        self._s = settings
        self._finnhub = FinnhubProtocol(
            settings.symbols,
            builder,
            max_future_s=settings.options.max_future_s,
            token=settings.token,
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
                self._finnhub.tick(self._s.options.now())
                data = None
            except ConnectionClosed as exc:
                raise self._translate(exc) from exc
            if data is not None:
                self._finnhub.receive_frame(data, self._s.options.now())
            received = self._received()
            if data is not None or received.batches:
                return received


class FinnhubFeed(StreamFeed):
    """Finnhub trades as a `Feed`: minute bars built from trades, REST candle backfill.

    `token` is only ever sent to Finnhub; it never appears in a log line, a
    repr or an exception message (the stream URL that carries it is built at
    connect time and scrubbed from errors). A bar closes on its symbol's first
    trade of a later minute, or `bar_close_delay_s` after its minute ends,
    checked every `flush_interval_s` of quiet.
    """

    _settings: _Settings

    def __init__(
        self,
        token: str,
        options: FeedOptions,
        *,
        bar_close_delay_s: float = 2.0,
        flush_interval_s: float = 1.0,
    ) -> None:
        if not token:
            raise ValueError("the Finnhub token must be non-empty")
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s}")
        stream = options.url or DEFAULT_STREAM_URL
        try:
            parse_uri(stream_url(stream, "t"))
        except (ValueError, InvalidURI) as exc:
            raise ValueError(f"url must be a ws:// or wss:// URL: {exc}") from None
        self._bar_close_delay_s = MinuteBuilder(bar_close_delay_s).close_delay_s  # validates
        super().__init__(
            _Settings(
                name=options.name or "finnhub",
                url=stream,
                rest_url=options.rest_url or DEFAULT_REST_URL,
                options=options,
                token=token,
                flush_interval_s=flush_interval_s,
            )
        )

    def _source(self, http: httpx.AsyncClient) -> StreamSource:
        s = self._settings
        # A fresh minute builder per run; within a run the minute being built
        # survives reconnects (the connections share it).
        builder = MinuteBuilder(self._bar_close_delay_s)
        rest = FinnhubRest(http, s.token, s.rest_options())
        return StreamSource(s.name, s.url, lambda: _FinnhubConnection(s, builder), rest.bars)


def _build(section: FeedSettings, options: FeedOptions, secrets: Secrets) -> FinnhubFeed:
    return FinnhubFeed(secrets.require(FINNHUB_API_KEY).reveal(), options)


async def _download(
    http: httpx.AsyncClient,
    secrets: Secrets,
    options: RestOptions,
    window: tuple[int, int, HistoryTimeframe],
) -> Received:
    start_s, end_s, timeframe = window
    rest = FinnhubRest(http, secrets.require(FINNHUB_API_KEY).reveal(), options)
    received = await rest.bars(start_s, end_s, resolution="D" if timeframe == "1d" else "1")
    if not rest.available:  # the live feed runs on without candles; a download cannot
        name = options.name or "finnhub"
        raise FeedForbidden(name, "REST HTTP 403: the plan does not include candles")
    return received


PROVIDER = FeedProvider(build=_build, secrets=(FINNHUB_API_KEY,), download=_download)
