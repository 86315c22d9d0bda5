"""A feed provider as the daemon sees it: one registry entry.

An entry says how to build the provider's `Feed` from the `[feed]` section,
the shared `FeedOptions` and the secrets; which secrets it needs; whether it
can fetch start-up history over REST, and bars for `iwm-alerts history`; how far back its first backfill reaches
when the daemon starts without a snapshot; and whether it runs in feed time
(a replay). Config, secrets, the supervisor and the runner read these; none
of them names a provider.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from daemon.feeds.base import Feed
from daemon.feeds.options import FeedOptions

if TYPE_CHECKING:
    import httpx

    from daemon.config import FeedSettings
    from daemon.feeds.reconnect import Received
    from daemon.feeds.rest_options import RestOptions
    from daemon.secrets import Secrets
    from daemon.warmup import Warmup, WarmupRequest


class FeedFactory(Protocol):
    """Builds a provider's feed. Raises `SecretError` naming a secret it needs but lacks."""

    def __call__(self, section: FeedSettings, options: FeedOptions, secrets: Secrets) -> Feed: ...


class HistoryFetch(Protocol):
    """Fetches the start-up history over REST (daily bars, then recent minutes)."""

    def __call__(
        self, section: FeedSettings, secrets: Secrets, request: WarmupRequest
    ) -> Awaitable[Warmup]: ...


HistoryTimeframe = Literal["1m", "1d"]
"""The bar sizes `iwm-alerts history` downloads."""


class BarDownload(Protocol):
    """Fetches `timeframe` bars of `options.symbols` starting in `[start_s, end_s]` over
    REST, through the caller's `http`, for `iwm-alerts history`."""

    def __call__(
        self,
        http: httpx.AsyncClient,
        secrets: Secrets,
        options: RestOptions,
        window: tuple[int, int, HistoryTimeframe],
    ) -> Awaitable[Received]: ...


class Label(Protocol):
    """The provider's name with its own settings, for a summary line (`alpaca (iex)`)."""

    def __call__(self, section: FeedSettings) -> str: ...


@dataclass(frozen=True, kw_only=True)
class FeedProvider:
    """One provider: its factory and what the daemon must know about it before building it.

    `secrets` are the names `Secrets.load` demands (in this order) when the
    config chooses the provider. `history` fetches the start-up warm-up when no
    snapshot resumes (None: the provider starts cold). `live_backfill_s` is how
    far back of the wall clock the first backfill reaches on a live start
    without a snapshot. `feed_time` providers replay recorded bars: the daemon
    runs in the replay's own time, needs `feed.url`, and the first backfill
    takes everything the server has played. `label` describes the chosen
    provider in `check-config`'s summary. `download` fetches bars for
    `iwm-alerts history` (None: the provider offers no history download).
    """

    build: FeedFactory
    secrets: tuple[str, ...] = ()
    history: HistoryFetch | None = None
    live_backfill_s: float = 3600.0
    feed_time: bool = False
    label: Label | None = None
    download: BarDownload | None = None
