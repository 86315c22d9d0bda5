"""When and how soon a feed tries again: backoff delays, the retry policy, what an error means.

`backoff` is an endless sequence of delays (exponential, full jitter, capped):
the daemon's one `RetryPolicy`, with the floor the feeds need when throttled;
`classify` is a plain function that says what an exception means for the
reconnect loop (retry soon, retry much later, give up). No I/O, no clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from daemon.feeds.base import FeedAuthFailed, FeedError, FeedFatal, FeedThrottled
from daemon.retry import RetryPolicy


def backoff(
    initial_s: float = 1.0,
    max_s: float = 60.0,
    factor: float = 2.0,
    min_s: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Endless reconnect delays: exponential growth, full jitter, a cap.

    Attempt n waits a uniform draw from `[min_s, max(min_s, min(max_s, initial_s * factor**n)))`.
    With `min_s = 0` this is AWS's "full jitter"; a positive `min_s` sets a floor
    (e.g. 60 s after "connection limit exceeded"). `rand` returns floats in [0, 1):
    0 gives the floor, towards 1 the ceiling.
    """
    if not (initial_s > 0 and math.isfinite(initial_s)):
        raise ValueError(f"initial_s must be > 0 and finite, got {initial_s}")
    if not factor >= 1.0:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if not (0.0 <= min_s <= max_s and math.isfinite(max_s)):
        raise ValueError(f"need 0 <= min_s <= max_s < inf, got min_s={min_s} max_s={max_s}")
    policy = RetryPolicy(base_s=initial_s, cap_s=max_s, jitter=1.0, factor=factor, floor_s=min_s)
    # The policy's draw takes jitter off the ceiling; `rand` here measures up from the floor.
    return policy.delays(lambda: 1.0 - rand())


@dataclass(frozen=True)
class ReconnectPolicy:
    """How the loop retries. Defaults suit a VPS talking to Alpaca."""

    backoff_initial_s: float = 1.0
    """Ceiling of the first ordinary retry delay; doubles per failed attempt."""
    backoff_max_s: float = 60.0
    """Cap of ordinary retry delays."""
    throttled_min_s: float = 60.0
    """Floor of the delay after the server refused us for load (406 connection limit, HTTP 429)."""
    throttled_initial_s: float = 90.0
    """Ceiling of the first throttled delay. Alpaca keeps a half-dead session up to ~90 s."""
    throttled_max_s: float = 900.0
    """Cap of throttled delays."""
    stable_after_s: float = 10.0
    """A session must live this long to reset the backoff (no storm on accept-then-close)."""
    max_auth_failures: int = 3
    """Consecutive refused logins before the feed gives up with `FeedFatal`."""
    reject_log_interval_s: float = 60.0
    """At most one `bar.rejected` line per reason per this many seconds (all are counted)."""
    backfill_buffer_bars: int = 10_000
    """Live bars held back while a backfill runs; beyond this the oldest are dropped and counted."""

    def __post_init__(self) -> None:
        checks = {
            "backoff_initial_s": 0 < self.backoff_initial_s <= self.backoff_max_s,
            "throttled_min_s": 0 <= self.throttled_min_s <= self.throttled_max_s,
            "throttled_initial_s": 0 < self.throttled_initial_s <= self.throttled_max_s,
            "stable_after_s": self.stable_after_s >= 0,
            "max_auth_failures": self.max_auth_failures >= 1,
            "reject_log_interval_s": self.reject_log_interval_s >= 0,
            "backfill_buffer_bars": self.backfill_buffer_bars >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid reconnect policy: {', '.join(bad)} out of range")

    def ordinary_delays(self, rand: Callable[[], float] = random.random) -> Iterator[float]:
        """Delays after ordinary failures (network, server restart, silence)."""
        return backoff(self.backoff_initial_s, self.backoff_max_s, rand=rand)

    def throttled_delays(self, rand: Callable[[], float] = random.random) -> Iterator[float]:
        """Delays after the server said it is overloaded or we have too many connections."""
        return backoff(
            self.throttled_initial_s, self.throttled_max_s, min_s=self.throttled_min_s, rand=rand
        )


Action = Literal["retry", "retry_later", "fatal", "raise"]


@dataclass(frozen=True)
class Decision:
    """What the loop does about an exception that ended a session or an attempt.

    `retry`: ordinary backoff. `retry_later`: throttled backoff, at least
    `retry_after_s` if given. `fatal`: raise `FeedFatal`. `raise`: not a feed
    error (a bug): let it propagate unchanged.
    """

    action: Action
    reason: str
    retry_after_s: float | None = None


def classify(exc: Exception, *, auth_failures: int, policy: ReconnectPolicy) -> Decision:
    """Classify `exc`. `auth_failures` counts consecutive refused logins, this one included."""
    if isinstance(exc, FeedFatal):
        return Decision("fatal", exc.detail)
    if isinstance(exc, FeedAuthFailed):
        if auth_failures >= policy.max_auth_failures:
            return Decision(
                "fatal", f"{exc.detail} ({auth_failures} consecutive authentication failures)"
            )
        return Decision("retry", exc.detail)
    if isinstance(exc, FeedThrottled):
        return Decision("retry_later", exc.detail, exc.retry_after_s)
    if isinstance(exc, FeedError):
        return Decision("retry", exc.detail)
    return Decision("raise", f"{type(exc).__name__}: {exc}")
