"""The daemon as a real process (`python -m daemon.cli run`), killed with SIGKILL mid-replay.

The replay server lives in the test process, for the whole test: like a real
market it keeps playing while the daemon is dead. Each restarted daemon
resumes from its last snapshot and backfills from the snapshot's last minute,
re-deriving alerts the outbox already holds (refused by id) and the ones it
missed while it was down. Across every run the sink must see the clean run's
alert set exactly: nothing lost, and at most the in-flight alert of each kill
twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from daemon.app import Ingest
from daemon.config import load_config
from daemon.feeds.replay import ReplayServer, ReplaySettings
from daemon.secrets import Secrets
from daemon.service import run_daemon
from daemon.snapshot import last_minute, load_snapshot
from signals.pipeline import Pipeline
from tests.daemon.daemon_config import write_config
from tests.daemon.minute_market import minute_market
from tests.reliability.scale import scale

pytestmark = pytest.mark.reliability

KILLS = scale(3, 10)
MINUTES = scale(150, 390)
SPEED = 6.0  # bar-minutes per second: the replay outlasts the kills and restarts
SNAPSHOT_EVERY_S = 300  # feed time: a snapshot every 5 bar-minutes, ~1 a second here
MID_WRITE_KILLS = scale(2, 10)  # kills that must land inside a snapshot write

# Every closed bar fires `every_bar` for each symbol; `iwm_cross` has state (armed or not)
# that a restart must carry over exactly, or its alerts would differ from the clean run's.
RULES = """
[[rule]]
name = "every_bar"
operator = "greater_than"
timeframe = "1m"
value = "close"
threshold = 0

[[rule]]
name = "iwm_cross"
operator = "crossing_up"
timeframe = "1m"
value = "close"
threshold = {level}
"""


def _market() -> tuple[pl.DataFrame, float]:
    df, _ = minute_market(n_sessions=2)
    first = df["time"].unique().sort()[:MINUTES]
    df = df.filter(pl.col("time").is_in(first.implode()))
    level = float(df.filter(pl.col("symbol") == "IWM")["close"].median())  # type: ignore[arg-type]
    return df, level


def _config(tmp: Path, server: ReplayServer, level: float) -> Path:
    return write_config(
        tmp,
        feed=f'url = "{server.url}"\nrest_url = "{server.rest_url}"',
        rules=RULES.format(level=level),
        state=f"snapshot_every_s = {SNAPSHOT_EVERY_S}\n",
        log="info",
    )


def _delivered(tmp: Path) -> list[str]:
    """Alert ids in the order the sink wrote them."""
    path = tmp / "alerts.jsonl"
    if not path.exists():
        return []
    ids = []
    for line in path.read_text().splitlines():
        try:
            ids.append(json.loads(line)["id"])
        except json.JSONDecodeError:
            continue  # a line torn by a kill: its alert was not settled and is sent again
    return ids


def _events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


async def _clean_run(tmp: Path, df: pl.DataFrame, level: float) -> set[str]:
    """The same config and product path (`run` in feed time), in-process, no fault."""
    last = int(df["time"].max())  # type: ignore[arg-type]
    async with ReplayServer(df, ReplaySettings(speed=0.0)) as server:
        config = load_config(_config(tmp, server, level))
        stop = asyncio.Event()
        ingests: list[Ingest] = []

        async def finish() -> None:
            while not ingests or ingests[0].stats.last_bar_time != last:
                await asyncio.sleep(0.02)
            stop.set()

        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            tg.create_task(finish())
            await run_daemon(
                config,
                Secrets.load(config),
                stop,
                realtime=False,
                snapshots=True,
                on_ingest=ingests.append,
            )
    ids = _delivered(tmp)
    assert len(ids) == len(set(ids))
    return set(ids)


@dataclass
class _Run:
    proc: asyncio.subprocess.Process
    log: Path
    delivered_at_start: int


async def _start(config: Path, log: Path, tmp: Path) -> _Run:
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon.cli", "run", "--config", str(config),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    return _Run(proc, log, len(_delivered(tmp)))


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_kill_9_mid_replay_loses_no_alert_and_repeats_at_most_the_in_flight_one(
    tmp_path: Path,
) -> None:
    df, level = _market()
    clean = await _clean_run(tmp_path / "clean", df, level)
    assert len(clean) >= 3 * MINUTES

    tmp = tmp_path / "faulty"
    started = time.monotonic()
    rng = random.Random(8)
    kill_minutes: list[int] = []
    async with ReplayServer(df, ReplaySettings(speed=SPEED)) as server:
        config = _config(tmp, server, level)
        runs = [await _start(config, tmp / "run-0.log", tmp)]
        try:
            for k in range(KILLS):
                run = runs[-1]
                target = (k + 1) * server.minutes_total * 3 // (4 * (KILLS + 1))

                # Live again: past the target minute and delivering new alerts.
                def live(run: _Run = run, target: int = target) -> bool:
                    return (
                        server.minutes_played >= target
                        and len(_delivered(tmp)) > run.delivered_at_start
                    )

                await _until(live, 60, f"run {k} to deliver")
                await asyncio.sleep(rng.uniform(0.0, 0.4))
                run.proc.kill()
                assert await run.proc.wait() == -signal.SIGKILL
                kill_minutes.append(server.minutes_played)
                assert server.minutes_played < server.minutes_total, "the replay ended first"
                runs.append(await _start(config, tmp / f"run-{k + 1}.log", tmp))
            await _until(lambda: clean <= set(_delivered(tmp)), 120, "every clean alert")
            # A clean stop, last: within 10 s, exit 0, nothing left mid-send.
            final = runs[-1].proc
            final.send_signal(signal.SIGTERM)
            stopping = time.monotonic()
            async with asyncio.timeout(15):
                rc = await final.wait()
            stop_s = time.monotonic() - stopping
        finally:
            for run in runs:
                if run.proc.returncode is None:
                    run.proc.kill()
                    await run.proc.wait()
    wall_s = time.monotonic() - started

    assert rc == 0, runs[-1].log.read_text()[-3000:]
    assert stop_s < 10
    delivered = _delivered(tmp)
    duplicates = len(delivered) - len(set(delivered))
    lost = clean - set(delivered)
    assert not lost
    assert set(delivered) == clean
    assert duplicates <= KILLS
    # Each restart really resumed: from its snapshot, with the gap backfilled from its last minute.
    for run in runs[1:]:
        events = _events(run.log)
        names = [e.get("event") for e in events]
        assert "snapshot.restored" in names, run.log
        backfills = [e for e in events if e.get("event") == "feed.backfill"]
        assert backfills and int(str(backfills[0]["bars"])) > 0, run.log
    assert "daemon.stopping" in [e.get("event") for e in _events(runs[-1].log)]
    with sqlite3.connect(tmp / "state" / "outbox.sqlite") as db:
        statuses = dict(db.execute("select status, count(*) from deliveries group by status"))
    assert statuses == {"delivered": len(clean)}
    print(
        f"\nkill -9: {KILLS} kills at minutes {kill_minutes} of {MINUTES}, {len(clean)} alerts, "
        f"{len(lost)} lost, {duplicates} duplicates, SIGTERM exit {stop_s:.2f} s, "
        f"wall {wall_s:.1f} s"
    )


REPO = Path(__file__).resolve().parents[2]

# Builds the pipeline both sides use; run by the child and by the test.
_PIPELINE = """
from daemon.rules_file import load_rules
from signals.engine import EngineConfig
from signals.pipeline import Pipeline
from tests.daemon.minute_market import minute_market
df, table = minute_market(n_sessions=2)
pipe = Pipeline(EngineConfig(rvol_sessions=3), load_rules(None), sessions=table)
"""

# Resumes from the snapshot, then feeds minute after minute, saving after each one.
_CHILD = (
    _PIPELINE
    + """
import sys
from pathlib import Path
from daemon.bars import frame_to_batch
from daemon.logs import configure_logging
from daemon.snapshot import last_minute, load_snapshot, save_snapshot
configure_logging(level="error")  # stdout carries "ready" only
directory = Path(sys.argv[1])
load_snapshot(pipe, directory)
done = last_minute(pipe) or -1
print("ready", flush=True)
for minute in df.filter(df["time"] > done).partition_by("time", maintain_order=True):
    pipe.on_minute_bars(frame_to_batch(minute))
    save_snapshot(pipe, directory, 0.0)
"""
)


def _fresh_pipeline() -> Pipeline:
    scope: dict[str, object] = {}
    exec(_PIPELINE, scope)  # the very code the child runs
    pipe = scope["pipe"]
    assert isinstance(pipe, Pipeline)
    return pipe


def test_kill_9_mid_snapshot_write_leaves_the_previous_snapshot_usable(tmp_path: Path) -> None:
    directory = tmp_path / "snapshot"
    rng = random.Random(9)
    resumed: list[int] = []
    interrupted = kills = 0
    # A kill lands inside a write about half the time: kill until enough did (bounded).
    while interrupted < MID_WRITE_KILLS and kills < 4 * MID_WRITE_KILLS + 4:
        kills += 1
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(directory)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.2, 0.6))
            assert child.poll() is None, "the child finished before it was killed"
        finally:
            child.kill()
        assert child.wait() == -signal.SIGKILL
        # Caught mid-write: the next snapshot half built, or the current one moved aside.
        if any(directory.with_name(f"snapshot.{s}").exists() for s in ("tmp", "old")):
            interrupted += 1
        pipe = _fresh_pipeline()
        assert load_snapshot(pipe, directory) is not None
        minute = last_minute(pipe)
        assert minute is not None
        resumed.append(minute)
    assert resumed == sorted(resumed) and resumed[-1] > resumed[0], resumed
    assert interrupted >= MID_WRITE_KILLS, f"only {interrupted} of {kills} kills hit a write"
    print(f"\nsnapshot kill -9: {kills} kills, {interrupted} mid-write, all usable")
