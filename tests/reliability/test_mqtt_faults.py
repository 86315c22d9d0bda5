"""The MQTT sink against a real Mosquitto that restarts under load, and a daemon killed outright.

The daemon runs whole (`run_daemon`, or `python -m daemon.cli run` as a
subprocess) against a local replay server; a persistent subscriber on the
broker is the customer. Nothing here is mocked: broker, daemon and replay are
real processes or servers on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import polars as pl
import pytest

from daemon.app import Ingest, run_daemon
from daemon.config import load_config
from daemon.feeds.replay import ReplayServer
from daemon.secrets import Secrets
from daemon.sinks import ha_discovery as ha
from tests.daemon.daemon_config import write_config
from tests.daemon.minute_market import minute_market
from tests.daemon.sinks.mosquitto import Mosquitto
from tests.reliability.scale import FULL, scale

pytestmark = pytest.mark.reliability

RESTARTS = scale(3, 10)
ALERTS = scale(150, 600)
SYMBOLS = ("IWM", "SPY", "QQQ")
MINUTES = ALERTS // len(SYMBOLS)  # the rule fires once per symbol and minute
# Bar-minutes per second. The stream must outlast every restart, and the sink's
# reconnect backoff only resets after a 30 s session: ten quick restarts push its
# delays to 15-30 s each, so the full form streams slowly.
SPEED = scale(3.0, 0.75)
DOWN_S = 1.0
REPUBLISH_WITHIN_S = 5.0
BASE = "iwm-alerts"
PREFIX = "homeassistant"

RULES = """
[[rule]]
name = "every_bar"
operator = "greater_than"
timeframe = "1m"
value = "close"
threshold = 0
"""


class PersistentBroker(Mosquitto):
    """The test broker with persistence on, as in production: a persistent subscriber's
    session and its queued QoS 1 messages outlive a restart (so does the retained store:
    republishing is observed as fresh forwards, not as what a new subscription finds)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        with self.config_path.open("a") as conf:
            conf.write(f"persistence true\npersistence_location {directory}/\n")


def _config(tmp: Path, server: ReplayServer, broker_port: int) -> Path:
    return write_config(
        tmp,
        feed=f'url = "{server.url}"\nrest_url = "{server.rest_url}"',
        rules=RULES,
        symbols=SYMBOLS,
        log="info",
        extra=f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{broker_port}"\n',
    )


def _market(minutes: int) -> pl.DataFrame:
    df, _ = minute_market(n_sessions=2)
    first = df["time"].unique().sort()[:minutes]
    return df.filter(pl.col("time").is_in(first.implode()))


@dataclass(frozen=True)
class Seen:
    """One message as the subscriber got it, with its arrival time (monotonic)."""

    at: float
    topic: str
    payload: bytes


async def _subscribe_forever(
    port: int, identifier: str, topics: list[str], seen: list[Seen], ready: asyncio.Event
) -> None:
    """A persistent session (clean_session=False, QoS 1) that reconnects as fast as it can.

    It subscribes once: the broker keeps the session, and the messages published
    while the subscriber was away, across its own restarts.
    """
    subscribed = False
    while True:
        try:
            async with aiomqtt.Client(
                "127.0.0.1", port, identifier=identifier, clean_session=False
            ) as client:
                if not subscribed:
                    for topic in topics:
                        await client.subscribe(topic, qos=1)
                    subscribed = True
                ready.set()
                async for m in client.messages:
                    payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                    seen.append(Seen(time.monotonic(), str(m.topic), payload))
        except aiomqtt.MqttError:
            await asyncio.sleep(0.02)


async def _first(
    seen: list[Seen], match: Callable[[Seen], bool], after: float, timeout_s: float
) -> Seen:
    deadline = time.monotonic() + timeout_s
    while True:
        hit = next((m for m in seen if m.at >= after and match(m)), None)
        if hit is not None:
            return hit
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing matching within {timeout_s} s")
        await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Restart:
    """What one broker restart looked like from outside."""

    pending_while_down: int  # alerts waiting in the outbox for mqtt just before the restart
    emitted_while_down: int
    reconnect_s: float  # broker up -> the daemon's `online`
    republish_s: float  # the daemon's `online` -> the last discovery config and state


async def test_broker_restarted_under_a_stream_of_alerts_loses_none_repeats_only_in_flight(
    tmp_path: Path,
) -> None:
    df = _market(MINUTES)
    last = int(df["time"].max())  # type: ignore[arg-type]
    discovery = [t for t, _ in ha.discovery_messages(symbols=SYMBOLS, rule_names=["every_bar"])]
    retained = discovery + [ha.state_topic(BASE, s) for s in SYMBOLS]
    status = ha.status_topic(BASE)
    seen: list[Seen] = []
    restarts: list[Restart] = []
    started = time.monotonic()
    with PersistentBroker(tmp_path / "broker") as broker:
        ready = asyncio.Event()
        async with asyncio.TaskGroup() as outer:
            listener = outer.create_task(
                _subscribe_forever(
                    broker.port, "persistent-sub", [f"{BASE}/#", f"{PREFIX}/#"], seen, ready
                )
            )
            await asyncio.wait_for(ready.wait(), 10)
            async with ReplayServer(df, speed=SPEED) as server:
                config = load_config(_config(tmp_path, server, broker.port))
                stop = asyncio.Event()
                ingests: list[Ingest] = []

                async def restart_broker(k: int) -> None:
                    await server.wait_played((k + 1) * server.minutes_total // (RESTARTS + 2))
                    outbox, stats = ingests[0].outbox, ingests[0].stats
                    emitted = stats.alerts_emitted
                    await asyncio.to_thread(broker.stop)
                    await asyncio.sleep(DOWN_S)
                    pending = outbox.depth("mqtt")
                    emitted_down = stats.alerts_emitted - emitted
                    await asyncio.to_thread(broker.start)
                    up = time.monotonic()
                    online = await _first(
                        seen, lambda m: m.topic == status and m.payload == b"online", up, 60
                    )
                    arrivals = [
                        await _first(seen, lambda m, t=t: m.topic == t, online.at, 30)  # type: ignore[misc]
                        for t in retained
                    ]
                    restarts.append(
                        Restart(
                            pending_while_down=pending,
                            emitted_while_down=emitted_down,
                            reconnect_s=online.at - up,
                            republish_s=max(a.at for a in arrivals) - online.at,
                        )
                    )

                async def faults() -> None:
                    await _first(
                        seen, lambda m: m.topic == status and m.payload == b"online", 0, 30
                    )
                    for k in range(RESTARTS):
                        await restart_broker(k)
                    await server.wait_played(server.minutes_total)
                    async with asyncio.timeout(300):
                        while (
                            ingests[0].stats.last_bar_time != last
                            or ingests[0].outbox.depth("mqtt") > 0
                        ):
                            await asyncio.sleep(0.05)
                    stop.set()

                async with asyncio.TaskGroup() as tg:
                    tg.create_task(faults())
                    stats = await run_daemon(
                        config,
                        Secrets.load(config),
                        stop,
                        realtime=False,
                        on_ingest=ingests.append,
                    )
            await asyncio.sleep(0.5)  # the last acknowledged publishes reach the subscriber
            listener.cancel()
    wall_s = time.monotonic() - started

    reference = [
        json.loads(line)["id"] for line in (tmp_path / "alerts.jsonl").read_text().splitlines()
    ]
    assert stats.alerts_emitted == len(set(reference)) == len(reference) == ALERTS
    got = [json.loads(m.payload)["id"] for m in seen if m.topic == ha.alerts_topic(BASE)]
    duplicates = len(got) - len(set(got))
    assert set(got) == set(reference), f"lost {len(set(reference) - set(got))}"
    # QoS 1 is at-least-once. A broker stopped with our publish in flight closes the
    # socket with a reset, and the kernel drops the PUBACK already on its way: the
    # outbox retries that alert, so a subscriber may see it twice. That is the only
    # duplicate there may be: at most one per restart, each one an alert that was retried.
    twice = [i for i, n in Counter(got).items() if n > 1]
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        tries = {
            i: db.execute(
                "select attempts from deliveries where alert_id = ? and sink = 'mqtt'", (i,)
            ).fetchone()[0]
            for i in twice
        }
    assert duplicates == len(twice) <= RESTARTS, Counter(got).most_common(3)
    assert all(n >= 2 for n in tries.values()), tries
    # The faults were real: each restart found alerts waiting, and delivery had to retry.
    assert len(restarts) == RESTARTS
    for r in restarts:
        assert r.pending_while_down > 0, restarts
        assert r.republish_s < REPUBLISH_WITHIN_S, restarts
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        retried, undelivered = db.execute(
            "select sum(attempts > 1), sum(status != 'delivered') from deliveries"
            " where sink = 'mqtt'"
        ).fetchone()
    assert retried > 0 and undelivered == 0
    onlines = [m for m in seen if m.topic == status and m.payload == b"online"]
    assert len(onlines) >= RESTARTS + 1
    assert seen[-1].topic == status and seen[-1].payload == b"offline"
    print(
        f"\nmqtt ({'full' if FULL else 'short'}): {RESTARTS} broker restarts, {ALERTS} alerts, "
        f"{len(set(reference)) - len(set(got))} lost, {duplicates} duplicates (in-flight at a "
        "restart, retried), "
        f"{retried} alerts retried; republish after reconnect max "
        f"{max(r.republish_s for r in restarts):.3f} s (each: "
        f"{[round(r.republish_s, 3) for r in restarts]}); reconnect after broker up max "
        f"{max(r.reconnect_s for r in restarts):.1f} s; pending while down "
        f"{[r.pending_while_down for r in restarts]}; wall {wall_s:.1f} s"
    )


async def test_sigkill_leaves_the_last_will_offline_on_the_availability_topic(
    tmp_path: Path,
) -> None:
    df = _market(scale(120, 300))
    status = ha.status_topic(BASE)
    seen: list[Seen] = []
    with Mosquitto(tmp_path / "broker") as broker:
        ready = asyncio.Event()
        async with asyncio.TaskGroup() as outer:
            listener = outer.create_task(
                _subscribe_forever(broker.port, "availability-watch", [status], seen, ready)
            )
            await asyncio.wait_for(ready.wait(), 10)
            async with ReplayServer(df, speed=20.0) as server:
                config = _config(tmp_path, server, broker.port)
                log = tmp_path / "daemon.log"
                with log.open("wb") as err:
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "daemon.cli", "run", "--config", str(config),
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )  # fmt: skip
                try:
                    await _first(seen, lambda m: m.payload == b"online", 0, 30)
                    await server.wait_played(10)  # streaming, not just connected
                    assert proc.returncode is None
                    proc.kill()
                    killed = time.monotonic()
                    assert await proc.wait() == -signal.SIGKILL
                    will = await _first(seen, lambda m: m.payload == b"offline", killed, 10)
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
            listener.cancel()
    events = [json.loads(line).get("event") for line in log.read_text().splitlines()]
    assert "mqtt.connected" in events
    # The daemon never got to say goodbye: `offline` is the broker's, the last will.
    assert "daemon.stopping" not in events and "mqtt.disconnected" not in events
    assert [m.payload for m in seen if m.at < killed][-1] == b"online"
    print(f"\nlast will: offline {will.at - killed:.3f} s after SIGKILL")
