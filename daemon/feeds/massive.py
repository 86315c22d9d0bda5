"""Massive (formerly Polygon.io) stocks as a `Feed`, and its registry entry.

The protocol (sans I/O) is `massive_protocol.py`, the REST backfill and the
start-up history `massive_rest.py`; their public names are importable from
here too.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

import httpx
import structlog
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from daemon.feeds.massive_protocol import (
    DEFAULT_STREAM_URL,
    DELAYED_STREAM_URL,
    Authenticated,
    BarsReceived,
    Connected,
    Event,
    MassiveProtocol,
    ServerStatus,
    State,
    Subscribed,
    error_for_status,
)
from daemon.feeds.massive_rest import (
    DEFAULT_REST_URL,
    AggsPage,
    MassiveRest,
    fetch_massive_warmup,
    parse_aggs_page,
)
from daemon.feeds.massive_wire import scrub
from daemon.feeds.options import FeedOptions
from daemon.feeds.provider import FeedProvider
from daemon.feeds.reconnect import Received, Rejection
from daemon.feeds.rejects import RejectLog
from daemon.feeds.stream import StreamFeed, StreamSettings, StreamSource
from daemon.feeds.wssession import WebsocketSession
from signals.bar import Bar

if TYPE_CHECKING:
    from daemon.config import FeedSettings
    from daemon.feeds.provider import HistoryTimeframe
    from daemon.feeds.rest_options import RestOptions
    from daemon.secrets import Secrets
    from daemon.warmup import Warmup, WarmupRequest

__all__ = [
    "DEFAULT_REST_URL",
    "DEFAULT_STREAM_URL",
    "DELAYED_STREAM_URL",
    "PROVIDER",
    "AggsPage",
    "Authenticated",
    "BarsReceived",
    "Connected",
    "Event",
    "MassiveFeed",
    "MassiveProtocol",
    "MassiveRest",
    "ServerStatus",
    "State",
    "Subscribed",
    "error_for_status",
    "fetch_massive_warmup",
    "parse_aggs_page",
]

_log = structlog.get_logger(__name__)

MASSIVE_API_KEY = "MASSIVE_API_KEY"


@dataclass(frozen=True, kw_only=True)
class _Settings(StreamSettings):
    """Everything a connection or a backfill needs: the shared settings and the credentials."""

    api_key: str = field(repr=False)

    def scrub(self, text: str) -> str:
        """`text` without the key (a server could echo it back)."""
        return scrub(self.api_key, text)


class _MassiveConnection(WebsocketSession):
    """One websocket session: entering connects, authenticates and subscribes; then `receive`.

    Rejections while entering (the handshake) go straight to `handshake_rejects`, which
    counts them in the feed's stats: a handshake that fails or times out never hands its
    messages to the loop. So do rejections in a message that also carries a failure status.
    """

    def __init__(self, settings: _Settings, handshake_rejects: RejectLog) -> None:
        self._s = settings
        self._massive = MassiveProtocol(
            settings.api_key, settings.symbols, max_future_s=settings.options.max_future_s
        )
        self._handshake_rejects = handshake_rejects
        self._entered = False
        super().__init__(self._massive, settings)

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self._entered = True
        return self

    def _streaming(self) -> bool:
        return self._massive.state == "streaming"

    def _received(self) -> Received:
        bars: list[Bar] = []
        rejected: list[Rejection] = []
        for event in self._massive.events_received():
            if isinstance(event, BarsReceived):
                bars.extend(event.bars)
            elif isinstance(event, Rejection):
                rejected.append(event)
            elif isinstance(event, ServerStatus):
                self._count(rejected)
                raise error_for_status(self._s.name, event.status, event.message)
            elif isinstance(event, Subscribed):
                _log.info("feed.subscribed", feed=self._s.name, message=event.message)
        if not self._entered:
            self._count(rejected)
            rejected = []
        return Received((("live", tuple(bars)),) if bars else (), tuple(rejected))

    def _count(self, rejected: list[Rejection]) -> None:
        for rejection in rejected:
            self._handshake_rejects.record(rejection.reason, rejection.detail)


class MassiveFeed(StreamFeed):
    """Massive (Polygon) stocks as a `Feed`: `AM.*` minute aggregates, REST backfill.

    `api_key` is only ever sent to Massive; it never appears in a log line, a
    repr or an exception message. The stream is the real-time cluster, or the
    delayed one with `delayed=True`, unless `options.url` overrides it.
    """

    _settings: _Settings

    def __init__(self, api_key: str, options: FeedOptions, *, delayed: bool = False) -> None:
        if not api_key:
            raise ValueError("the Massive API key must be non-empty")
        stream = options.url or (DELAYED_STREAM_URL if delayed else DEFAULT_STREAM_URL)
        try:
            parse_uri(stream)
        except (ValueError, InvalidURI) as exc:
            raise ValueError(f"url must be a ws:// or wss:// URL: {exc}") from None
        super().__init__(
            _Settings(
                name=options.name or "massive",
                url=stream,
                rest_url=options.rest_url or DEFAULT_REST_URL,
                options=options,
                api_key=api_key,
            )
        )

    def _source(self, http: httpx.AsyncClient) -> StreamSource:
        s, o = self._settings, self._settings.options
        rest = MassiveRest(http, s.api_key, s.rest_options())
        rejects = RejectLog(s.name, self.stats, o.policy.reject_log_interval_s, o.now)
        return StreamSource(s.name, s.url, lambda: _MassiveConnection(s, rejects), rest.bars)


def _build(section: FeedSettings, options: FeedOptions, secrets: Secrets) -> MassiveFeed:
    return MassiveFeed(secrets.require(MASSIVE_API_KEY).reveal(), options)


def _history(section: FeedSettings, secrets: Secrets, request: WarmupRequest) -> Awaitable[Warmup]:
    return fetch_massive_warmup(secrets.require(MASSIVE_API_KEY).reveal(), request)


async def _download(
    http: httpx.AsyncClient,
    secrets: Secrets,
    options: RestOptions,
    window: tuple[int, int, HistoryTimeframe],
) -> Received:
    start_s, end_s, timeframe = window
    rest = MassiveRest(http, secrets.require(MASSIVE_API_KEY).reveal(), options)
    return await rest.bars(start_s, end_s, timespan="day" if timeframe == "1d" else "minute")


PROVIDER = FeedProvider(
    build=_build, secrets=(MASSIVE_API_KEY,), history=_history, download=_download
)
