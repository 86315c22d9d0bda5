"""Delivery loops: retries with backoff and the peer's retry-after, per-sink order, rejections,
independent sinks, wake-ups, drain, cancellation and SIGKILL mid-delivery (at-least-once)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
import structlog

from daemon.delivery import DeliveryLoop, DeliveryOptions, drain_all
from daemon.outbox import Outbox
from daemon.retry import RetryPolicy
from daemon.sinks.base import SinkRejected, SinkUnavailable
from daemon.sinks.jsonl import JsonlSink
from signals.alerts import Alert, alert_id, decode_alert

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_750_000_000.0


def make_alert(n: int) -> Alert:
    bar = 1_750_000_000 + 60 * n
    return Alert(
        id=alert_id("volume_breakout", "IWM", "1m", bar),
        rule="volume_breakout",
        symbol="IWM",
        timeframe="1m",
        bar_time=bar,
        time=bar + 60,
        title=f"IWM alert {n}",
    )


class FakeTime:
    """A clock that only moves when slept on; every sleep is recorded."""

    def __init__(self, start: float = T0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        self.now += delay_s
        await asyncio.sleep(0)


class ScriptedSink:
    """Fails each alert as scripted (per id, in order), else takes it; `hang` blocks forever."""

    def __init__(
        self,
        name: str,
        clock: Callable[[], float] = time.time,
        *,
        failures: dict[str, list[Exception]] | None = None,
        always: Exception | None = None,
        hang: set[str] | None = None,
    ) -> None:
        self.name = name
        self._clock = clock
        self.failures = failures or {}
        self.always = always
        self.hang = hang or set()
        self.calls: list[tuple[str, float]] = []
        self.received: list[Alert] = []
        self.entered = asyncio.Event()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def send(self, alert: Alert) -> None:
        self.calls.append((alert.id, self._clock()))
        if alert.id in self.hang:
            self.entered.set()
            await asyncio.Event().wait()
        if self.always is not None:
            raise self.always
        script = self.failures.get(alert.id)
        if script:
            raise script.pop(0)
        self.received.append(alert)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox.open(tmp_path / "outbox.sqlite", ["a", "b"], now=T0) as box:
        yield box


async def run_until(
    loops: Sequence[DeliveryLoop], done: Callable[[], bool], steps: int = 5000
) -> None:
    """Run `loops` until `done()`, then cancel them."""
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(loop.run(), name=f"test.{loop.name}") for loop in loops]
        for _ in range(steps):
            if done():
                break
            await asyncio.sleep(0)
        else:
            raise AssertionError("the loops did not get there")
        for task in tasks:
            task.cancel()


def _loop(outbox: Outbox, sink: ScriptedSink, fake: FakeTime, **kwargs: object) -> DeliveryLoop:
    options: dict[str, object] = {
        "backoff_initial_s": 1.0,
        "backoff_max_s": 60.0,
        "jitter": 0.0,
        "clock": fake.clock,
        "sleep": fake.sleep,
    }
    return DeliveryLoop(outbox, sink, DeliveryOptions(**(options | kwargs)))  # type: ignore[arg-type]


# -- retries and order ---------------------------------------------------------------------


async def test_unavailable_is_retried_with_backoff_and_retry_after_in_order(outbox: Outbox) -> None:
    fake = FakeTime()
    alerts = [make_alert(n) for n in range(3)]
    first = alerts[0].id
    sink = ScriptedSink(
        "a",
        fake.clock,
        failures={
            first: [
                SinkUnavailable("a", "down"),  # backoff 1 s
                SinkUnavailable("a", "flood", retry_after_s=10.0),  # peer says 10 > backoff 2
                SinkUnavailable("a", "down"),  # backoff 4 s
            ]
        },
    )
    outbox.record(alerts, None, T0)
    loop = _loop(outbox, sink, fake)
    await run_until([loop], lambda: len(sink.received) == 3)

    assert sink.received == alerts
    # Nothing was sent before it was due, and the alerts behind waited for the first.
    assert sink.calls[:4] == [(first, T0), (first, T0 + 1), (first, T0 + 11), (first, T0 + 15)]
    assert [c[0] for c in sink.calls[4:]] == [alerts[1].id, alerts[2].id]
    assert outbox.attempts(first, "a") == 4
    assert outbox.attempts(alerts[1].id, "a") == 1
    assert (loop.sent, loop.failed, loop.rejected) == (3, 3, 0)
    assert outbox.depth("a") == 0 and outbox.depth("b") == 3  # b's queue is its own


async def test_rejected_alerts_are_skipped_and_the_rest_delivered(outbox: Outbox) -> None:
    fake = FakeTime()
    alerts = [make_alert(n) for n in range(3)]
    sink = ScriptedSink("a", fake.clock, failures={alerts[1].id: [SinkRejected("a", "too big")]})
    outbox.record(alerts, None, T0)
    loop = _loop(outbox, sink, fake)
    with structlog.testing.capture_logs() as logs:
        await run_until([loop], lambda: outbox.depth("a") == 0)
    assert sink.received == [alerts[0], alerts[2]]
    assert outbox.stats()["a"] == {"pending": 0, "sending": 0, "delivered": 2, "rejected": 1}
    assert (loop.sent, loop.failed, loop.rejected) == (2, 0, 1)
    events = [e for e in logs if e["event"] in ("alert.sent", "alert.rejected")]
    assert [e["event"] for e in events] == ["alert.sent", "alert.rejected", "alert.sent"]
    assert events[1]["alert_id"] == alerts[1].id and events[1]["error"] == "too big"
    assert all(e["sink"] == "a" and e["attempt"] == 1 for e in events)


async def test_max_attempts_gives_up_so_the_queue_can_move(outbox: Outbox) -> None:
    fake = FakeTime()
    alerts = [make_alert(n) for n in range(2)]
    sink = ScriptedSink(
        "a", fake.clock, failures={alerts[0].id: [SinkUnavailable("a", "nope")] * 10}
    )
    outbox.record(alerts, None, T0)
    loop = _loop(outbox, sink, fake, max_attempts=3)
    await run_until([loop], lambda: outbox.depth("a") == 0)
    assert sink.received == [alerts[1]]
    assert [c[0] for c in sink.calls].count(alerts[0].id) == 3
    assert outbox.stats()["a"]["rejected"] == 1


async def test_an_unexpected_sink_exception_is_retried_not_fatal(outbox: Outbox) -> None:
    fake = FakeTime()
    alert = make_alert(0)
    sink = ScriptedSink("a", fake.clock, failures={alert.id: [RuntimeError("adapter bug")]})
    outbox.record([alert], None, T0)
    loop = _loop(outbox, sink, fake)
    with structlog.testing.capture_logs() as logs:
        await run_until([loop], lambda: outbox.depth("a") == 0)
    assert sink.received == [alert]
    assert any(e["event"] == "alert.send_crashed" for e in logs)


async def test_a_flapping_sink_logs_rate_limited(outbox: Outbox) -> None:
    fake = FakeTime()
    alert = make_alert(0)
    sink = ScriptedSink("a", fake.clock, failures={alert.id: [SinkUnavailable("a", "flap")] * 8})
    outbox.record([alert], None, T0)
    # Backoff 1,2,4,8,10,10,10,10 s: 55 s of failures, under one log interval.
    loop = _loop(outbox, sink, fake, backoff_max_s=10.0, log_every_s=60.0)
    with structlog.testing.capture_logs() as logs:
        await run_until([loop], lambda: outbox.depth("a") == 0)
    retries = [e for e in logs if e["event"] == "alert.retry"]
    assert len(retries) == 1
    assert retries[0]["delay_s"] == 1.0 and retries[0]["error"] == "flap"
    (recovered,) = [e for e in logs if e["event"] == "delivery.recovered"]
    assert recovered["suppressed"] == 7 and recovered["down_s"] == 55.0


def test_backoff_doubles_caps_and_jitters_downwards() -> None:
    rng = random.Random(7)
    flat = RetryPolicy(base_s=1.0, cap_s=30.0, jitter=0.0)
    assert [flat.delay_s(n, rng.random) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert flat.delay_s(10_000, rng.random) == 30.0
    jittered = RetryPolicy(base_s=0.5, cap_s=20.0, jitter=0.5)
    for n in range(1, 20):
        d = jittered.delay_s(n, rng.random)
        ceiling = min(20.0, 0.5 * 2 ** (n - 1))
        assert ceiling / 2 <= d <= ceiling


def test_bad_settings_are_refused(outbox: Outbox) -> None:
    sink = ScriptedSink("a")
    for kwargs in (
        {"backoff_initial_s": 0.0},
        {"backoff_initial_s": 10.0, "backoff_max_s": 1.0},
        {"jitter": 1.0},
        {"max_attempts": 0},
        {"batch": 0},
    ):
        with pytest.raises(ValueError):
            DeliveryLoop(outbox, sink, DeliveryOptions(**kwargs))


# -- independence and wake-ups (real time, short) ------------------------------------------


async def test_a_broken_sink_never_delays_another(outbox: Outbox) -> None:
    broken = ScriptedSink("a", always=SinkUnavailable("a", "down", retry_after_s=0.02))
    good = ScriptedSink("b")
    loops = [
        DeliveryLoop(
            outbox, s, DeliveryOptions(backoff_initial_s=0.01, backoff_max_s=0.05, idle_s=5.0)
        )
        for s in (broken, good)
    ]
    first = [make_alert(n) for n in range(5)]
    later = [make_alert(n) for n in range(5, 8)]
    outbox.record(first, None, time.time())
    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(loop.run()) for loop in loops]
        async with asyncio.timeout(5):
            while len(good.received) < 5:
                await asyncio.sleep(0.005)
            outbox.record(later, None, time.time())
            for loop in loops:
                loop.wake()
            while len(good.received) < 8:
                await asyncio.sleep(0.005)
            while len(broken.calls) < 3:
                await asyncio.sleep(0.005)
        for task in tasks:
            task.cancel()
    assert time.monotonic() - started < 2.0  # not waiting for idle_s anywhere
    assert good.received == first + later
    assert broken.received == []
    assert {c[0] for c in broken.calls} == {first[0].id}  # the head only: order is kept
    assert outbox.depth("a") == 8 and outbox.depth("b") == 0


async def test_wake_cuts_an_idle_wait_short(outbox: Outbox) -> None:
    sink = ScriptedSink("a")
    loop = DeliveryLoop(outbox, sink, DeliveryOptions(idle_s=3600.0))
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(loop.run())
        await asyncio.sleep(0.02)  # idle now, for an hour
        alert = make_alert(0)
        outbox.record([alert], None, time.time())
        loop.wake()
        async with asyncio.timeout(2):
            while not sink.received:
                await asyncio.sleep(0.005)
        task.cancel()
    assert sink.received == [alert]


# -- drain ---------------------------------------------------------------------------------


async def test_drain_delivers_everything_then_returns_true(outbox: Outbox) -> None:
    fake = FakeTime()
    alerts = [make_alert(n) for n in range(45)]  # more than one claim batch
    sink = ScriptedSink("a", fake.clock, failures={alerts[3].id: [SinkUnavailable("a", "blip")]})
    outbox.record(alerts, None, T0)
    loop = _loop(outbox, sink, fake)
    assert await loop.drain(timeout_s=30.0)
    assert sink.received == alerts
    assert fake.now == T0 + 1.0  # waited out the one retry delay, inside the budget


async def test_drain_gives_up_at_the_timeout_and_leaves_the_rest_queued(outbox: Outbox) -> None:
    fake = FakeTime()
    alerts = [make_alert(n) for n in range(3)]
    sink = ScriptedSink("a", fake.clock, always=SinkUnavailable("a", "down"))
    outbox.record(alerts, None, T0)
    loop = _loop(outbox, sink, fake)
    with structlog.testing.capture_logs() as logs:
        assert not await loop.drain(timeout_s=10.0)
    assert fake.now == pytest.approx(T0 + 10.0)
    assert outbox.stats()["a"] == {"pending": 3, "sending": 0, "delivered": 0, "rejected": 0}
    assert any(e["event"] == "delivery.drain_incomplete" and e["depth"] == 3 for e in logs)


async def test_drain_bounds_a_hanging_send_in_real_time(outbox: Outbox) -> None:
    alerts = [make_alert(n) for n in range(2)]
    sink = ScriptedSink("a", hang={alerts[0].id})
    outbox.record(alerts, None, time.time())
    loop = DeliveryLoop(outbox, sink)
    started = time.monotonic()
    assert not await loop.drain(timeout_s=0.2)
    assert time.monotonic() - started < 1.0
    # The interrupted send will be retried; nothing is stuck in "sending".
    assert outbox.stats()["a"] == {"pending": 2, "sending": 0, "delivered": 0, "rejected": 0}


async def test_drain_all_drains_sinks_concurrently(outbox: Outbox) -> None:
    fake = FakeTime()
    alerts = [make_alert(n) for n in range(3)]
    sinks = [ScriptedSink("a", fake.clock), ScriptedSink("b", fake.clock)]
    outbox.record(alerts, None, T0)
    assert await drain_all([_loop(outbox, s, fake) for s in sinks], timeout_s=5.0)
    assert all(s.received == alerts for s in sinks)


# -- interruption and restarts -------------------------------------------------------------


async def test_cancel_mid_send_requeues_the_in_flight_and_unclaims_the_rest(
    outbox: Outbox,
) -> None:
    alerts = [make_alert(n) for n in range(4)]
    sink = ScriptedSink("a", hang={alerts[1].id})
    outbox.record(alerts, None, time.time())
    loop = DeliveryLoop(outbox, sink)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(loop.run())
        async with asyncio.timeout(2):
            await sink.entered.wait()
        task.cancel()
    assert sink.received == [alerts[0]]
    assert outbox.stats()["a"] == {"pending": 3, "sending": 0, "delivered": 1, "rejected": 0}
    assert outbox.attempts(alerts[1].id, "a") == 1  # it was tried (maybe it even got out)
    assert [outbox.attempts(a.id, "a") for a in alerts[2:]] == [0, 0]
    # A fresh loop picks up exactly where this one stopped, in order.
    sink2 = ScriptedSink("a")
    assert await DeliveryLoop(outbox, sink2).drain(timeout_s=2.0)
    assert sink2.received == alerts[1:]


_DELIVERER = textwrap.dedent(
    """
    import asyncio, sys, time
    from daemon.delivery import DeliveryLoop, DeliveryOptions
    from daemon.outbox import Outbox
    from daemon.sinks.jsonl import JsonlSink

    class SlowJsonl(JsonlSink):
        async def send(self, alert):
            await super().send(alert)
            await asyncio.sleep(0.002)  # a window between "sent" and "marked delivered"

    async def main():
        with Outbox.open(sys.argv[1], ["jsonl"]) as outbox:
            async with SlowJsonl(sys.argv[2]) as sink:
                await DeliveryLoop(outbox, sink, DeliveryOptions(batch=7)).run()

    asyncio.run(main())
    """
)


async def test_sigkill_mid_delivery_is_at_least_once_with_one_duplicate_at_most(
    tmp_path: Path,
) -> None:
    db, out = tmp_path / "outbox.sqlite", tmp_path / "out" / "alerts.jsonl"
    alerts = [make_alert(n) for n in range(200)]
    with Outbox.open(db, ["jsonl"]) as outbox:
        outbox.record(alerts, None, time.time())
    proc = subprocess.Popen(
        [sys.executable, "-c", _DELIVERER, str(db), str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(10):
            while not out.exists() or out.read_bytes().count(b"\n") < 40:
                await asyncio.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    before = out.read_bytes().count(b"\n")
    assert 40 <= before < len(alerts), "the kill should land mid-delivery"

    # The restart: the interrupted row goes back to pending and the rest follows.
    with Outbox.open(db, ["jsonl"]) as outbox:
        async with JsonlSink(out) as sink:
            assert await DeliveryLoop(outbox, sink).drain(timeout_s=10.0)
    lines = [decode_alert(line) for line in out.read_bytes().splitlines()]
    ids = [a.id for a in lines]
    assert set(ids) == {a.id for a in alerts}  # nothing lost
    assert len(ids) - len(alerts) <= 1  # at most the one in flight, twice
    # Order is kept apart from that one repeat.
    assert list(dict.fromkeys(ids)) == [a.id for a in alerts]
