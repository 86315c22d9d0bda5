"""The feed contract the daemon consumes, its counters, and the errors that tell the loop what to do.

A feed turns a provider's stream into `FeedBatch`es of validated `Bar`s and
hands them to a synchronous `emit` callback: ingest never awaits a sink.
Errors are classified by what the caller must do; messages never carry
credentials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from signals.bar import Bar

FeedKind = Literal["live", "updated", "daily", "backfill"]
"""`live` minute bars, `updated` late corrections of a minute bar, the forming
`daily` bar, and minute bars fetched over REST to fill a gap (`backfill`)."""


@dataclass(frozen=True)
class FeedBatch:
    """Bars of one kind that share one bar start `time`, in arrival order.

    `received_at` is the wall-clock epoch (seconds) when the feed handed them over.
    """

    bars: tuple[Bar, ...]
    kind: FeedKind
    received_at: float


@dataclass
class FeedStats:
    """Counters of one feed, for `/health`, `/metrics` and tests. Mutated only by the feed."""

    attempts: int = 0
    """Connection attempts, successful or not."""
    connects: int = 0
    """Sessions that got through connect, auth and subscribe."""
    reconnects: int = 0
    """Reconnects scheduled after a session or an attempt ended."""
    frames: int = 0
    """Websocket messages received."""
    bars: int = 0
    """Bars emitted, every kind."""
    backfilled: int = 0
    """Bars emitted with kind `backfill`."""
    duplicates: int = 0
    """Minute bars dropped because that (symbol, time) or a later one was already emitted."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Rejected input by reason (`bad_json`, `high_below_low`, `frame_too_big`...)."""
    silences: int = 0
    """Times the silence watchdog closed a quiet connection."""
    backfill_errors: int = 0
    """Backfills that failed; the gap they were meant to fill stays."""
    connected: bool = False
    """A session is up (subscribed) right now."""
    last_bar_at: float | None = None
    """Wall-clock epoch seconds when the last bar was emitted."""
    last_bar_time: int | None = None
    """The newest bar start emitted (epoch seconds)."""

    def reject(self, reason: str, count: int = 1) -> None:
        """Count `count` rejections for `reason`."""
        self.rejected[reason] = self.rejected.get(reason, 0) + count

    @property
    def rejected_total(self) -> int:
        """All rejections, every reason."""
        return sum(self.rejected.values())


class Feed(Protocol):
    """A source of bars that keeps itself connected.

    `run` returns only by being cancelled. It reconnects by itself, repairs gaps
    by backfill before live bars resume, and raises `FeedFatal` when retrying
    cannot help (credentials refused again and again, a subscription the
    account does not have). `emit` is synchronous and must not block.
    """

    name: str
    stats: FeedStats

    async def run(self, emit: Callable[[FeedBatch], None]) -> None: ...


class FeedError(Exception):
    """Base of feed errors. Messages never carry secrets."""

    def __init__(self, feed: str, detail: str) -> None:
        super().__init__(f"{feed}: {detail}")
        self.feed = feed
        self.detail = detail


class FeedUnavailable(FeedError):
    """The connection failed or ended (network, server restart, timeout): reconnect with backoff."""


class FeedSilent(FeedUnavailable):
    """The silence watchdog closed a connection that sent nothing while the market was open."""


class FrameRejected(FeedUnavailable):
    """The connection ended because the server broke a limit (e.g. a frame over the size cap).

    `reason` is counted as a rejection like any other bad input.
    """

    def __init__(self, feed: str, reason: str, detail: str) -> None:
        super().__init__(feed, detail)
        self.reason = reason


class FeedThrottled(FeedError):
    """The server refuses us for now (connection limit, HTTP 429): wait long before retrying.

    `retry_after_s` is the wait the server asked for, if it said.
    """

    def __init__(self, feed: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(feed, detail)
        self.retry_after_s = retry_after_s


class FeedAuthFailed(FeedError):
    """The credentials were refused: retry a few times (keys being rotated), then give up."""


class FeedFatal(FeedError):
    """Retrying cannot help (wrong plan, bad subscription, repeated auth failure): stop the feed."""


class FeedForbidden(FeedFatal):
    """HTTP 403: the key was refused this request (a wrong key, or a plan without the data)."""
