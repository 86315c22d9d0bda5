"""Rejected input: what a bar must meet (`BarLimits`), and every rejection counted with
`bar.rejected` logged at most once per reason per interval (`RejectLog`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from daemon.feeds.base import FeedStats

_log = structlog.get_logger(__name__)

_DETAIL_CHARS = 200


class RejectLog:
    """Counts every rejection in `stats`; logs `bar.rejected` at most once per reason per interval."""

    def __init__(
        self, feed: str, stats: FeedStats, interval_s: float, now: Callable[[], float]
    ) -> None:
        self._feed, self._stats, self._interval_s, self._now = feed, stats, interval_s, now
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def record(self, reason: str, detail: str) -> None:
        """Count one rejection; log it unless this reason was logged less than an interval ago."""
        self._stats.reject(reason)
        count = self._unlogged.get(reason, 0) + 1
        now = self._now()
        last = self._last_logged.get(reason)
        if last is not None and now - last < self._interval_s:
            self._unlogged[reason] = count
            return
        self._last_logged[reason] = now
        self._unlogged[reason] = 0
        _log.warning(
            "bar.rejected",
            feed=self._feed,
            reason=reason,
            count=count,
            detail=detail[:_DETAIL_CHARS],
        )


@dataclass(frozen=True)
class BarLimits:
    """What a decoded bar must meet besides its own checks: one of `symbols`, and a start no
    later than `max_future_s` past `now_s` (the wall clock when it arrived)."""

    symbols: frozenset[str]
    now_s: float
    max_future_s: float

    @property
    def latest_s(self) -> float:
        """The latest bar start accepted."""
        return self.now_s + self.max_future_s
