"""What every websocket provider's feed shares: its settings, its `Source`, and `run`.

A provider subclasses `StreamSettings` with its credentials and `StreamFeed`
with the `Source` it builds for one run; `run_feed` wraps that in one HTTP
client for the backfills and the shared `FeedLoop`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from daemon.feeds.base import FeedBatch, FeedStats
from daemon.feeds.options import FeedOptions, LoopSettings
from daemon.feeds.reconnect import Connection, FeedLoop, Received, Source
from daemon.feeds.rest_options import RestOptions


async def run_feed(
    make_source: Callable[[httpx.AsyncClient], Source],
    stats: FeedStats,
    settings: LoopSettings,
    emit: Callable[[FeedBatch], None],
) -> None:
    """A provider's whole `run`: one HTTP client for its backfills, its source, the loop."""
    async with httpx.AsyncClient(
        timeout=settings.http_timeout_s, transport=settings.http_transport, follow_redirects=False
    ) as http:
        await FeedLoop(make_source(http), stats, settings).run(emit)


class StreamSource:
    """A `Source` from a provider's parts: a factory of fresh connections and a REST backfill."""

    def __init__(
        self,
        name: str,
        url: str,
        connect: Callable[[], Connection],
        backfill: Callable[[int, int], Awaitable[Received]],
    ) -> None:
        self.name, self.url = name, url
        self._connect, self._backfill = connect, backfill

    def connection(self) -> Connection:
        return self._connect()

    async def backfill(self, start_s: int, end_s: int) -> Received:
        return await self._backfill(start_s, end_s)


@dataclass(frozen=True, kw_only=True)
class StreamSettings:
    """What a provider's connections and backfills need: its name, endpoints and options.
    A provider subclasses it with its credentials (fields with `repr=False`) and `scrub`."""

    name: str
    url: str
    rest_url: str
    options: FeedOptions

    @property
    def symbols(self) -> tuple[str, ...]:
        """The subscribed symbols, deduplicated in order."""
        return tuple(self.options.symbols)

    @property
    def handshake_timeout_s(self) -> float:
        """How long connect, auth and subscribe may take together."""
        return self.options.handshake_timeout_s

    def rest_options(self) -> RestOptions:
        """What the provider's REST client takes for this feed's backfills."""
        o = self.options
        return RestOptions(
            self.symbols,
            rest_url=self.rest_url,
            name=self.name,
            now=o.now,
            sleep=o.sleep,
            max_future_s=o.max_future_s,
        )

    def scrub(self, text: str) -> str:
        """`text` without the provider's credentials (a server or a URL could echo them)."""
        raise NotImplementedError


class StreamFeed:
    """What every websocket provider's `Feed` shares: `url`, `symbols`, a repr without
    secrets, and `run` over `run_feed`. A provider passes its `StreamSettings` to
    `__init__` and makes its `Source` in `_source`."""

    def __init__(self, settings: StreamSettings) -> None:
        self.name = settings.name
        self.stats = FeedStats()
        self._settings = settings

    def __repr__(self) -> str:
        s = self._settings
        return f"{type(self).__name__}(name={s.name!r}, url={s.url!r}, symbols={s.symbols!r})"

    @property
    def url(self) -> str:
        """The stream URL (no credentials in it)."""
        return self._settings.url

    @property
    def symbols(self) -> tuple[str, ...]:
        """The subscribed symbols."""
        return self._settings.symbols

    async def run(self, emit: Callable[[FeedBatch], None]) -> None:
        """Stream until cancelled, reconnecting and backfilling; raise `FeedFatal` on a dead end.

        An exception raised by `emit` itself is not a feed problem: it propagates unchanged.
        """
        await run_feed(self._source, self.stats, self._settings.options, emit)

    def _source(self, http: httpx.AsyncClient) -> Source:
        """A source for one `run` (`http` serves its backfills)."""
        raise NotImplementedError
