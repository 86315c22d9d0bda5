"""Alpaca market data v2 as a `Feed`, and its registry entry.

The protocol (sans I/O) is `alpaca_protocol.py`, the REST backfill and the
start-up history `alpaca_rest.py`, the decoding both share `alpaca_wire.py`;
their public names are importable from here too. `AlpacaFeed` moves bytes and
runs the shared `FeedLoop`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
import structlog

from daemon.feeds.alpaca_protocol import (
    DEFAULT_CHANNELS,
    DEFAULT_STREAM_URL,
    AlpacaProtocol,
    Authenticated,
    BarsReceived,
    Channel,
    Connected,
    Event,
    ServerError,
    State,
    Stream,
    Subscribed,
)
from daemon.feeds.alpaca_rest import (
    DEFAULT_REST_URL,
    AlpacaRest,
    BarsPage,
    fetch_alpaca_warmup,
    parse_bars_page,
    rfc3339,
)
from daemon.feeds.alpaca_wire import ERROR_MESSAGES, error_for_code, scrub
from daemon.feeds.base import FeedKind
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
    from daemon.warmup import Warmup, WarmupRequest

__all__ = [
    "DEFAULT_CHANNELS",
    "DEFAULT_REST_URL",
    "DEFAULT_STREAM_URL",
    "ERROR_MESSAGES",
    "PROVIDER",
    "AlpacaFeed",
    "AlpacaProtocol",
    "AlpacaRest",
    "Authenticated",
    "BarsPage",
    "BarsReceived",
    "Channel",
    "Connected",
    "Event",
    "ServerError",
    "State",
    "Stream",
    "Subscribed",
    "error_for_code",
    "fetch_alpaca_warmup",
    "parse_bars_page",
    "rfc3339",
]

_log = structlog.get_logger(__name__)

ALPACA_API_KEY = "ALPACA_API_KEY"
ALPACA_API_SECRET = "ALPACA_API_SECRET"


@dataclass(frozen=True, kw_only=True)
class AlpacaSettings(StreamSettings):
    """Everything a connection or a backfill needs: the shared settings and the credentials."""

    key: str = field(repr=False)
    secret: str = field(repr=False)
    channels: tuple[Channel, ...]
    rest_feed: str

    def scrub(self, text: str) -> str:
        """`text` with the credentials replaced by `***` (a server could echo them back)."""
        return scrub(self.key, self.secret, text)

    def source(self, http: httpx.AsyncClient) -> StreamSource:
        """The `Source` of one run: fresh sessions, backfills over `http`."""
        rest = AlpacaRest(http, self.key, self.secret, self.rest_options(), feed=self.rest_feed)
        return StreamSource(self.name, self.url, lambda: AlpacaConnection(self), rest.bars)


class AlpacaConnection(WebsocketSession):
    """One websocket session: entering connects, authenticates and subscribes; then `receive`."""

    def __init__(self, settings: AlpacaSettings) -> None:
        self._s = settings
        self._alpaca = AlpacaProtocol(
            settings.key,
            settings.secret,
            settings.symbols,
            channels=settings.channels,
            max_future_s=settings.options.max_future_s,
        )
        super().__init__(self._alpaca, settings)

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


class AlpacaFeed(StreamFeed):
    """Alpaca market data v2 as a `Feed`: minute, updated and daily bars, REST backfill.

    `key` and `secret` are only ever sent to Alpaca; they never appear in a
    log line, a repr or an exception message. `stream` picks the data feed
    (`iex`, `sip`, `test`) unless `options.url` overrides the stream URL;
    `channels` the subscriptions.
    """

    _settings: AlpacaSettings

    def __init__(
        self,
        key: str,
        secret: str,
        options: FeedOptions,
        *,
        stream: Stream = "iex",
        channels: Sequence[Channel] = DEFAULT_CHANNELS,
    ) -> None:
        if not key or not secret:
            raise ValueError("the Alpaca key and secret must both be non-empty")
        if stream not in ("iex", "sip", "test"):
            raise ValueError(f"stream must be iex, sip or test, got {stream!r}")
        if not channels or not set(channels) <= set(DEFAULT_CHANNELS):
            raise ValueError(f"channels must be a non-empty subset of {DEFAULT_CHANNELS}")
        super().__init__(
            AlpacaSettings(
                name=options.name or "alpaca",
                url=options.url or DEFAULT_STREAM_URL.format(stream=stream),
                rest_url=options.rest_url or DEFAULT_REST_URL,
                options=options,
                key=key,
                secret=secret,
                channels=tuple(channels),
                rest_feed="sip" if stream == "sip" else "iex",
            )
        )

    def _source(self, http: httpx.AsyncClient) -> StreamSource:
        return self._settings.source(http)


def _build(section: FeedSettings, options: FeedOptions, secrets: Secrets) -> AlpacaFeed:
    key, secret = secrets.require(ALPACA_API_KEY), secrets.require(ALPACA_API_SECRET)
    return AlpacaFeed(key.reveal(), secret.reveal(), options, stream=section.alpaca_feed)


def _history(section: FeedSettings, secrets: Secrets, request: WarmupRequest) -> Awaitable[Warmup]:
    key, secret = secrets.require(ALPACA_API_KEY), secrets.require(ALPACA_API_SECRET)
    return fetch_alpaca_warmup(key.reveal(), secret.reveal(), request, feed=section.alpaca_feed)


async def _download(
    http: httpx.AsyncClient,
    secrets: Secrets,
    options: RestOptions,
    window: tuple[int, int, HistoryTimeframe],
) -> Received:
    key, secret = secrets.require(ALPACA_API_KEY), secrets.require(ALPACA_API_SECRET)
    start_s, end_s, timeframe = window
    rest = AlpacaRest(http, key.reveal(), secret.reveal(), options)
    return await rest.bars(start_s, end_s, timeframe="1Day" if timeframe == "1d" else "1Min")


PROVIDER = FeedProvider(
    build=_build,
    secrets=(ALPACA_API_KEY, ALPACA_API_SECRET),
    history=_history,
    # The start-up warm-up comes over REST before the feed starts: the first
    # backfill only bridges the few minutes in between.
    live_backfill_s=300.0,
    label=lambda section: f"alpaca ({section.alpaca_feed})",
    download=_download,
)
