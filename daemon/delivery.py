"""Per-sink delivery loops: the outbox's due alerts, sent one at a time, in order.

Each sink gets its own `DeliveryLoop`, run as its own task, so a broken sink
never delays another. A loop claims the due head of its sink's queue, sends
alert by alert and settles each one in the outbox:

- sent: `delivered`;
- `SinkUnavailable`: `retry` after max(the peer's `retry_after_s`, an
  exponential, jittered, capped backoff by attempt: the daemon's
  `RetryPolicy`, by the attempt count the outbox keeps), and stop for this round:
  the alerts behind it wait, so the sink sees them in order;
- `SinkRejected`: `rejected`, and on to the next alert.

Between rounds it sleeps until the head of the queue is due or `wake()` is
called (ingest recorded new alerts). `drain` is for shutdown: it delivers
what it can within a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog

from daemon.outbox import Outbox
from daemon.retry import RetryPolicy
from daemon.sinks.base import Sender, SinkRejected, SinkUnavailable
from signals.alerts import Alert

_log = structlog.get_logger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Coroutine[Any, Any, None]]

_SENT: Final = "sent"
_BLOCKED: Final = "blocked"
_SKIPPED: Final = "skipped"


@dataclass(frozen=True, kw_only=True)
class DeliveryOptions:
    """How a `DeliveryLoop` retries, batches and logs.

    Backoff after failed attempt n is `backoff_initial_s * 2**(n-1)`, capped
    at `backoff_max_s`, less up to `jitter` of itself at random (so that alerts
    held back by one outage do not all come back at the same instant); a peer's
    `retry_after_s` is honoured when longer. `max_attempts` (None: retry
    forever) turns a sink that stays unavailable for one alert into a
    rejection, so the rest of its queue can move. Alerts are claimed `batch`
    at a time; with nothing due the loop looks again after `idle_s` even if
    never woken. Retry lines are logged at most once per `log_every_s` (with
    a `suppressed` count), so a flapping sink cannot flood the log.

    `clock` gives epoch seconds (the outbox's time base) and `sleep` waits;
    both are injectable for tests, like `rng`.
    """

    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    jitter: float = 0.5
    max_attempts: int | None = None
    batch: int = 20
    idle_s: float = 60.0
    log_every_s: float = 60.0
    clock: Clock = time.time
    sleep: Sleep = asyncio.sleep
    rng: random.Random | None = None

    def __post_init__(self) -> None:
        initial, cap = self.backoff_initial_s, self.backoff_max_s
        if not 0 < initial <= cap:
            raise ValueError(
                f"need 0 < backoff_initial_s <= backoff_max_s, got {initial} and {cap}"
            )
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 or None, got {self.max_attempts}")
        if self.batch < 1 or self.idle_s <= 0 or self.log_every_s < 0:
            raise ValueError("batch and idle_s must be > 0 and log_every_s >= 0")


class DeliveryLoop:
    """Delivers one sink's alerts from the outbox, in order, with retries (as `options` say).

    `sent`, `failed` (unavailable attempts) and `rejected` count since start-up,
    for the health endpoint. Errors of the outbox itself (the database failing)
    propagate: the supervisor decides.
    """

    def __init__(
        self, outbox: Outbox, sink: Sender, options: DeliveryOptions = DeliveryOptions()
    ) -> None:
        self.outbox = outbox
        self.sink = sink
        self.name: str = sink.name
        self._retry = RetryPolicy(
            base_s=options.backoff_initial_s, cap_s=options.backoff_max_s, jitter=options.jitter
        )
        self._max_attempts = options.max_attempts
        self._batch = options.batch
        self._idle_s = options.idle_s
        self._log_every_s = options.log_every_s
        self._clock = options.clock
        self._sleep = options.sleep
        self._rng = options.rng if options.rng is not None else random.Random()
        self._wake = asyncio.Event()
        # run() and drain() may overlap at shutdown; one sender at a time keeps the order.
        self._lock = asyncio.Lock()
        self._failing_since: float | None = None
        self._last_failure_log: float = -math.inf
        self._suppressed = 0
        self.sent = 0
        self.failed = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return f"DeliveryLoop(sink={self.name!r})"

    def wake(self) -> None:
        """New alerts were recorded: look at the queue now rather than at the next due time."""
        self._wake.set()

    def retry_now(self) -> None:
        """The sink is (back) up: its backlog is due now, in order, not after the backoff."""
        moved = self.outbox.due_now(self.name, self._clock())
        if moved:
            _log.info("delivery.backlog_due", sink=self.name, alerts=moved)
        self._wake.set()

    async def run(self) -> None:
        """Deliver forever (until cancelled)."""
        while True:
            # Cleared before looking, so a wake() during a send is not lost.
            self._wake.clear()
            async with self._lock:
                await self._deliver_due()
            await self._wait(self._until_due())

    async def drain(self, timeout_s: float) -> bool:
        """Deliver what is due, retrying, until the queue is empty (True) or `timeout_s` passes.

        Retry delays are waited out inside the budget. Meant for orderly
        shutdown: what is not delivered stays in the outbox for the next start.
        """
        deadline = self._clock() + timeout_s
        # The hard limit also bounds a send that hangs; the clock deadline bounds waiting.
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    async with self._lock:
                        await self._deliver_due()
                    if self.outbox.depth(self.name) == 0:
                        return True
                    left = deadline - self._clock()
                    if left <= 0:
                        break
                    await self._sleep(min(self._until_due(), left))
        except TimeoutError:
            pass
        _log.warning(
            "delivery.drain_incomplete", sink=self.name, depth=self.outbox.depth(self.name)
        )
        return False

    def _until_due(self) -> float:
        due = self.outbox.next_due(self.name)
        if due is None:
            return self._idle_s
        return min(max(due - self._clock(), 0.0), self._idle_s)

    async def _wait(self, delay_s: float) -> None:
        """Sleep `delay_s` or until woken, whichever comes first."""
        if self._wake.is_set() or delay_s <= 0:
            return
        if self._sleep is asyncio.sleep:  # real time: a timeout on the event, no extra tasks
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._wake.wait()
            return
        async with asyncio.TaskGroup() as tg:
            woken = tg.create_task(self._wake.wait(), name=f"delivery.{self.name}.wake")
            slept = tg.create_task(self._sleep(delay_s), name=f"delivery.{self.name}.sleep")
            # The first to finish cancels the other; cancelled children end the group quietly.
            woken.add_done_callback(lambda _: slept.cancel())
            slept.add_done_callback(lambda _: woken.cancel())

    async def _deliver_due(self) -> None:
        """Send due alerts in order until none is due or one is held back for a retry."""
        while True:
            batch = self.outbox.claim(self.name, self._clock(), self._batch)
            if not batch:
                return
            settled, in_flight = 0, False
            try:
                for alert in batch:
                    in_flight = True
                    outcome = await self._send(alert)
                    in_flight = False
                    settled += 1
                    if outcome == _BLOCKED:
                        return
            finally:
                self._put_back(batch[settled:], in_flight)
            if len(batch) < self._batch:
                return

    def _put_back(self, rest: Sequence[Alert], in_flight: bool) -> None:
        """Return claimed alerts that were not settled (a retry, or cancellation) to the queue."""
        if not rest:
            return
        now = self._clock()
        if in_flight:
            # Interrupted mid-send: it may have gone out, so it keeps its attempt and
            # is sent again (at-least-once; this is the one possible duplicate).
            self.outbox.retry(rest[0].id, self.name, now, 0.0, "interrupted")
            rest = rest[1:]
        self.outbox.release([alert.id for alert in rest], self.name, now)

    async def _send(self, alert: Alert) -> str:
        attempt = self.outbox.attempts(alert.id, self.name)
        try:
            await self.sink.send(alert)
        except SinkRejected as exc:
            self.outbox.rejected(alert.id, self.name, self._clock(), exc.detail)
            self.rejected += 1
            _log.warning(
                "alert.rejected",
                alert_id=alert.id,
                sink=self.name,
                attempt=attempt,
                error=exc.detail,
            )
            return _SKIPPED
        except SinkUnavailable as exc:
            return self._unavailable(alert, attempt, exc.detail, exc.retry_after_s)
        except Exception as exc:
            # A sink should only raise the two above; anything else is a bug in its adapter.
            # Treat it as "try later" so one faulty sink cannot take the daemon down.
            _log.exception("alert.send_crashed", alert_id=alert.id, sink=self.name)
            return self._unavailable(alert, attempt, f"{type(exc).__name__}: {exc}", None)
        now = self._clock()
        self.outbox.delivered(alert.id, self.name, now)
        self.sent += 1
        if self._failing_since is not None:
            _log.info(
                "delivery.recovered",
                sink=self.name,
                down_s=round(now - self._failing_since, 3),
                suppressed=self._suppressed,
            )
            self._failing_since, self._suppressed = None, 0
            self._last_failure_log = -math.inf
        _log.info("alert.sent", alert_id=alert.id, sink=self.name, attempt=attempt)
        return _SENT

    def _unavailable(
        self, alert: Alert, attempt: int, error: str, retry_after_s: float | None
    ) -> str:
        now = self._clock()
        self.failed += 1
        if self._failing_since is None:
            self._failing_since = now
        if self._max_attempts is not None and attempt >= self._max_attempts:
            reason = f"gave up after {attempt} attempts: {error}"
            self.outbox.rejected(alert.id, self.name, now, reason)
            self.rejected += 1
            _log.warning(
                "alert.rejected", alert_id=alert.id, sink=self.name, attempt=attempt, error=reason
            )
            return _SKIPPED
        delay = self._retry.delay_s(attempt, self._rng.random, retry_after_s)
        self.outbox.retry(alert.id, self.name, now, delay, error)
        # A flapping sink fails on every alert: one line per log_every_s, with a count.
        if now - self._last_failure_log >= self._log_every_s:
            _log.warning(
                "alert.retry",
                alert_id=alert.id,
                sink=self.name,
                attempt=attempt,
                delay_s=round(delay, 3),
                error=error,
                suppressed=self._suppressed,
            )
            self._last_failure_log, self._suppressed = now, 0
        else:
            self._suppressed += 1
        return _BLOCKED


async def drain_all(loops: Sequence[DeliveryLoop], timeout_s: float) -> bool:
    """Drain every loop concurrently within `timeout_s`; True if every queue emptied."""
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(loop.drain(timeout_s), name=f"delivery.{loop.name}.drain")
            for loop in loops
        ]
    return all(task.result() for task in tasks)
