"""The daemon: feed -> pipeline (synchronous) -> outbox -> sinks, under one supervisor.

Everything lives in one `AsyncExitStack` (outbox, sinks) and one `TaskGroup`
(feed, one delivery loop per sink, the MQTT state publisher). Ingest is a
plain function the feed calls: it runs the engine and the rules, records
alerts with the rule state in one outbox transaction and wakes the delivery
loops, and never awaits a sink. Shutdown is ordered: stop taking bars, drain
what was decided, then close the sinks.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

import numpy as np
import structlog

from daemon import heap
from daemon.backend import DaemonBackend
from daemon.bars import frame_to_batch
from daemon.calendar import xnys_sessions
from daemon.config import Config
from daemon.digest import digest_alert
from daemon.feeds.base import Feed, FeedBatch
from daemon.feeds.market_hours import xnys_is_open
from daemon.feeds.options import FeedOptions
from daemon.feeds.provider import FeedProvider
from daemon.feeds.registry import FEEDS
from daemon.feeds.retry import ReconnectPolicy
from daemon.outbox import Outbox
from daemon.rates_fetch import RatesFetcher
from daemon.rules_file import load_rules
from daemon.scheduler import Job, daemon_jobs, heartbeat_job
from daemon.sdnotify import Notifier
from daemon.secrets import Secrets
from daemon.sinks.base import Sink
from daemon.sinks.console import ConsoleSink
from daemon.sinks.jsonl import JsonlSink
from daemon.sinks.mqtt import MqttSink
from daemon.symbol_state import State, SymbolStates
from daemon.telegram.bot import BotOptions, TelegramBot
from daemon.warmup import Warmup
from signals.alerts import Alert
from signals.bar import BarBatch
from signals.pipeline import Pipeline, Step
from signals.sessions import DAY_S

_log = structlog.get_logger(__name__)

# An alert decided this long after its bar ended is marked delayed...
DELAYED_AFTER_S = 120
# ...and one older than this (a long outage, the start-up warm-up) is not sent at all.
STALE_AFTER_S = 1800
BREAKOUT_RULES = ("volume_breakout",)
# Recorded alerts read back at start-up for each symbol's `last_alert`.
LAST_ALERTS_SEEDED = 200


@dataclass
class IngestStats:
    """Counters the health endpoint reads."""

    batches: int = 0
    bars: int = 0
    alerts_emitted: int = 0
    alerts_duplicate: int = 0
    alerts_stale: int = 0
    updated_bars: int = 0
    last_bar_time: int | None = None
    breakouts: dict[str, int] = field(default_factory=dict)


class Ingest:
    """The synchronous path a feed calls for every batch."""

    def __init__(
        self,
        pipeline: Pipeline,
        outbox: Outbox,
        *,
        wall_clock: Callable[[], float] | None,
        on_alerts: Callable[[list[Alert]], None] = lambda alerts: None,
        on_states: Callable[[dict[str, State]], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.outbox = outbox
        self.stats = IngestStats()
        self.backend: DaemonBackend | None = None
        self._wall_clock = wall_clock
        self._on_alerts = on_alerts
        self._on_states = on_states
        # Last known daily values and alerts per symbol, kept for the life of the process:
        # the retained state keeps them after the close. The last alerts survive a restart.
        self.symbol_states = SymbolStates()
        self.symbol_states.note_alerts(outbox.recent(LAST_ALERTS_SEEDED))

    def __call__(self, batch: FeedBatch) -> None:
        self.stats.batches += 1
        if not batch.bars:
            return
        bars = BarBatch.from_bars(batch.bars)
        if batch.kind == "updated":
            self._updated(bars)
            return
        if batch.kind == "daily":
            return  # the daily bar is aggregated from minutes; the provider's is not needed
        wall = None if self._wall_clock is None else int(self._wall_clock())
        step = self.pipeline.on_minute_bars(bars, wall_now=wall)
        self.stats.bars += len(bars)
        self.stats.last_bar_time = int(bars.time.max())
        self.decide(step.alerts, wall)
        if self.backend is not None:
            self.backend.observe(step.forming_daily)
        if self._on_states is not None:
            self._on_states(self.states(step))

    def decide(self, alerts: list[Alert], wall: int | None) -> list[Alert]:
        """Drop stale alerts, record the rest with the rule state, hand the new ones on."""
        fresh = [a for a in alerts if wall is None or wall - a.time <= STALE_AFTER_S]
        self.stats.alerts_stale += len(alerts) - len(fresh)
        for a in alerts:
            if a not in fresh:
                _log.info(
                    "alert.stale_dropped",
                    alert_id=a.id,
                    rule=a.rule,
                    symbol=a.symbol,
                    age_s=wall - a.time if wall else None,
                )
        if not fresh:
            return []
        new = self.outbox.record(fresh, self.pipeline.book.state(), time.time())
        self.stats.alerts_emitted += len(new)
        self.stats.alerts_duplicate += len(fresh) - len(new)
        for a in new:
            _log.info(
                "alert.emitted",
                alert_id=a.id,
                rule=a.rule,
                symbol=a.symbol,
                severity=a.severity,
                delayed=a.delayed,
            )
            if a.rule in BREAKOUT_RULES:
                self.stats.breakouts[a.symbol] = a.time
        if new:
            self.symbol_states.note_alerts(new)
            self._on_alerts(new)
        return new

    def _updated(self, bars: BarBatch) -> None:
        """A corrected bar replaces the stored data of its minute; indicators and alerts stay."""
        engine = self.pipeline.minute
        if engine is None:
            return
        for i, sym in enumerate(bars.symbol):
            if engine.last_time(sym) == int(bars.time[i]):
                row = engine.row(sym)
                engine.rings.replace_last(
                    np.array([row]),
                    {
                        c: getattr(bars, c)[i : i + 1]
                        for c in ("open", "high", "low", "close", "volume")
                    },
                )
                self.stats.updated_bars += 1
        _log.debug("bar.updated", bars=len(bars))

    def states(self, step: Step) -> dict[str, State]:
        """Per symbol: what MQTT publishes as `<base>/<SYMBOL>/state` (`daemon.symbol_state`)."""
        return self.symbol_states.compose(step, self.stats.breakouts)


def warm_up(pipeline: Pipeline, warmup: Warmup) -> None:
    """Daily bars through the daily engine and rules (their alerts are history, not news);
    1-minute bars of past sessions through the 1-minute engine only; today's minutes
    through the whole pipeline, alerts dropped."""
    with pipeline.book.quietly():
        _warm_up(pipeline, warmup)
    heap.release()  # the warm-up's temporary evaluations: give their pages back
    _log.info(
        "engine.warmed_up",
        daily=0 if warmup.daily is None else warmup.daily.height,
        minutes=0 if warmup.minutes is None else warmup.minutes.height,
    )


def _warm_up(pipeline: Pipeline, warmup: Warmup) -> None:
    if warmup.daily is not None and warmup.daily.height:
        pipeline.on_daily_bars(frame_to_batch(warmup.daily.sort("time", "symbol")))
    minutes = warmup.minutes
    if minutes is not None and minutes.height and pipeline.minute and pipeline.sessions:
        b = frame_to_batch(minutes.sort("time", "symbol"))
        loc = pipeline.sessions.locate(b.time)
        today = -1 if warmup.today is None else warmup.today
        past = np.flatnonzero(loc.regular & (loc.label != today))
        pipeline.minute.on_bars(
            replace(b.take(past), session=loc.label[past] // DAY_S, minute=loc.minute[past])
        )
        current = np.flatnonzero(loc.regular & (loc.label == today))
        if len(current):
            # Today's minutes build today's daily bar; what they would have alerted is history.
            pipeline.on_minute_bars(b.take(current))


# Sessions from here on, so replays of old data find their sessions too.
SESSIONS_FROM = date(1995, 1, 1)


def build_pipeline(config: Config, today: datetime) -> Pipeline:
    """Rules, engines and the XNYS sessions up to a year past `today`."""
    sessions = xnys_sessions(SESSIONS_FROM, (today + timedelta(days=366)).date())
    engine = config.engine.engine_config(intraday=True)
    if config.rates.source == "proxy":
        engine = replace(engine, rates_proxy=config.rates.proxy_symbol)
    return Pipeline(
        engine,
        load_rules(config.rules.file),
        sessions=sessions,
        delayed_after_s=DELAYED_AFTER_S,
    )


def build_sinks(
    config: Config,
    secrets: Secrets,
    rule_names: Sequence[str],
    backend: DaemonBackend | None = None,
) -> list[Sink]:
    """The configured sinks, in a fixed order."""
    s = config.sinks
    sinks: list[Sink] = []
    if s.console.enabled:
        sinks.append(
            ConsoleSink(benchmark=config.engine.benchmark, comparator=config.engine.comparator)
        )
    if s.jsonl is not None:
        sinks.append(JsonlSink(s.jsonl.path))
    if s.mqtt is not None:
        m = s.mqtt
        sinks.append(
            MqttSink(
                m.url,
                base_topic=m.base_topic,
                discovery_prefix=m.discovery_prefix,
                username=m.username,
                password=secrets.get("MQTT_PASSWORD"),
                client_id=m.client_id,
                ca_file=m.ca_file,
                cert_file=m.cert_file,
                key_file=m.key_file,
                qos=m.qos,
                protocol=m.protocol,
                symbols=config.feed.symbols,
                rule_names=rule_names,
            )
        )
    if s.telegram is not None:
        if backend is None:
            raise ValueError("the Telegram bot needs the daemon backend")
        sinks.append(
            TelegramBot(
                s.telegram,
                secrets.require("TELEGRAM_BOT_TOKEN"),
                backend,
                config.state.dir / "subscribers.sqlite",
                BotOptions(benchmark=config.engine.benchmark, comparator=config.engine.comparator),
            )
        )
    return sinks


def _jobs(config: Config, pipeline: Pipeline, outbox: Outbox, ingest: Ingest) -> list[Job]:
    """The scheduled jobs this config calls for (snapshots follow feed time, not the clock)."""

    async def fetch_rates() -> None:
        async with RatesFetcher(config.rates.url) as fetcher:
            series = await fetcher.fetch()
        pipeline.set_rates(series)
        _log.info("rates.updated", observations=len(series))

    async def outbox_upkeep() -> None:
        removed = outbox.prune(older_than_s=30 * 86_400, now=time.time())
        _log.info("outbox.pruned", removed=removed, depth=outbox.depth())

    def digest(kind: str) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            if ingest.backend is None:
                return
            alert = digest_alert(kind, ingest.backend, time.time(), outbox.recent(200))
            ingest.decide([alert], None)

        return job

    def heartbeat_fields() -> dict[str, object]:
        s = ingest.stats
        return {"bars": s.bars, "alerts": s.alerts_emitted, "outbox_depth": outbox.depth()}

    return daemon_jobs(
        rates_fetch=fetch_rates if config.rates.source == "fred" else None,
        outbox_upkeep=outbox_upkeep,
        premarket_digest=digest("premarket_digest"),
        close_digest=digest("close_digest"),
        heartbeat=heartbeat_job(heartbeat_fields),
    )


class _closing:
    """`Notifier` as a context manager, so its socket closes with the exit stack."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def __enter__(self) -> Notifier:
        return self.notifier

    def __exit__(self, *exc: object) -> None:
        self.notifier.close()


# The first backfill after a restore starts this long before the restored minute: it
# covers the time between building the feed and its first backfill (the engine drops
# the minutes it already holds).
RESUME_MARGIN_S = 120.0
# A live restart repairs at most this much of a gap (providers limit history requests).
MAX_LIVE_GAP_S = 5 * 86_400.0


def _first_backfill_s(provider: FeedProvider, *, realtime: bool, resume_from: int | None) -> float:
    """How far back of the wall clock the feed's first backfill starts."""
    if resume_from is not None:
        gap_s = max(RESUME_MARGIN_S, time.time() - resume_from + RESUME_MARGIN_S)
        return min(gap_s, MAX_LIVE_GAP_S) if realtime else gap_s
    if realtime:
        return provider.live_backfill_s
    # Feed time: a replay server's history is what it has played so far, all of it.
    return time.time() if provider.feed_time else 0.0


def _always_open(epoch_s: float) -> bool:
    return True  # feed time has no market hours


def build_feed(
    config: Config, secrets: Secrets, *, realtime: bool, resume_from: int | None = None
) -> Feed:
    """The configured provider's feed, built by its registry entry.

    `realtime` False runs the feed in feed time: the market is always open. The
    first backfill starts at `resume_from` (the last minute of a restored
    snapshot) when given, else a little before now (live) or, for a replay, at
    the start of what the server has played.
    """
    f = config.feed
    provider = FEEDS[f.provider]
    options = FeedOptions(
        f.symbols,
        url=f.url,
        rest_url=f.rest_url,
        max_frame_bytes=f.max_frame_bytes,
        silence_timeout_s=f.silence_timeout_s,
        policy=ReconnectPolicy(
            backoff_initial_s=f.backoff_initial_s, backoff_max_s=f.backoff_max_s
        ),
        warmup_s=_first_backfill_s(provider, realtime=realtime, resume_from=resume_from),
        is_market_open=xnys_is_open if realtime else _always_open,
    )
    return provider.build(f, options, secrets)
