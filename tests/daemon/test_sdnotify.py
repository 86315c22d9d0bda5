"""sd_notify over real unix datagram sockets (path and abstract), WATCHDOG_USEC parsing, and
the watchdog gate's decisions on a fake clock."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from daemon.sdnotify import (
    Notifier,
    Observation,
    Verdict,
    WatchdogGate,
    watchdog_interval_s,
    watchdog_loop,
    watchdog_timeout_s,
)

OPEN = 1_710_163_800.0  # 2024-03-11 09:30 ET: a session's open


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket in a short temp dir (sun_path is 108 bytes at most)."""
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        path = str(Path(d) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        try:
            yield sock, path
        finally:
            sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on `sock`, decoded (they were sent before we look)."""
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_messages_reach_a_path_socket(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    assert n.enabled
    assert n.ready("warmed up: 3 symbols")
    assert n.status("line one\nline two")
    assert n.watchdog()
    assert n.stopping()
    n.close()
    assert received(sock) == [
        "READY=1\nSTATUS=warmed up: 3 symbols",
        "STATUS=line one line two",  # one line: a newline would start a new assignment
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_abstract_namespace_socket() -> None:
    name = f"iwm-alerts-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        n = Notifier(env={"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert n.watchdog()
        assert received(sock) == ["READY=1", "WATCHDOG=1"]
    finally:
        sock.close()


def test_reloading_carries_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier(path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading("reloading rules")
    assert n.extend_timeout(30)
    (reload_msg, extend_msg) = received(sock)
    fields = dict(line.split("=", 1) for line in reload_msg.split("\n"))
    assert fields["RELOADING"] == "1"
    assert fields["STATUS"] == "reloading rules"
    assert int(fields["MONOTONIC_USEC"]) >= before
    assert extend_msg == "EXTEND_TIMEOUT_USEC=30000000"


def test_unset_socket_is_a_no_op() -> None:
    n = Notifier(env={})
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()


def test_unsupported_socket_kind_is_a_no_op() -> None:
    assert not Notifier(env={"NOTIFY_SOCKET": "vsock:2:1234"}).ready()


def test_send_failure_never_raises_and_logs_once(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody-listens"))
    with structlog.testing.capture_logs() as logs:
        assert not n.ready()
        assert not n.watchdog()
        assert not n.watchdog()
    assert [e["event"] for e in logs] == ["sdnotify.send_failed"]


def test_watchdog_usec_and_pid() -> None:
    pid = os.getpid()
    assert watchdog_timeout_s({"WATCHDOG_USEC": "60000000"}) == 60.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(pid)}) == 30.0
    # Inherited by a child: the watchdog is the parent's business.
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None


def obs(
    now: float,
    *,
    session: bool = True,
    last_bar: float | None = None,
    depth: int = 0,
    delivered: int = 0,
    connected: bool = True,
) -> Observation:
    return Observation(
        now=now,
        session_open_at=OPEN if session else None,
        feed_connected=connected,
        last_bar_at=last_bar,
        outbox_depth=depth,
        delivered=delivered,
    )


def test_gate_feed_rules() -> None:
    gate = WatchdogGate(max_bar_age_s=300, max_stuck_s=600)
    # Closed market: no bars is normal, even with an old last bar or no feed session.
    assert gate.decide(obs(OPEN - 3600, session=False, last_bar=OPEN - 86_400)).healthy
    assert gate.decide(obs(OPEN - 3600, session=False, connected=False)).healthy
    # Just after the open, yesterday's last bar does not count against us...
    assert gate.decide(obs(OPEN + 120, last_bar=OPEN - 60_000)).healthy
    # ...but no bar for 5 minutes into the session does.
    stale = gate.decide(obs(OPEN + 301, last_bar=OPEN - 60_000, connected=False))
    assert not stale.healthy
    assert stale.reasons == ("no bar for 301 s in the session (feed disconnected)",)
    # Bars flowing: healthy; the feed falls silent mid-session: not.
    assert gate.decide(obs(OPEN + 3600, last_bar=OPEN + 3590)).healthy
    assert not gate.decide(obs(OPEN + 3600 + 301, last_bar=OPEN + 3600)).healthy


def test_gate_waiting_for_the_provider_is_not_being_stuck() -> None:
    gate = WatchdogGate(max_bar_age_s=300, max_stuck_s=600)
    hours_in = OPEN + 7200
    # Start-up still waits for the provider: the observer passes `now` as the feed's start.
    waiting = Observation(
        now=hours_in, session_open_at=OPEN, feed_connected=False, last_bar_at=None,
        outbox_depth=0, delivered=0, feed_started_at=hours_in,
    )  # fmt: skip
    assert gate.decide(waiting).healthy
    # The feed started late: its bar age counts from then, not from the open...
    late = replace(waiting, now=hours_in + 200, feed_started_at=hours_in)
    assert gate.decide(late).healthy
    # ...and a feed that started and then gave nothing for too long is stuck after all.
    stuck = replace(waiting, now=hours_in + 301, feed_started_at=hours_in)
    assert gate.decide(stuck).reasons == ("no bar for 301 s in the session (feed disconnected)",)


def test_gate_outbox_rules() -> None:
    gate = WatchdogGate(max_bar_age_s=300, max_stuck_s=600)
    t = OPEN - 7200  # before the open: only the outbox is judged
    assert gate.decide(obs(t, session=False, depth=3, delivered=10)).healthy
    assert gate.decide(obs(t + 599, session=False, depth=5, delivered=10)).healthy
    stuck = gate.decide(obs(t + 601, session=False, depth=8, delivered=10))
    assert not stuck.healthy
    assert "outbox stuck: 8 waiting" in stuck.reasons[0]
    # The same observation twice gives the same answer (no hidden progress).
    assert not gate.decide(obs(t + 601, session=False, depth=8, delivered=10)).healthy
    # One alert delivered: progress, the clock restarts.
    assert gate.decide(obs(t + 700, session=False, depth=7, delivered=11)).healthy
    assert gate.decide(obs(t + 1299, session=False, depth=7, delivered=11)).healthy
    assert not gate.decide(obs(t + 1301, session=False, depth=7, delivered=11)).healthy
    # An empty outbox is never stuck.
    assert gate.decide(obs(t + 5000, session=False, depth=0, delivered=11)).healthy
    assert gate.decide(obs(t + 5500, session=False, depth=1, delivered=11)).healthy


def test_gate_reports_both_problems() -> None:
    gate = WatchdogGate(max_bar_age_s=60, max_stuck_s=60)
    gate.decide(obs(OPEN + 10, depth=2))
    verdict = gate.decide(obs(OPEN + 100, depth=2))
    assert len(verdict.reasons) == 2
    assert verdict.summary.startswith("degraded: no bar for 100 s")


def test_gate_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        WatchdogGate(max_bar_age_s=0)


class _Stop(Exception):
    pass


async def test_watchdog_loop_pings_only_while_healthy(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    clock = [OPEN + 60]
    # Bars until OPEN+120, then silence: stale after OPEN+420; the feed comes back at OPEN+600.
    last_bar = {"t": OPEN + 60}

    def observe(now: float) -> Observation:
        if now <= OPEN + 120 or now >= OPEN + 600:
            last_bar["t"] = now
        if now == OPEN + 480:
            raise OSError("database is locked")
        return obs(now, last_bar=last_bar["t"])

    gate = WatchdogGate(observe, clock=lambda: clock[0], max_bar_age_s=300)
    ticks: list[float] = []
    messages: list[str] = []

    async def sleep(s: float) -> None:
        messages.extend(received(sock))  # read as systemd would: the queue is short
        ticks.append(clock[0])
        clock[0] += s
        if len(ticks) == 12:
            raise _Stop

    with structlog.testing.capture_logs() as logs, pytest.raises(_Stop):
        await watchdog_loop(Notifier(path), gate, 60.0, sleep=sleep)
    # Ticks at +60 ... +720: healthy up to +420 (age 300), unhealthy at +480 (observe fails)
    # and +540 (age 420), healthy again from +600.
    assert messages == [
        *["WATCHDOG=1"] * 7,
        "STATUS=degraded: observation failed: OSError",
        "STATUS=degraded: no bar for 420 s in the session (feed connected)",
        "WATCHDOG=1",
        "STATUS=running",
        *["WATCHDOG=1"] * 2,
    ]
    events = [e["event"] for e in logs]
    assert events == ["watchdog.observe_failed", "watchdog.degraded", "watchdog.recovered"]


async def test_watchdog_loop_needs_a_positive_interval() -> None:
    gate = WatchdogGate(obs)
    with pytest.raises(ValueError, match="positive"):
        await watchdog_loop(Notifier(env={}), gate, 0.0)


def test_check_without_observe_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="observe"):
        WatchdogGate().check()


def test_verdict_summary() -> None:
    assert Verdict(True).summary == "ok"
    assert Verdict(False, ("a", "b")).summary == "degraded: a; b"


def test_a_full_queue_fails_fast_instead_of_blocking(
    listener: tuple[socket.socket, str],
) -> None:
    # A manager that never reads: its queue fills and further sends fail at once.
    _, path = listener
    n = Notifier(path)
    results = [n.status("x" * 150) for _ in range(5000)]
    assert results[0] is True
    assert results[-1] is False
