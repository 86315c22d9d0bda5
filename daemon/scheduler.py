"""Market-aware scheduled jobs: apscheduler 3.x on the daemon's event loop, async jobs only.

When a job fires is plain data (`OnSessions`, `Every`) and plain functions
(`next_fire`, `due_jobs`) over an injected `SessionCalendar`, so tests can
ask "what runs between T1 and T2" across DST changes and holidays without
waiting. `Scheduler` is the thin shell: an async context manager that hands
the same rule to an `AsyncIOScheduler` through a trigger, starts it on
entry and shuts it down on exit.

Times are New York wall-clock (`America/New_York`) because the market's are:
09:00 ET is 13:00 UTC in summer and 14:00 UTC in winter. Session jobs run on
XNYS sessions only (exchange-calendars: weekends and holidays skipped, early
closes known).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time as _time
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from types import TracebackType
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from daemon.calendar import xnys_sessions

_log = structlog.get_logger(__name__)

NEW_YORK = ZoneInfo("America/New_York")
JobFunc = Callable[[], Awaitable[None]]

# Sessions are never further apart than a long weekend plus a holiday or two
# (the 2001 and 2012 closures were 4 weekdays); look this far for the next one.
_MAX_GAP_DAYS = 14
# The calendar is built for this many days either side of the day asked about.
_CALENDAR_SPAN_DAYS = 400


class SessionCalendar:
    """XNYS regular sessions (open and close instants) by New York date, from exchange-calendars.

    Built lazily for a window around the first day asked about and rebuilt
    when asked outside it: no I/O or heavy work in the constructor.
    """

    def __init__(self) -> None:
        self._first: date | None = None
        self._last: date | None = None
        self._bounds: dict[date, tuple[datetime, datetime]] = {}

    def session(self, day: date) -> tuple[datetime, datetime] | None:
        """`(open, close)` in UTC when `day` is a session, else None (weekend, holiday)."""
        if self._first is None or self._last is None or not self._first <= day <= self._last:
            self._load(day)
        return self._bounds.get(day)

    def open_since(self, epoch_s: float) -> float | None:
        """When the session in progress at `epoch_s` opened (epoch s); None outside a session."""
        now = datetime.fromtimestamp(epoch_s, UTC)
        bounds = self.session(now.astimezone(NEW_YORK).date())
        if bounds is None or not bounds[0] <= now < bounds[1]:
            return None
        return bounds[0].timestamp()

    def _load(self, day: date) -> None:
        first = day - timedelta(days=_CALENDAR_SPAN_DAYS)
        last = day + timedelta(days=_CALENDAR_SPAN_DAYS)
        with warnings.catch_warnings():
            # exchange-calendars warns when asked about dates past its horizon; so be it.
            warnings.simplefilter("ignore")
            table = xnys_sessions(first, last)
        self._bounds = {
            datetime.fromtimestamp(int(label), UTC).date(): (
                datetime.fromtimestamp(int(op), UTC),
                datetime.fromtimestamp(int(cl), UTC),
            )
            for label, op, cl in zip(table.label, table.open, table.close, strict=True)
        }
        self._first, self._last = first, last


@dataclass(frozen=True)
class OnSessions:
    """Once per XNYS session: at a New York time of day, or an offset from the open or close.

    `OnSessions.at(16, 45)` is 16:45 ET on every session day;
    `OnSessions.after_close(minutes=10)` is 16:10 ET, or 13:10 ET on an
    early-close day.
    """

    anchor: Literal["clock", "open", "close"]
    clock: time = time(0)
    offset: timedelta = timedelta(0)

    @classmethod
    def at(cls, hour: int, minute: int = 0) -> OnSessions:
        """At `hour:minute` New York time on session days."""
        return cls("clock", clock=time(hour, minute))

    @classmethod
    def after_open(cls, minutes: float) -> OnSessions:
        """`minutes` after the session opens (negative: before)."""
        return cls("open", offset=timedelta(minutes=minutes))

    @classmethod
    def after_close(cls, minutes: float) -> OnSessions:
        """`minutes` after the session closes (negative: before)."""
        return cls("close", offset=timedelta(minutes=minutes))

    def on(self, day: date, calendar: SessionCalendar) -> datetime | None:
        """The fire time on `day` (New York), None when `day` is not a session."""
        bounds = calendar.session(day)
        if bounds is None:
            return None
        if self.anchor == "clock":
            # Wall-clock in New York, so 09:00 stays 09:00 across DST changes.
            return datetime.combine(day, self.clock, tzinfo=NEW_YORK)
        base = bounds[0] if self.anchor == "open" else bounds[1]
        return (base + self.offset).astimezone(NEW_YORK)


@dataclass(frozen=True)
class Every:
    """Every `seconds`, aligned to the clock: fires when (epoch - `offset_s`) is a multiple.

    `Every(900)` fires at :00, :15, :30 and :45 of every hour, every day.
    """

    seconds: float
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ValueError(f"seconds must be a positive number, got {self.seconds}")


When = OnSessions | Every


@dataclass(frozen=True)
class Job:
    """A named coroutine job and when it runs. `timeout_s` bounds one run (None: unbounded)."""

    name: str
    func: JobFunc = field(repr=False)
    when: When
    timeout_s: float | None = None


def next_fire(when: When, after: datetime, calendar: SessionCalendar) -> datetime | None:
    """The first fire time strictly after `after` (aware), in New York time; None if none soon."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    if isinstance(when, Every):
        t = after.timestamp() - when.offset_s
        k = math.floor(t / when.seconds) + 1
        return datetime.fromtimestamp(k * when.seconds + when.offset_s, UTC).astimezone(NEW_YORK)
    # Start a day early: an offset from the open or close can cross midnight.
    day = after.astimezone(NEW_YORK).date() - timedelta(days=1)
    for _ in range(_MAX_GAP_DAYS + 2):
        fire = when.on(day, calendar)
        # Compare instants: aware datetimes sharing a tzinfo compare by wall clock,
        # which is ambiguous in the hour repeated when DST ends.
        if fire is not None and fire.timestamp() > after.timestamp():
            return fire
        day += timedelta(days=1)
    return None


def fire_times(
    when: When, since: datetime, until: datetime, calendar: SessionCalendar
) -> list[datetime]:
    """Every fire time in (`since`, `until`], in order."""
    out: list[datetime] = []
    t = next_fire(when, since, calendar)
    while t is not None and t.timestamp() <= until.timestamp():
        out.append(t)
        t = next_fire(when, t, calendar)
    return out


def due_jobs(
    jobs: Sequence[Job], since: datetime, until: datetime, calendar: SessionCalendar
) -> list[tuple[datetime, Job]]:
    """Which jobs fire in (`since`, `until`], and when: by time, then in the order given."""
    due = [
        (t, i, job)
        for i, job in enumerate(jobs)
        for t in fire_times(job.when, since, until, calendar)
    ]
    due.sort(key=lambda item: (item[0].timestamp(), item[1]))
    return [(t, job) for t, _, job in due]


class _Trigger(BaseTrigger):  # type: ignore[misc]  # apscheduler ships no type hints
    """An apscheduler trigger that asks `next_fire`: one rule for the tests and the scheduler."""

    def __init__(self, when: When, calendar: SessionCalendar) -> None:
        self.when = when
        self.calendar = calendar

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        if previous_fire_time is not None:
            return next_fire(self.when, previous_fire_time, self.calendar)
        # First run: `now` itself counts, like apscheduler's own triggers.
        return next_fire(self.when, now - timedelta(microseconds=1), self.calendar)

    def __str__(self) -> str:
        return repr(self.when)


async def run_job(job: Job) -> bool:
    """Run `job` once, logged and bounded by its timeout; True if it finished without error.

    An exception is logged, not raised: one failing job must not stop the
    others or the scheduler. Cancellation propagates.
    """
    started = _time.monotonic()
    try:
        if job.timeout_s is None:
            await job.func()
        else:
            async with asyncio.timeout(job.timeout_s):
                await job.func()
    except Exception:
        _log.exception(
            "scheduler.job_failed",
            job=job.name,
            duration_ms=round((_time.monotonic() - started) * 1000, 1),
        )
        return False
    _log.info(
        "scheduler.job_done",
        job=job.name,
        duration_ms=round((_time.monotonic() - started) * 1000, 1),
    )
    return True


class Scheduler:
    """The jobs on an apscheduler `AsyncIOScheduler`, for the lifetime of an `async with`.

    Runs of one job never overlap (`max_instances=1`); runs missed while the
    loop was busy are merged into one (`coalesce`) if no more than
    `misfire_grace_s` late, else skipped. Jobs that the daemon was down for
    are not replayed: call `run_due(since, now)` at start-up for that.
    Leaving the block shuts the scheduler down without waiting and cancels
    jobs still running.
    """

    def __init__(
        self,
        jobs: Sequence[Job],
        *,
        calendar: SessionCalendar | None = None,
        misfire_grace_s: float = 600.0,
    ) -> None:
        names = [job.name for job in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"job names must be unique, got {names}")
        self.jobs = tuple(jobs)
        self.calendar = calendar if calendar is not None else SessionCalendar()
        self._misfire_grace_s = misfire_grace_s
        self._scheduler: Any = None

    async def __aenter__(self) -> Self:
        # Each run is logged by `run_job` as one structured event; apscheduler's own
        # INFO lines ("Running job...", "executed successfully") would double them.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        scheduler = AsyncIOScheduler(
            timezone=NEW_YORK,
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(self._misfire_grace_s),
            },
        )
        for job in self.jobs:
            scheduler.add_job(
                _coroutine(job),
                trigger=_Trigger(job.when, self.calendar),
                id=job.name,
                name=job.name,
            )
        scheduler.start()
        self._scheduler = scheduler
        _log.info("scheduler.started", jobs={k: _iso(v) for k, v in self.next_run_times().items()})
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)
            # AsyncIOScheduler queues its shutdown on the loop: let it run before we return.
            await asyncio.sleep(0)
            _log.info("scheduler.stopped")

    def next_run_times(self) -> Mapping[str, datetime | None]:
        """Each job's next run as apscheduler sees it (empty before `async with`)."""
        if self._scheduler is None:
            return {}
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}

    async def run_due(self, since: datetime, until: datetime) -> list[str]:
        """Run, one after another, the jobs that fire in (`since`, `until`]: as if the clock
        had moved from `since` to `until`. Each job runs at most once however often it fell
        due (like `coalesce`). Returns the names run, in order."""
        ran: list[str] = []
        for _, job in due_jobs(self.jobs, since, until, self.calendar):
            if job.name not in ran:
                await run_job(job)
                ran.append(job.name)
        return ran


def _coroutine(job: Job) -> Callable[[], Awaitable[None]]:
    # apscheduler runs a job on the loop only if it is a coroutine *function*.
    async def run() -> None:
        await run_job(job)

    run.__name__ = run.__qualname__ = f"job_{job.name}"
    return run


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


@dataclass(frozen=True)
class ScheduleSettings:
    """When the standard jobs run (New York time; intervals in seconds)."""

    rates_fetch_at: time = time(16, 45)
    premarket_digest_at: time = time(9, 0)
    close_digest_after_close_min: float = 10.0
    outbox_upkeep_every_s: float = 3600.0
    heartbeat_every_s: float = 300.0
    job_timeout_s: float = 300.0


SCHEDULE = ScheduleSettings()
"""The standard jobs' times (no config sets them: nothing asked for another schedule)."""


def daemon_jobs(
    *,
    rates_fetch: JobFunc | None = None,
    premarket_digest: JobFunc | None = None,
    close_digest: JobFunc | None = None,
    outbox_upkeep: JobFunc | None = None,
    heartbeat: JobFunc | None = None,
) -> list[Job]:
    """The daemon's standard jobs, for the callbacks given (None leaves a job out).

    (Snapshots are not a job: they follow bar time, see `daemon.snapshot.FeedTimeSnapshots`.)

    - `rates_fetch`: the DGS2 CSV, on sessions at 16:45 ET;
    - `premarket_digest`: on sessions at 09:00 ET;
    - `close_digest`: 10 minutes after the close (16:10 ET, 13:10 on early closes);
    - `outbox_upkeep`: retry sweep and prune, hourly;
    - `heartbeat`: one log line, every 5 minutes.
    """
    s = SCHEDULE
    t = s.job_timeout_s
    candidates: list[tuple[str, JobFunc | None, When]] = [
        ("rates_fetch", rates_fetch, OnSessions("clock", clock=s.rates_fetch_at)),
        ("premarket_digest", premarket_digest, OnSessions("clock", clock=s.premarket_digest_at)),
        ("close_digest", close_digest, OnSessions.after_close(s.close_digest_after_close_min)),
        ("outbox_upkeep", outbox_upkeep, Every(s.outbox_upkeep_every_s)),
        ("heartbeat", heartbeat, Every(s.heartbeat_every_s)),
    ]
    return [Job(name, func, when, timeout_s=t) for name, func, when in candidates if func]


def heartbeat_job(fields: Callable[[], Mapping[str, object]]) -> JobFunc:
    """A job that logs `daemon.heartbeat` with `fields()` (uptime, bars, outbox depth...)."""

    async def heartbeat() -> None:
        _log.info("daemon.heartbeat", **fields())

    return heartbeat
