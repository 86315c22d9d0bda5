"""The one retry policy of the daemon: how long to wait before trying again.

`RetryPolicy` is plain data (base, cap, jitter, growth factor, floor) with two
pure functions of it: `delay_s(attempt)` for a caller that counts attempts
itself (the outbox persists the count per delivery), and `delays()`, the
same numbers as an endless sequence (reconnect loops). `parse_retry_after`
is the one reader of an HTTP `Retry-After` header (seconds or an HTTP date).

No I/O, no clock, no sleeping here: randomness comes in as `rand` (floats in
[0, 1)), the current time as `now_s`, and every caller waits with its own
injectable `sleep`.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Capped exponential backoff with jitter.

    After failed attempt n (1-based) the ceiling is `base_s * factor**(n-1)`,
    capped at `cap_s` and never below `floor_s`; the delay is the ceiling less
    up to `jitter` of its span above the floor, at random. `jitter = 0` waits
    exactly the ceiling; `jitter = 1` with `floor_s = 0` is AWS's "full
    jitter" (uniform on [0, ceiling]); `jitter = 0.5` spreads a crowd of
    clients cut off together over [ceiling/2, ceiling].

    A server's Retry-After is honoured when it asks for longer than the
    backoff, up to `retry_after_max_s`: coming back later than asked is
    always allowed, sooner never is.
    """

    base_s: float = 1.0
    """Ceiling of the delay after the first failure."""
    cap_s: float = 60.0
    """No ceiling above this (may be `inf` when the attempts are bounded elsewhere)."""
    jitter: float = 0.0
    """Fraction of the ceiling's span above the floor that may be taken off at random."""
    factor: float = 2.0
    """Growth of the ceiling per failed attempt."""
    floor_s: float = 0.0
    """No delay below this (e.g. 60 s after "connection limit exceeded")."""
    retry_after_max_s: float = math.inf
    """Cap of a server's Retry-After (a server asking for a day is not waited a day for)."""

    def __post_init__(self) -> None:
        checks = {
            "base_s": 0.0 <= self.base_s < math.inf,
            "cap_s": self.cap_s >= self.floor_s,
            "jitter": 0.0 <= self.jitter <= 1.0,
            "factor": 1.0 <= self.factor < math.inf,
            "floor_s": 0.0 <= self.floor_s < math.inf,
            "retry_after_max_s": self.retry_after_max_s >= 0.0,
        }
        bad = [name for name, ok in checks.items() if not ok]  # NaN fails every check
        if bad:
            raise ValueError(f"invalid retry policy: {', '.join(bad)} out of range ({self})")

    def ceiling_s(self, attempt: int) -> float:
        """The delay after failed attempt `attempt` (1-based) before jitter."""
        try:
            grown = self.base_s * self.factor ** max(attempt - 1, 0)
        except OverflowError:  # factor**n beyond a float: far above any cap
            grown = math.inf if self.base_s > 0 else 0.0
        return max(self.floor_s, min(self.cap_s, grown))

    def delay_s(
        self,
        attempt: int,
        rand: Callable[[], float] = random.random,
        retry_after_s: float | None = None,
    ) -> float:
        """The wait after failed attempt `attempt` (1-based), jittered with `rand()`.

        `rand() = 0` gives the ceiling, values towards 1 take up to `jitter` of
        the span above the floor off it. `retry_after_s` (the server's wait, if
        it said) wins when longer, capped at `retry_after_max_s`.
        """
        high, draw = self.ceiling_s(attempt), self.jitter * rand()
        delay = high if math.isinf(high) else high - (high - self.floor_s) * draw
        if retry_after_s is not None and math.isfinite(retry_after_s):
            delay = max(delay, min(retry_after_s, self.retry_after_max_s))
        return delay

    def delays(self, rand: Callable[[], float] = random.random) -> Iterator[float]:
        """`delay_s(1), delay_s(2), ...` without end, for a loop that keeps no count."""
        attempt = 0
        while True:
            attempt += 1
            yield self.delay_s(attempt, rand)


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a `Retry-After` header value, given the epoch time `now_s`.

    Either delay-seconds (`"120"`; a fraction is accepted) or an HTTP date
    (`"Wed, 21 Oct 2015 07:28:00 GMT"`, seconds from `now_s`). A negative
    number or a date in the past means "now" (0.0). None when there is no
    header or it is neither form (garbage, `nan`, `inf`): the caller's own
    backoff applies.
    """
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" or an obsolete zone: RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now_s, 0.0)
