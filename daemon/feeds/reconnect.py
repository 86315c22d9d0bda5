"""The reconnect loop every feed shares: backoff, the retry policy, the silence watchdog, gap repair.

The pieces are small on purpose. `backoff` is a plain generator of delays
(exponential, full jitter, capped); `classify` is a plain function that says
what an exception means for the loop (retry soon, retry much later, give up);
both live in `retry.py` with `ReconnectPolicy`, and are importable from here
too. `FeedLoop` runs a provider `Source` through them:

1. open a fresh `Connection` (connect, authenticate, subscribe);
2. backfill over REST from the newest minute already emitted (at start-up:
   `now - warmup_s`) to the last minute that has ended, while live bars are
   held back in a bounded buffer; emit the backfill, then the held live bars,
   then live bars as they come, dropping any minute bar whose (symbol, time)
   is not newer than what was already emitted for that symbol;
3. meanwhile a watchdog closes the session if no message arrives for
   `silence_timeout_s` while `is_market_open(now)`;
4. when the session ends, sleep for the next backoff delay and go to 1.

A session only resets the backoff if it lived at least `stable_after_s`: a
server that accepts and hangs up at once gets ever longer delays, not a storm.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

import structlog

from daemon.feeds.base import (
    FeedAuthFailed,
    FeedBatch,
    FeedError,
    FeedFatal,
    FeedKind,
    FeedSilent,
    FeedStats,
    FeedUnavailable,
    FrameRejected,
)
from daemon.feeds.options import LoopSettings
from daemon.feeds.rejects import RejectLog
from daemon.feeds.retry import Action, Decision, ReconnectPolicy, backoff, classify
from signals.bar import Bar

__all__ = [
    "Action",
    "Connection",
    "Decision",
    "FeedLoop",
    "LoopSettings",
    "Received",
    "ReconnectPolicy",
    "RejectLog",
    "Rejection",
    "Source",
    "backoff",
    "classify",
]

_log = structlog.get_logger(__name__)

_MINUTE_KINDS: frozenset[FeedKind] = frozenset({"live", "backfill"})


@dataclass(frozen=True)
class Rejection:
    """One piece of input that did not become a bar: a stable `reason` and a short `detail`."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Received:
    """What one message (or one backfill) turned into: bars by kind, and what was rejected."""

    batches: tuple[tuple[FeedKind, tuple[Bar, ...]], ...] = ()
    rejected: tuple[Rejection, ...] = ()


class Connection(Protocol):
    """One live session. Entering connects, authenticates and subscribes (or raises a `FeedError`)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def receive(self) -> Received:
        """The next message, decoded. Raises a `FeedError` when the connection ends."""
        ...


class Source(Protocol):
    """A provider adapter as the loop sees it."""

    name: str
    url: str
    """The stream endpoint, for logs (never carries credentials)."""

    def connection(self) -> Connection:
        """A fresh, unopened connection: one per attempt."""
        ...

    async def backfill(self, start_s: int, end_s: int) -> Received:
        """Minute bars with start in `[start_s, end_s]`, as kind `backfill`. Raises a `FeedError`."""
        ...


@dataclass
class _Gate:
    """Holds live bars back while the session's backfill runs (bounded, oldest dropped)."""

    open: bool = False
    held: list[tuple[FeedKind, tuple[Bar, ...]]] = field(default_factory=list)
    held_bars: int = 0


def _by_time(bars: tuple[Bar, ...]) -> list[tuple[Bar, ...]]:
    """Split bars into runs of equal `time`, keeping order: one engine batch per bar time."""
    runs: list[list[Bar]] = []
    for bar in bars:
        if runs and runs[-1][0].time == bar.time:
            runs[-1].append(bar)
        else:
            runs.append([bar])
    return [tuple(run) for run in runs]


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a (nested) group, feed errors first: what ended a session."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        item = stack.pop(0)
        if isinstance(item, BaseExceptionGroup):
            stack[:0] = list(item.exceptions)
        else:
            leaves.append(item)
    return next((e for e in leaves if isinstance(e, FeedError)), leaves[0])


def _reraise_cancellation() -> None:
    """Honour a cancellation that a task group swallowed.

    When a child fails while the parent is being cancelled, `TaskGroup` raises
    the child's error and drops the `CancelledError`: carrying on would make
    the feed impossible to stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class FeedLoop:
    """Runs a `Source` forever: connect, backfill, stream, reconnect. See the module docstring.

    `settings` carries the policy, the watchdog's timeout, how far back the first
    backfill reaches and the injectable clock (`daemon.feeds.options.LoopSettings`).
    """

    def __init__(self, source: Source, stats: FeedStats, settings: LoopSettings) -> None:
        self._source, self._stats, self._policy = source, stats, settings.policy
        self._silence_timeout_s, self._warmup_s = settings.silence_timeout_s, settings.warmup_s
        self._now, self._sleep = settings.now, settings.sleep
        self._is_market_open, self._rand = settings.is_market_open, settings.rand
        self._rejects = RejectLog(source.name, stats, self._policy.reject_log_interval_s, self._now)
        self._emit: Callable[[FeedBatch], None] = lambda batch: None
        self._last_emitted: dict[str, int] = {}  # symbol -> newest minute bar start emitted
        self._warmup_from = 0  # where the first backfill starts
        self._watermark: int | None = None  # newest minute bar start emitted, any symbol
        self._quiet_since = 0.0
        self._session_up = False

    async def run(self, emit: Callable[[FeedBatch], None]) -> None:
        """Run until cancelled; raise `FeedFatal` when retrying cannot help."""
        name = self._source.name
        self._emit = emit
        self._warmup_from = int(self._now() - self._warmup_s) // 60 * 60
        ordinary = self._policy.ordinary_delays(self._rand)
        throttled = self._policy.throttled_delays(self._rand)
        auth_failures = 0
        while True:
            self._stats.attempts += 1
            self._session_up = False
            started = self._now()
            _log.info(
                "feed.connecting", feed=name, url=self._source.url, attempt=self._stats.attempts
            )
            try:
                await self._session()
            except Exception as exc:  # classified below; CancelledError is not an Exception
                _reraise_cancellation()
                error = exc
            else:  # pragma: no cover - a session only ends by raising
                error = FeedUnavailable(name, "session ended")
            finally:
                self._stats.connected = False
            lived_s = self._now() - started
            if self._session_up:
                auth_failures = 0
                if lived_s >= self._policy.stable_after_s:
                    ordinary = self._policy.ordinary_delays(self._rand)
                    throttled = self._policy.throttled_delays(self._rand)
            if isinstance(error, FeedAuthFailed):
                auth_failures += 1
            if isinstance(error, FrameRejected):
                self._rejects.record(error.reason, error.detail)
            decision = classify(error, auth_failures=auth_failures, policy=self._policy)
            if decision.action == "raise":
                raise error
            if decision.action == "fatal":
                _log.error("feed.fatal", feed=name, reason=decision.reason)
                raise FeedFatal(name, decision.reason) from error
            if decision.action == "retry_later":
                delay = max(decision.retry_after_s or 0.0, next(throttled))
            else:
                delay = next(ordinary)
            self._stats.reconnects += 1
            _log.warning(
                "feed.reconnect",
                feed=name,
                delay_s=round(delay, 3),
                reason=decision.reason,
                error=type(error).__name__,
                lived_s=round(lived_s, 3),
            )
            await self._sleep(delay)

    async def _session(self) -> None:
        name = self._source.name
        try:
            async with self._source.connection() as conn:
                self._session_up = True
                self._stats.connects += 1
                self._stats.connected = True
                self._quiet_since = self._now()
                _log.info("feed.connected", feed=name, url=self._source.url)
                gate = _Gate()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._watchdog(), name=f"{name}.watchdog")
                    tg.create_task(self._backfill(gate), name=f"{name}.backfill")
                    # Receive in the group's own body, which never ends normally: a
                    # failing child then cancels the body, and Python 3.11's TaskGroup
                    # keeps the task's cancellation count right (it does not if the
                    # body has already finished).
                    await self._receive(conn, gate)
        except ExceptionGroup as group:
            _reraise_cancellation()
            raise _leaf(group) from None

    async def _receive(self, conn: Connection, gate: _Gate) -> None:
        while True:
            received = await conn.receive()
            self._stats.frames += 1
            self._quiet_since = self._now()
            self._take(received, gate)

    def _take(self, received: Received, gate: _Gate) -> None:
        for rejection in received.rejected:
            self._rejects.record(rejection.reason, rejection.detail)
        for kind, bars in received.batches:
            for run in _by_time(bars):
                if gate.open:
                    self._deliver(kind, run)
                else:
                    self._hold(gate, kind, run)

    def _hold(self, gate: _Gate, kind: FeedKind, bars: tuple[Bar, ...]) -> None:
        gate.held.append((kind, bars))
        gate.held_bars += len(bars)
        while gate.held_bars > self._policy.backfill_buffer_bars and gate.held:
            _, dropped = gate.held.pop(0)
            gate.held_bars -= len(dropped)
            for bar in dropped:
                self._rejects.record("buffer_overflow", f"{bar.symbol} {bar.time}")

    def _deliver(self, kind: FeedKind, bars: tuple[Bar, ...]) -> None:
        if kind in _MINUTE_KINDS:
            fresh: list[Bar] = []
            for bar in bars:
                if bar.time > self._last_emitted.get(bar.symbol, -1):
                    self._last_emitted[bar.symbol] = bar.time
                    fresh.append(bar)
                else:
                    self._stats.duplicates += 1
            if not fresh:
                return
            bars = tuple(fresh)
            if self._watermark is None or bars[0].time > self._watermark:
                self._watermark = bars[0].time
        now = self._now()
        stats = self._stats
        stats.bars += len(bars)
        if kind == "backfill":
            stats.backfilled += len(bars)
        stats.last_bar_at = now
        if stats.last_bar_time is None or bars[0].time > stats.last_bar_time:
            stats.last_bar_time = bars[0].time
        self._emit(FeedBatch(bars, kind, now))

    async def _backfill(self, gate: _Gate) -> None:
        name = self._source.name
        # Resume at the newest minute seen (inclusive: its other symbols may be
        # missing); the duplicates this fetches are dropped in `_deliver`.
        start = self._warmup_from if self._watermark is None else self._watermark
        end = int(self._now()) // 60 * 60 - 1  # only minutes that have ended
        if end >= start:
            try:
                received = await self._source.backfill(start, end)
            except FeedError as exc:
                self._stats.backfill_errors += 1
                _log.warning(
                    "feed.backfill_failed",
                    feed=name,
                    gap_s=end - start + 1,
                    error=type(exc).__name__,
                    detail=exc.detail,
                )
            else:
                before = self._stats.backfilled
                for rejection in received.rejected:
                    self._rejects.record(rejection.reason, rejection.detail)
                bars = sorted(
                    (bar for _, group in received.batches for bar in group),
                    key=lambda b: (b.time, b.symbol),
                )
                for run in _by_time(tuple(bars)):
                    self._deliver("backfill", run)
                _log.info(
                    "feed.backfill",
                    feed=name,
                    bars=self._stats.backfilled - before,
                    gap_s=end - start + 1,
                )
        gate.open = True
        held, gate.held, gate.held_bars = gate.held, [], 0
        for kind, run in held:
            self._deliver(kind, run)

    async def _watchdog(self) -> None:
        if self._silence_timeout_s <= 0:
            return
        name = self._source.name
        timeout = self._silence_timeout_s
        while True:
            now = self._now()
            if not self._is_market_open(now):
                self._quiet_since = now  # quiet while closed is expected; count from the open
                await self._sleep(timeout / 4)
                continue
            quiet_s = now - self._quiet_since
            if quiet_s >= timeout:
                self._stats.silences += 1
                _log.warning("feed.silence", feed=name, quiet_s=round(quiet_s, 3))
                raise FeedSilent(name, f"no data for {quiet_s:.0f} s while the market is open")
            # Wake when the silence would reach the limit (not a poll later), but look at
            # the market at least every quarter of it.
            await self._sleep(min(timeout - quiet_s, timeout / 4))
