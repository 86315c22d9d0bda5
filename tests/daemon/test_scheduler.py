"""Scheduled jobs: New York times across both DST changes, holidays and early closes skipped
or honoured (pure helpers, no waiting), and the real AsyncIOScheduler running a job."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

import pytest
import structlog

from daemon.scheduler import (
    NEW_YORK,
    Every,
    Job,
    OnSessions,
    Scheduler,
    SessionCalendar,
    daemon_jobs,
    due_jobs,
    fire_times,
    heartbeat_job,
    next_fire,
    run_job,
)


@pytest.fixture(scope="module")
def cal() -> SessionCalendar:
    return SessionCalendar()


async def nothing() -> None:
    return None


JOBS = daemon_jobs(
    rates_fetch=nothing,
    premarket_digest=nothing,
    close_digest=nothing,
    outbox_upkeep=nothing,
    heartbeat=nothing,
)
SESSION_JOBS = [j for j in JOBS if isinstance(j.when, OnSessions)]


def ny(day: str, hh: int = 0, mm: int = 0) -> datetime:
    return datetime.combine(date.fromisoformat(day), dtime(hh, mm), tzinfo=NEW_YORK)


def utc(day: str, hh: int, mm: int) -> datetime:
    return datetime.combine(date.fromisoformat(day), dtime(hh, mm), tzinfo=UTC)


def day_plan(day: str, cal: SessionCalendar) -> list[tuple[str, datetime]]:
    """(job, UTC time) of the session jobs that fire during New York `day`."""
    start = ny(day)
    due = due_jobs(SESSION_JOBS, start, start + timedelta(days=1), cal)
    return [(job.name, t.astimezone(UTC)) for t, job in due]


def test_spring_forward_keeps_new_york_wall_clock(cal: SessionCalendar) -> None:
    # Friday before the change: EST (UTC-5).
    assert day_plan("2024-03-08", cal) == [
        ("premarket_digest", utc("2024-03-08", 14, 0)),
        ("close_digest", utc("2024-03-08", 21, 10)),
        ("rates_fetch", utc("2024-03-08", 21, 45)),
    ]
    # No session on the weekend of the change.
    assert day_plan("2024-03-09", cal) == []
    assert day_plan("2024-03-10", cal) == []
    # Monday after: EDT (UTC-4), same New York times.
    assert day_plan("2024-03-11", cal) == [
        ("premarket_digest", utc("2024-03-11", 13, 0)),
        ("close_digest", utc("2024-03-11", 20, 10)),
        ("rates_fetch", utc("2024-03-11", 20, 45)),
    ]


def test_fall_back_keeps_new_york_wall_clock(cal: SessionCalendar) -> None:
    assert day_plan("2024-11-01", cal)[0] == ("premarket_digest", utc("2024-11-01", 13, 0))
    assert day_plan("2024-11-04", cal)[0] == ("premarket_digest", utc("2024-11-04", 14, 0))
    assert [t.astimezone(NEW_YORK).time() for _, t in day_plan("2024-11-04", cal)] == [
        dtime(9, 0),
        dtime(16, 10),
        dtime(16, 45),
    ]


def test_holiday_skipped_and_early_close_honoured(cal: SessionCalendar) -> None:
    # July 3rd closes at 13:00: the close digest follows the real close.
    assert day_plan("2024-07-03", cal) == [
        ("premarket_digest", utc("2024-07-03", 13, 0)),
        ("close_digest", utc("2024-07-03", 17, 10)),
        ("rates_fetch", utc("2024-07-03", 20, 45)),
    ]
    assert day_plan("2024-07-04", cal) == []  # Independence Day: no session, no jobs
    assert [name for name, _ in day_plan("2024-07-05", cal)] == [
        "premarket_digest",
        "close_digest",
        "rates_fetch",
    ]


def test_next_fire_jumps_over_holidays_and_weekends(cal: SessionCalendar) -> None:
    premarket = OnSessions.at(9, 0)
    assert next_fire(premarket, ny("2024-07-03", 17), cal) == ny("2024-07-05", 9)
    # Friday evening before Good Friday 2024 (March 29): next is Monday April 1st.
    assert next_fire(premarket, ny("2024-03-28", 10), cal) == ny("2024-04-01", 9)
    # Strictly after: at the fire time itself, the next one is the next session's.
    assert next_fire(premarket, ny("2024-03-11", 9), cal) == ny("2024-03-12", 9)
    assert next_fire(premarket, ny("2024-03-11", 9) - timedelta(seconds=1), cal) == ny(
        "2024-03-11", 9
    )


def test_a_week_of_session_jobs(cal: SessionCalendar) -> None:
    # Week of July 4th 2024: four sessions (Mon, Tue, Wed early close, Fri).
    due = due_jobs(SESSION_JOBS, ny("2024-07-01"), ny("2024-07-08"), cal)
    days = sorted({t.date() for t, job in due if job.name == "premarket_digest"})
    assert days == [date(2024, 7, d) for d in (1, 2, 3, 5)]
    assert len(due) == 12


def test_open_anchor(cal: SessionCalendar) -> None:
    before_open = OnSessions.after_open(-30)
    assert next_fire(before_open, ny("2024-03-08", 12), cal) == ny("2024-03-11", 9)


def test_every_is_aligned_to_the_clock(cal: SessionCalendar) -> None:
    quarter = Every(900)
    assert next_fire(quarter, ny("2024-03-11", 10, 7), cal) == ny("2024-03-11", 10, 15)
    assert len(fire_times(quarter, ny("2024-03-11", 10), ny("2024-03-11", 11), cal)) == 4
    # Across both DST nights an interval is real time, not wall clock.
    spring = fire_times(Every(3600), ny("2024-03-10", 0), ny("2024-03-10", 5), cal)
    assert [t.hour for t in spring] == [1, 3, 4, 5]  # 02:00 does not exist that night
    fall = fire_times(Every(1800), ny("2024-11-03", 0), ny("2024-11-03", 3), cal)
    assert len(fall) == 8  # 00:00-03:00 on the fall-back night lasts four hours
    gaps = {b.timestamp() - a.timestamp() for a, b in itertools.pairwise([*spring, *fall][:4])}
    assert gaps == {3600.0}
    with pytest.raises(ValueError, match="positive"):
        Every(0)
    with pytest.raises(ValueError, match="aware"):
        next_fire(quarter, datetime(2024, 3, 11, 10), cal)


def test_due_jobs_orders_by_time_then_given_order(cal: SessionCalendar) -> None:
    due = due_jobs(JOBS, ny("2024-03-11", 8, 59), ny("2024-03-11", 9, 0), cal)
    # 09:00 ET: the premarket digest, and the heartbeat on its grid; the hourly outbox
    # upkeep too.
    assert [j.name for _, j in due] == ["premarket_digest", "outbox_upkeep", "heartbeat"]


def test_session_calendar_open_since(cal: SessionCalendar) -> None:
    assert (
        cal.open_since(utc("2024-03-11", 14, 0).timestamp())
        == utc("2024-03-11", 13, 30).timestamp()
    )
    assert cal.open_since(utc("2024-03-11", 20, 0).timestamp()) is None  # 16:00 ET: closed
    assert cal.open_since(utc("2024-07-04", 15, 0).timestamp()) is None  # holiday
    assert cal.open_since(utc("2024-07-03", 17, 30).timestamp()) is None  # after the early close


def test_daemon_jobs_leave_out_missing_callbacks() -> None:
    jobs = daemon_jobs(rates_fetch=nothing, heartbeat=nothing)
    assert [j.name for j in jobs] == ["rates_fetch", "heartbeat"]
    assert jobs[0].when == OnSessions.at(16, 45)
    with pytest.raises(ValueError, match="unique"):
        Scheduler([*jobs, jobs[0]])


async def test_run_due_runs_jobs_as_if_at_time_t(cal: SessionCalendar) -> None:
    ran: list[str] = []

    def record(name: str) -> Job:
        async def func() -> None:
            ran.append(name)

        return Job(name, func, OnSessions.at(9) if name == "digest" else Every(3600))

    scheduler = Scheduler([record("digest"), record("hourly")], calendar=cal)
    # The daemon was down over the July 4th weekend: catch up once per job, in order.
    names = await scheduler.run_due(ny("2024-07-03", 17), ny("2024-07-05", 9, 30))
    assert names == ran == ["hourly", "digest"]
    assert await scheduler.run_due(ny("2024-07-04", 8), ny("2024-07-04", 8, 30)) == []


async def test_run_job_logs_failures_and_timeouts() -> None:
    async def broken() -> None:
        raise RuntimeError("FRED is down")

    async def slow() -> None:
        await asyncio.sleep(10)

    with structlog.testing.capture_logs() as logs:
        assert not await run_job(Job("broken", broken, Every(60)))
        assert not await run_job(Job("slow", slow, Every(60), timeout_s=0.05))
        assert await run_job(Job("fine", nothing, Every(60)))
    assert [(e["event"], e["job"]) for e in logs] == [
        ("scheduler.job_failed", "broken"),
        ("scheduler.job_failed", "slow"),
        ("scheduler.job_done", "fine"),
    ]


async def test_heartbeat_job_logs_its_fields() -> None:
    with structlog.testing.capture_logs() as logs:
        await heartbeat_job(lambda: {"bars": 12, "outbox_depth": 0})()
    assert logs[0]["event"] == "daemon.heartbeat"
    assert logs[0]["bars"] == 12


async def test_real_asyncio_scheduler_runs_and_stops(cal: SessionCalendar) -> None:
    fired = asyncio.Event()
    runs: list[datetime] = []
    started_long = asyncio.Event()
    cancelled = asyncio.Event()

    async def tick() -> None:
        runs.append(datetime.now(UTC))
        fired.set()
        if len(runs) == 1:
            raise RuntimeError("one bad run must not stop the next")

    async def long_job() -> None:
        started_long.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    jobs = [Job("tick", tick, Every(1.0)), Job("long", long_job, Every(1.0))]
    async with Scheduler(jobs, calendar=cal) as scheduler:
        next_runs = scheduler.next_run_times()
        assert set(next_runs) == {"tick", "long"}
        first = next_runs["tick"]
        assert first is not None
        assert first.tzinfo is not None
        assert 0 < (first - datetime.now(UTC)).total_seconds() <= 1.0
        await asyncio.wait_for(fired.wait(), timeout=3)
        fired.clear()
        await asyncio.wait_for(fired.wait(), timeout=3)  # ran again after the failure
        await asyncio.wait_for(started_long.wait(), timeout=3)
    assert len(runs) >= 2
    await asyncio.wait_for(cancelled.wait(), timeout=1)  # leaving the block cancels it
    assert scheduler.next_run_times() == {}
