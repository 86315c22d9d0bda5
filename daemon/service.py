"""`run_daemon`: the daemon's lifetime, from start-up that waits to an ordered shutdown.

Start-up does only local work before telling systemd it is running: the
config is loaded, the state directory and outbox are open, a snapshot is
restored, `/healthz` listens (a port in use ends the daemon with exit 4). So
`READY=1` means "running and doing its job as soon as its dependencies
answer", and never waits for the network: a late network cannot trip
`TimeoutStartSec`. Then, each on its own and each retried with capped,
jittered backoff (`daemon.startup`):

- the feed: the REST warm-up (when there is no snapshot to resume), then the
  websocket with its own reconnect loop and backfills;
- every sink (`SupervisedSink`): until it is up the outbox keeps its alerts,
  which it delivers in order once the sink starts;
- the first FRED fetch for the rates signal.

What start-up still waits for is in `STATUS=`, `/healthz` and `/metrics`; the
watchdog does not count waiting as being stuck. Refused credentials end the
daemon with a `Fatal` (exit 3), as does a feed that gives up for good (5).

Shutdown is ordered: stop taking bars, drain what was decided, publish the
last MQTT states, close the sinks, snapshot.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import structlog

from daemon.app import (
    Ingest,
    IngestStats,
    _closing,
    _jobs,
    build_feed,
    build_pipeline,
    build_sinks,
    warm_up,
)
from daemon.backend import DaemonBackend
from daemon.config import Config
from daemon.delivery import DeliveryLoop, drain_all
from daemon.fatal import ExitCode, Fatal, find_fatal
from daemon.feeds.base import Feed, FeedBatch, FeedError
from daemon.health import HealthServer, SourceFuncs, Startup, observer
from daemon.outbox import Outbox
from daemon.rates_fetch import RatesFetcher
from daemon.retry import RetryPolicy
from daemon.scheduler import Scheduler, SessionCalendar
from daemon.sdnotify import Notifier, WatchdogGate, watchdog_interval_s, watchdog_loop
from daemon.secrets import Secrets
from daemon.sinks.mqtt import MqttSink
from daemon.snapshot import FeedTimeSnapshots, last_minute, load_snapshot
from daemon.startup import SupervisedSink, Waits, feed_fatal, keep_trying
from daemon.warmup import Warmup
from signals.alerts import Alert
from signals.pipeline import Pipeline

_log = structlog.get_logger(__name__)

States = dict[str, dict[str, float | str | bool | None]]

SINK_START_BACKOFF = RetryPolicy(base_s=1.0, cap_s=30.0, jitter=0.5)
RATES_BACKOFF = RetryPolicy(base_s=30.0, cap_s=1800.0, jitter=0.5)


def _open_state_dir(config: Config) -> None:
    path = config.state.dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise Fatal(
            f"state.dir {path} is not a writable directory ({exc.strerror})", ExitCode.LOCAL
        ) from None


async def _serve_health(
    stack: AsyncExitStack, config: Config, source: SourceFuncs, gate: WatchdogGate
) -> None:
    host, port = config.health.host, config.health.port
    try:
        health = await stack.enter_async_context(
            HealthServer(source, host=host, port=port, verdict=gate.check)
        )
    except OSError as exc:
        why = "is already in use" if exc.errno == errno.EADDRINUSE else f"({exc.strerror})"
        raise Fatal(
            f"health.port {port} on {host} {why}: stop what holds it, or set [health] port",
            ExitCode.LOCAL,
        ) from None
    _log.info("health.serving", host=host, port=health.port)


def _logged_feed_fatal(exc: Exception) -> Fatal | None:
    """`feed_fatal`, logged as `feed.fatal` like the reconnect loop's (the warm-up's REST)."""
    end = feed_fatal(exc)
    if end is not None and isinstance(exc, FeedError):
        _log.error("feed.fatal", feed=exc.feed, reason=exc.detail)
    return end


class _States:
    """The latest MQTT state per symbol, published one at a time (a newer one replaces a
    queued one); what is left at shutdown is published then, so it stays retained."""

    def __init__(self, mqtt: MqttSink) -> None:
        self.mqtt = mqtt
        self.pending: States = {}
        self.ready = asyncio.Event()

    def queue(self, states: States) -> None:
        if states:
            self.pending.update(states)
            self.ready.set()

    async def publish(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.pending:
                sym = next(iter(self.pending))
                state = self.pending.pop(sym)
                try:
                    await self.mqtt.publish_state(sym, state)
                except asyncio.CancelledError:
                    self.pending.setdefault(sym, state)  # shutdown publishes it
                    raise

    async def flush(self) -> None:
        for sym, state in list(self.pending.items()):
            await self.mqtt.publish_state(sym, state)
        self.pending.clear()


class _Daemon:
    """One run: what start-up opened, and the tasks that use it."""

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        outbox: Outbox,
        sinks: list[SupervisedSink],
        waits: Waits,
        notifier: Notifier,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.outbox = outbox
        self.sinks = sinks
        self.waits = waits
        self.notifier = notifier
        self.loops = [DeliveryLoop(outbox, s) for s in sinks]
        for sink, loop in zip(sinks, self.loops, strict=True):
            sink.on_up = loop.retry_now  # a sink that comes up gets its backlog at once
            if isinstance(sink.inner, MqttSink):
                sink.inner.on_connected = loop.retry_now  # and so does a broker that is back
        self.feed_started_at: float | None = None
        self.snapshotter: FeedTimeSnapshots | None = None

    def startup(self) -> Startup:
        return Startup(
            waiting=self.waits.as_dict(),
            feed_started_at=self.feed_started_at,
            sinks_up={s.name: s.up for s in self.sinks},
            sink_start_failures={s.name: s.start_failures for s in self.sinks},
            sink_problems={s.name: s.problem for s in self.sinks},
        )

    def status(self) -> str:
        """`STATUS=`: what start-up waits for, else what the daemon does."""
        if self.waits:
            return self.waits.summary()
        symbols = len(self.config.feed.symbols)
        if self.feed_started_at is None:
            return f"starting: {symbols} symbols"
        return f"watching {symbols} symbols"

    def wake(self, _alerts: list[Alert]) -> None:
        for loop in self.loops:
            loop.wake()

    async def warm_start(self, warmup: Warmup | Callable[[], Awaitable[Warmup]] | None) -> None:
        """History through the engines (the provider's REST, retried until it answers),
        then the rule state the outbox kept, then a first snapshot."""
        if callable(warmup):
            f = self.config.feed
            history: Warmup | None = await keep_trying(
                warmup,
                what="feed warm-up",
                waits=self.waits,
                fatal=_logged_feed_fatal,
                backoff=RetryPolicy(base_s=f.backoff_initial_s, cap_s=f.backoff_max_s, jitter=0.5),
            )
        else:
            history = warmup
        if history is not None:
            warm_up(self.pipeline, history)
        saved = self.outbox.load_rule_state()
        if saved is not None:
            self.pipeline.book.restore(saved)
        if self.snapshotter is not None:
            self.snapshotter.save()

    async def stream(self, feed: Feed, take: Callable[[FeedBatch], None]) -> None:
        """The feed until it stops; a feed that gives up for good ends the daemon."""
        self.feed_started_at = time.time()
        self.notifier.status(self.status())
        try:
            await feed.run(take)
        except FeedError as exc:  # the reconnect loop has logged `feed.fatal`
            end = feed_fatal(exc)
            if end is None:
                raise
            raise end from None

    async def first_rates(self) -> None:
        """The yield series at start-up, so the rates signal does not wait for the daily job."""

        async def fetch() -> None:
            async with RatesFetcher(self.config.rates.url) as fetcher:
                self.pipeline.set_rates(await fetcher.fetch())

        # FRED failing costs one signal, never the daemon: nothing here is fatal.
        await keep_trying(fetch, what="rates (FRED)", waits=self.waits, backoff=RATES_BACKOFF)


async def run_daemon(
    config: Config,
    secrets: Secrets,
    stop: asyncio.Event,
    *,
    warmup: Warmup | Callable[[], Awaitable[Warmup]] | None = None,
    feed: Feed | None = None,
    realtime: bool = True,
    drain_timeout_s: float = 10.0,
    on_ingest: Callable[[Ingest], None] = lambda ingest: None,
    snapshots: bool | None = None,
    sink_backoff: RetryPolicy = SINK_START_BACKOFF,
) -> IngestStats:
    """Run until `stop` is set; returns the ingest counters. Raises `Fatal` for an
    expected failure (refused credentials, the health port in use, a feed that gave up).

    `realtime` False runs in feed time: no alert is too old to send, the market
    is always open. `snapshots` (default: `realtime`) resumes from the state
    directory's snapshot at start-up, with the feed's first backfill starting at
    its last minute; without one it writes one after the warm-up; then one every
    `state.snapshot_every_s` of feed time, and one at shutdown. `warmup` is
    history, or a coroutine function fetching it (retried until it answers).
    """
    try:
        return await _run(
            config, secrets, stop, warmup=warmup, feed=feed, realtime=realtime,
            drain_timeout_s=drain_timeout_s, on_ingest=on_ingest,
            snapshots=realtime if snapshots is None else snapshots, sink_backoff=sink_backoff,
        )  # fmt: skip
    except BaseExceptionGroup as group:
        end = find_fatal(group)
        if end is None:
            raise
        raise end from None


async def _run(
    config: Config,
    secrets: Secrets,
    stop: asyncio.Event,
    *,
    warmup: Warmup | Callable[[], Awaitable[Warmup]] | None,
    feed: Feed | None,
    realtime: bool,
    drain_timeout_s: float,
    on_ingest: Callable[[Ingest], None],
    snapshots: bool,
    sink_backoff: RetryPolicy,
) -> IngestStats:
    pipeline = build_pipeline(config, datetime.now(UTC))
    backend = DaemonBackend(pipeline, config.feed.symbols, config.rules.file)
    notifier = Notifier()
    waits = Waits()
    sinks = [
        SupervisedSink(s, waits, backoff=sink_backoff)
        for s in build_sinks(config, secrets, [s.name for s in pipeline.book.specs], backend)
    ]
    _open_state_dir(config)
    async with AsyncExitStack() as stack:
        stack.enter_context(_closing(notifier))
        outbox = stack.enter_context(
            Outbox.open(config.state.dir / "outbox.sqlite", [s.name for s in sinks])
        )
        d = _Daemon(config, pipeline, outbox, sinks, waits, notifier)
        waits.on_change = lambda: notifier.status(d.status())
        # A restart resumes from the last snapshot (same config) instead of a cold
        # warm-up; its rule state goes with it.
        snapshot_dir = config.state.dir / "snapshot"
        restored_at = load_snapshot(pipeline, snapshot_dir) if snapshots else None
        resume_from = last_minute(pipeline) if restored_at is not None else None
        if snapshots:
            d.snapshotter = FeedTimeSnapshots(pipeline, snapshot_dir, config.state.snapshot_every_s)
        mqtt = next((s.inner for s in sinks if isinstance(s.inner, MqttSink)), None)
        states = _States(mqtt) if mqtt is not None else None
        ingest = Ingest(
            pipeline,
            outbox,
            wall_clock=time.time if realtime else None,
            on_alerts=d.wake,
            on_states=states.queue if states is not None else None,
        )
        ingest.backend = backend
        on_ingest(ingest)
        the_feed = feed or build_feed(config, secrets, realtime=realtime, resume_from=resume_from)
        backend.outbox, backend.feed = outbox, the_feed

        def take(batch: FeedBatch) -> None:
            ingest(batch)
            if d.snapshotter is not None:
                d.snapshotter.tick()

        calendar = SessionCalendar()
        source = SourceFuncs(
            feed=lambda: the_feed.stats,
            ingest=lambda: ingest.stats,
            outbox=lambda: outbox,
            deliveries=lambda: d.loops,
            startup=d.startup,
        )
        gate = WatchdogGate(observer(source, calendar.open_since))
        if config.health.enabled:
            await _serve_health(stack, config, source, gate)
        await stack.enter_async_context(Scheduler(_jobs(config, pipeline, outbox, ingest), calendar=calendar))  # fmt: skip
        notifier.ready(d.status())
        closing = asyncio.Event()

        async def feed_main() -> None:
            if restored_at is None:
                await d.warm_start(warmup)
            await d.stream(the_feed, take)

        async with asyncio.TaskGroup() as tg:
            background = [
                tg.create_task(loop.run(), name=f"deliver-{loop.name}") for loop in d.loops
            ]
            supervisors = [tg.create_task(s.run(closing), name=f"sink-{s.name}") for s in sinks]
            interval = watchdog_interval_s()
            if interval:
                background.append(
                    tg.create_task(
                        watchdog_loop(notifier, gate, interval, running_status=d.status),
                        name="watchdog",
                    )
                )
            if states is not None:
                publisher = tg.create_task(states.publish(), name="mqtt-states")
            if config.rates.source == "fred" and realtime:
                background.append(tg.create_task(d.first_rates(), name="rates-first"))
            feed_task = tg.create_task(feed_main(), name="feed")
            stopper = tg.create_task(stop.wait(), name="stop")
            _log.info(
                "daemon.started",
                feed=config.feed.provider,
                symbols=list(config.feed.symbols),
                sinks=[s.name for s in sinks],
            )
            await asyncio.wait([feed_task, stopper], return_when=asyncio.FIRST_COMPLETED)
            notifier.stopping("draining the outbox")
            feed_task.cancel()  # 1. stop taking bars
            stopper.cancel()
            drained = await drain_all(d.loops, drain_timeout_s)  # 2. deliver what was decided
            if states is not None:
                # Stop the publisher first (it puts back a state it was sending), then
                # publish what is left: the last state of every symbol is retained.
                publisher.cancel()
                await asyncio.wait([publisher])
                await states.flush()
            for task in background:
                task.cancel()
            closing.set()  # 3. the sinks close
            await asyncio.wait(supervisors)
            if d.snapshotter is not None and (restored_at is not None or d.feed_started_at):
                d.snapshotter.save()
            _log.info("daemon.stopping", drained=drained, outbox_depth=outbox.depth())
        return ingest.stats
