"""Start-up that waits instead of dying.

Everything the daemon talks to (the provider's REST and websocket, the Bot
API, the broker, FRED) may be down, slow or misbehaving when it starts. The
daemon therefore comes up without them: each dependency is tried on its own,
with capped, jittered backoff (a `RetryPolicy`), until it answers, and what the daemon still
waits for is kept in one `Waits` table that `/healthz` and systemd's
`STATUS=` show. Only an answer that retrying cannot change (refused
credentials) ends the daemon, as a `Fatal` with its exit code.

- `keep_trying` retries one start-up call until it succeeds (`Dependency` when a try
  needs a time bound, or a test its own sleep).
- `SupervisedSink` starts a sink in the background and keeps it until shutdown;
  until it is up its `send` says "unavailable", so the outbox keeps the alerts.
- `feed_fatal` / `sink_fatal` tell which errors are the end.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import structlog

from daemon.fatal import ExitCode, Fatal
from daemon.feeds.base import FeedAuthFailed, FeedError, FeedFatal, FeedForbidden
from daemon.retry import RetryPolicy
from daemon.secrets import PROVIDER_SECRETS
from daemon.sinks.base import Sink, SinkAuthFailed, SinkUnavailable
from daemon.telegram.start import TelegramAuthError
from signals.alerts import Alert

_log = structlog.get_logger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Coroutine[Any, Any, None]]

START_RETRY = RetryPolicy(base_s=1.0, cap_s=30.0, jitter=0.5)
"""Delays between start-up tries: 1 s doubling up to 30 s, less up to half of itself."""


class Waits:
    """What the daemon is waiting for, by dependency, with the last reason.

    `on_change()` is called after every change (the daemon updates `STATUS=`).
    """

    def __init__(self, on_change: Callable[[], object] | None = None) -> None:
        self._reasons: dict[str, str] = {}
        self.on_change = on_change

    def waiting(self, what: str, reason: str) -> None:
        """`what` did not answer (yet): `reason` is the last error, one line, no secrets."""
        changed = self._reasons.get(what) != reason
        self._reasons[what] = reason
        if changed and self.on_change is not None:
            self.on_change()

    def done(self, what: str) -> None:
        """`what` answered."""
        if self._reasons.pop(what, None) is not None and self.on_change is not None:
            self.on_change()

    def __contains__(self, what: object) -> bool:
        return what in self._reasons

    def __bool__(self) -> bool:
        return bool(self._reasons)

    def as_dict(self) -> Mapping[str, str]:
        """A read-only copy: dependency -> last reason."""
        return MappingProxyType(dict(self._reasons))

    def summary(self) -> str:
        """One line: `waiting for feed (alpaca: REST ConnectError); sink telegram (...)`."""
        if not self._reasons:
            return ""
        parts = [f"{what} ({reason})" for what, reason in sorted(self._reasons.items())]
        return "waiting for " + "; ".join(parts)


def describe(exc: BaseException) -> str:
    """One line for a failed try. Feed and sink errors never carry secrets; the log
    redacts registered secrets from anything else."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer in time"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _never_fatal(_exc: Exception) -> Fatal | None:
    return None


def _ignore(_exc: Exception) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class Dependency:
    """Something start-up waits for, and how to try it: `fatal(exc)` names the errors
    that end the daemon instead (by default none), `backoff` the waits between tries,
    `attempt_timeout_s` (when given) bounds each try, `on_failure` also sees each failure.
    `sleep` and `rng` are injectable for tests. While failing, `waits` says why."""

    what: str
    waits: Waits
    fatal: Callable[[Exception], Fatal | None] = _never_fatal
    backoff: RetryPolicy = START_RETRY
    attempt_timeout_s: float | None = None
    on_failure: Callable[[Exception], None] = _ignore
    sleep: Sleep = asyncio.sleep
    rng: random.Random | None = None

    async def until_answered(self, call: Callable[[], Awaitable[T]]) -> T:
        """`await call()` until it returns (or fails fatally)."""
        rng = self.rng if self.rng is not None else random.Random()
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(self.attempt_timeout_s):
                    result = await call()
            except Exception as exc:  # CancelledError is not an Exception: shutdown goes through
                end = self.fatal(exc)
                if end is not None:
                    raise end from None  # the one line; the cause may quote what we never print
                self.on_failure(exc)
                reason = describe(exc)
                delay = self.backoff.delay_s(attempt, rng.random)
                self.waits.waiting(self.what, reason)
                _log.warning(
                    "startup.waiting",
                    dependency=self.what,
                    attempt=attempt,
                    retry_in_s=round(delay, 1),
                    error=reason,
                )
                await self.sleep(delay)
                continue
            if attempt > 1:
                _log.info("startup.answered", dependency=self.what, attempts=attempt)
            self.waits.done(self.what)
            return result


async def keep_trying(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    waits: Waits,
    fatal: Callable[[Exception], Fatal | None] = _never_fatal,
    backoff: RetryPolicy = START_RETRY,
) -> T:
    """`await call()` until it returns: `Dependency(...).until_answered(call)` for the
    common case."""
    dependency = Dependency(what=what, waits=waits, fatal=fatal, backoff=backoff)
    return await dependency.until_answered(call)


def feed_fatal(exc: Exception) -> Fatal | None:
    """Refused credentials (exit 3, naming the secrets to check) or a feed that gave up
    for another reason (exit 5); None for what a retry may fix."""
    if not isinstance(exc, FeedError):
        return None
    refused = isinstance(exc, FeedAuthFailed | FeedForbidden) or isinstance(
        exc.__cause__, FeedAuthFailed
    )
    if refused:
        names = " and ".join(PROVIDER_SECRETS.get(exc.feed, ())) or "the provider's keys"
        hint = " (and that the plan covers this data)" if isinstance(exc, FeedForbidden) else ""
        return Fatal(
            f"{exc.feed}: the provider refused the credentials ({exc.detail}): check {names}{hint}",
            ExitCode.CREDENTIALS,
        )
    if isinstance(exc, FeedFatal):
        return Fatal(f"{exc.feed}: the feed gave up: {exc.detail}", ExitCode.FEED_GAVE_UP)
    return None


def sink_fatal(exc: Exception) -> Fatal | None:
    """A sink whose credentials were refused at start-up ends the daemon (exit 3)."""
    if isinstance(exc, SinkAuthFailed | TelegramAuthError):
        return Fatal(str(exc), ExitCode.CREDENTIALS)
    return None


class SupervisedSink:
    """Starts `sink` in the background and keeps it until shutdown.

    `run(closing)` enters the sink, retrying with `backoff` (each try bounded by
    `start_timeout_s`), calls `on_up()` once it is up, keeps it open until
    `closing` is set, then leaves it. Until it is up `send` raises
    `SinkUnavailable`, so the delivery loop keeps its alerts in the outbox.
    `start_failures` counts failed tries, for `/metrics`.
    """

    def __init__(
        self,
        sink: Sink,
        waits: Waits,
        *,
        backoff: RetryPolicy = START_RETRY,
        start_timeout_s: float = 60.0,
        on_up: Callable[[], None] = lambda: None,
    ) -> None:
        self.inner = sink
        self.name: str = sink.name
        self.started = False
        self.start_failures = 0
        self._waits = waits
        self._backoff = backoff
        self._start_timeout_s = start_timeout_s
        self.on_up = on_up

    def __repr__(self) -> str:
        return f"SupervisedSink({self.inner!r}, up={self.up})"

    @property
    def problem(self) -> str | None:
        """Why the sink is not up, one line (a sink that says, e.g. MQTT's last error)."""
        if self.up:
            return None
        if not self.started:
            return self._waits.as_dict().get(f"sink {self.name}", "starting")
        said = getattr(self.inner, "problem", None)
        return said if isinstance(said, str) else "not connected"

    @property
    def up(self) -> bool:
        """Started, and connected for a sink that says (MQTT keeps reconnecting itself)."""
        return self.started and bool(getattr(self.inner, "connected", True))

    def _failed(self, _exc: Exception) -> None:
        self.start_failures += 1

    async def run(self, closing: asyncio.Event) -> None:
        """Start, serve until `closing`, stop."""
        dependency = Dependency(
            what=f"sink {self.name}",
            waits=self._waits,
            fatal=sink_fatal,
            backoff=self._backoff,
            attempt_timeout_s=self._start_timeout_s,
            on_failure=self._failed,
        )
        await dependency.until_answered(self.inner.__aenter__)
        self.started = True
        _log.info("sink.started", sink=self.name)
        try:
            self.on_up()
            await closing.wait()
        finally:
            self.started = False
            await self.inner.__aexit__(None, None, None)

    async def send(self, alert: Alert) -> None:
        """Deliver through the sink once it is up."""
        if not self.started:
            raise SinkUnavailable(self.name, "not started yet")
        await self.inner.send(alert)
