"""The daemon's side of a replay server (`daemon.feeds.replay`), and its registry entry.

A replay server speaks Alpaca's protocol, so its feed runs Alpaca's session
and REST backfill; it needs no secret (the server accepts any credentials,
so the auth message carries a placeholder) and runs in the replay's own time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import httpx

from daemon.feeds.alpaca import DEFAULT_CHANNELS, AlpacaSettings
from daemon.feeds.alpaca_rest import DEFAULT_REST_URL
from daemon.feeds.options import FeedOptions
from daemon.feeds.provider import FeedProvider
from daemon.feeds.stream import StreamFeed, StreamSource

if TYPE_CHECKING:
    from daemon.config import FeedSettings
    from daemon.secrets import Secrets

_PLACEHOLDER: Final = "replay"


class ReplayFeed(StreamFeed):
    """Bars from a replay server at `options.url`, with its REST side at `options.rest_url`."""

    _settings: AlpacaSettings

    def __init__(self, options: FeedOptions) -> None:
        if options.url is None:
            raise ValueError("a replay feed needs the replay server's url")
        super().__init__(
            AlpacaSettings(
                name=options.name or "replay",
                url=options.url,
                rest_url=options.rest_url or DEFAULT_REST_URL,
                options=options,
                key=_PLACEHOLDER,
                secret=_PLACEHOLDER,
                channels=DEFAULT_CHANNELS,
                rest_feed="iex",
            )
        )

    def _source(self, http: httpx.AsyncClient) -> StreamSource:
        return self._settings.source(http)


def _build(section: FeedSettings, options: FeedOptions, secrets: Secrets) -> ReplayFeed:
    return ReplayFeed(options)


PROVIDER = FeedProvider(build=_build, feed_time=True)
