"""systemd notifications spoken directly (no libsystemd), and a watchdog that means something.

`Notifier` sends sd_notify(3) datagrams to `$NOTIFY_SOCKET`: newline-separated
`KEY=VALUE` assignments over an `AF_UNIX` `SOCK_DGRAM` socket, where an
address starting with `@` is in the Linux abstract namespace. Without the
variable (not run by systemd, or `Type=` is not `notify`) every call is a
no-op. A failed send never raises: it is logged once and the daemon goes on.

The watchdog is split the sans-I/O way. `WatchdogGate.decide(observation)` is
a pure decision on an `Observation` (what the daemon looks like at one
instant, clock passed in): ping only while the feed delivers bars during the
session and the outbox drains. `watchdog_loop` is the thin async shell that
observes, decides and sends `WATCHDOG=1` every half of `WatchdogSec=`. A
daemon that stops making progress therefore stops pinging and systemd
restarts it, which a plain timer ping from a healthy event loop could never
achieve.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

_log = structlog.get_logger(__name__)

Sleep = Callable[[float], Coroutine[Any, Any, None]]

# One datagram carries every assignment; STATUS= is free text, keep it short.
_MAX_STATUS_CHARS = 200


def _address(value: str) -> str | None:
    """The `sendto` address for a `$NOTIFY_SOCKET` value; None when it is not a unix socket."""
    if value.startswith("@"):
        return "\0" + value[1:]  # the abstract namespace: a leading NUL, no file
    if value.startswith("/"):
        return value
    return None  # e.g. `vsock:CID:PORT` (VMs): not something this daemon runs under


def _one_line(text: str) -> str:
    """STATUS= is a single line: newlines would start new assignments."""
    flat = " ".join(text.split())
    return flat[:_MAX_STATUS_CHARS]


class Notifier:
    """Sends sd_notify messages to `$NOTIFY_SOCKET`; a no-op when it is unset.

    The socket is created on the first send (no I/O in the constructor) and
    is non-blocking: a manager that does not read cannot stall the event
    loop. Pass `socket_path` to override the environment (tests).
    """

    def __init__(
        self, socket_path: str | None = None, *, env: Mapping[str, str] | None = None
    ) -> None:
        environ = os.environ if env is None else env
        raw = socket_path if socket_path is not None else environ.get("NOTIFY_SOCKET")
        self._raw = raw or None
        self._address = _address(raw) if raw else None
        self._sock: socket.socket | None = None
        self._failing = False
        if raw and self._address is None:
            _log.warning("sdnotify.unsupported_socket", notify_socket=raw)

    @property
    def enabled(self) -> bool:
        """True when a service manager is listening (`$NOTIFY_SOCKET` is a unix socket)."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` assignments in one datagram; True if it went out.

        Never raises: a failure is logged once (and once more after it
        recovers), then reported only through the return value.
        """
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec by default
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                _log.warning(
                    "sdnotify.send_failed",
                    notify_socket=self._raw,
                    error=f"{type(exc).__name__}: {exc}",
                )
            return False
        if self._failing:
            self._failing = False
            _log.info("sdnotify.recovered", notify_socket=self._raw)
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up (warm-up) is complete: `READY=1`, with an optional status line."""
        return self.notify("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        """Show `text` in `systemctl status` (`STATUS=`, one line)."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Keep-alive: `WATCHDOG=1`."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun: `STOPPING=1`."""
        return self.notify("STOPPING=1", *self._status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload has begun: `RELOADING=1` with the `MONOTONIC_USEC=` newer systemd requires.

        Send `ready()` when the reload is done.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *self._status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the start (or stop) timeout: `EXTEND_TIMEOUT_USEC=`."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(int(seconds * 1_000_000), 0)}")

    def close(self) -> None:
        """Close the socket (a later send opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _status(self, status: str | None) -> tuple[str, ...]:
        return () if status is None else (f"STATUS={_one_line(status)}",)

    def __repr__(self) -> str:
        return f"Notifier(notify_socket={self._raw!r})"


def watchdog_timeout_s(
    env: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """`WatchdogSec=` as systemd passed it (`$WATCHDOG_USEC`), or None when no watchdog is armed.

    Like sd_watchdog_enabled(3): `$WATCHDOG_PID`, when set, must be this
    process's pid (the variables leak into children otherwise).
    """
    env = os.environ if env is None else env
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def watchdog_interval_s(
    env: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """How often to ping: half the watchdog timeout, as sd_watchdog_enabled(3) recommends."""
    timeout = watchdog_timeout_s(env, pid)
    return None if timeout is None else timeout / 2


@dataclass(frozen=True)
class Observation:
    """What the daemon looks like at `now` (wall-clock epoch seconds).

    `session_open_at` is when the current regular session opened, None while
    the market is closed. `last_bar_at` is when the feed last handed over a
    bar. `delivered` counts alerts settled by every sink since start-up (sent
    plus rejected): it only grows, and growth is what progress means.
    `feed_started_at` is when the feed started taking bars: `now` while start-up
    still waits for the provider (waiting is not being stuck), None if unknown.
    """

    now: float
    session_open_at: float | None
    feed_connected: bool
    last_bar_at: float | None
    outbox_depth: int
    delivered: int
    feed_started_at: float | None = None


@dataclass(frozen=True)
class Verdict:
    """The gate's answer: healthy (ping), or why not."""

    healthy: bool
    reasons: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """One line for `STATUS=` and logs."""
        return "ok" if self.healthy else "degraded: " + "; ".join(self.reasons)


class WatchdogGate:
    """Decides whether the daemon is making progress, from successive `Observation`s.

    - Feed: during a session the last bar (or the open, whichever is later)
      must be at most `max_bar_age_s` old (counted from the feed's start when it
      started late). Outside the session the feed is not judged: no bars is
      normal then, nor while start-up waits for the provider.
    - Outbox: with alerts waiting, some must be settled at least every
      `max_stuck_s`. An empty outbox is progress by definition.

    `decide` is deterministic given the observations: the only memory is the
    last delivery count and when the outbox last moved, so calling it twice
    with one observation gives one answer. `check` observes through the
    supplied `observe(now)` at `clock()` and decides.
    """

    def __init__(
        self,
        observe: Callable[[float], Observation] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_bar_age_s: float = 600.0,
        max_stuck_s: float = 900.0,
    ) -> None:
        if not (max_bar_age_s > 0 and max_stuck_s > 0):
            raise ValueError(
                f"max_bar_age_s and max_stuck_s must be > 0, got {max_bar_age_s} and {max_stuck_s}"
            )
        self._observe = observe
        self._clock = clock
        self.max_bar_age_s = max_bar_age_s
        self.max_stuck_s = max_stuck_s
        self._delivered: int | None = None
        self._moved_at: float | None = None

    def decide(self, obs: Observation) -> Verdict:
        """The verdict for `obs`, remembering outbox progress for the next call."""
        reasons: list[str] = []
        if obs.session_open_at is not None and obs.now >= obs.session_open_at:
            since = max(
                t
                for t in (obs.session_open_at, obs.last_bar_at, obs.feed_started_at)
                if t is not None
            )
            age = obs.now - since
            if age > self.max_bar_age_s:
                state = "connected" if obs.feed_connected else "disconnected"
                reasons.append(f"no bar for {age:.0f} s in the session (feed {state})")
        if (
            obs.outbox_depth == 0
            or self._delivered is None
            or self._moved_at is None
            or obs.delivered > self._delivered
        ):
            self._moved_at = obs.now
        self._delivered = obs.delivered
        stuck = obs.now - self._moved_at
        if obs.outbox_depth > 0 and stuck > self.max_stuck_s:
            reasons.append(
                f"outbox stuck: {obs.outbox_depth} waiting, none settled in {stuck:.0f} s"
            )
        return Verdict(not reasons, tuple(reasons))

    def check(self) -> Verdict:
        """Observe now and decide."""
        if self._observe is None:
            raise RuntimeError("WatchdogGate.check needs an observe callable")
        return self.decide(self._observe(self._clock()))


async def watchdog_loop(
    notifier: Notifier,
    gate: WatchdogGate,
    interval_s: float,
    *,
    sleep: Sleep = asyncio.sleep,
    running_status: Callable[[], str] = lambda: "running",
) -> None:
    """Every `interval_s`: check the gate, send `WATCHDOG=1` only when healthy. Runs until cancelled.

    A change of verdict is logged (`watchdog.degraded` / `watchdog.recovered`);
    while degraded, `STATUS=` shows why. An error while observing counts as unhealthy: it
    is logged, no ping is sent, and the loop goes on (systemd decides).
    """
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise ValueError(f"interval_s must be a positive number, got {interval_s}")
    healthy: bool | None = None
    while True:
        try:
            verdict = gate.check()
        except Exception as exc:
            _log.exception("watchdog.observe_failed")
            verdict = Verdict(False, (f"observation failed: {type(exc).__name__}",))
        if verdict.healthy:
            notifier.watchdog()
            if healthy is False:
                _log.info("watchdog.recovered")
                notifier.status(running_status())
        else:
            if healthy is not False:  # log the change, not every tick of a long outage
                _log.warning("watchdog.degraded", reasons=list(verdict.reasons))
            notifier.status(verdict.summary)  # current ages, for `systemctl status`
        healthy = verdict.healthy
        await sleep(interval_s)
