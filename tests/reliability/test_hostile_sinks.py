"""Sinks fail alone: a Bot API answering 500 to everything, a broker down at start.

The daemon runs the demo session (replay feed, warmed up) with JSONL, MQTT and
Telegram. A sink that cannot start must not stop ingest or the other sinks;
its alerts wait in the outbox and go out, in order, once it is up.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiomqtt
import httpx
import pytest

from daemon.app import Ingest
from daemon.config import load_config
from daemon.feeds.replay import ReplayServer, ReplaySettings
from daemon.sample import demo_market
from daemon.secrets import Secrets
from daemon.service import run_daemon
from daemon.telegram.subscribers import SubscriberStore
from daemon.warmup import Warmup
from tests.daemon.daemon_config import write_config
from tests.daemon.sinks.mosquitto import Mosquitto, free_port
from tests.daemon.telegram.botapi import BotApiServer
from tests.daemon.telegram.kit import TOKEN, USER
from tests.reliability.startkit import FAST, alerts

pytestmark = pytest.mark.reliability

BOT_API_DOWN_S = 60.0
BROKER_DOWN_S = 30.0


class Subscriber:
    """A persistent MQTT subscriber to `iwm-alerts/alerts` that keeps trying to connect."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ids: list[str] = []

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="hostile-sub", clean_session=False
                ) as client:
                    await client.subscribe("iwm-alerts/alerts", qos=1)
                    async for message in client.messages:
                        self.ids.append(json.loads(message.payload)["id"])
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def _run_demo(
    tmp: Path,
    extra: str,
    until: Callable[[Ingest], bool],
    timeout_s: float,
    alerts_path: Path | None = None,
) -> Ingest:
    """The demo session through the daemon; stops once the session is ingested and
    `until(ingest)` holds."""
    m = demo_market()
    last = int(m.today["time"].max())  # type: ignore[arg-type]
    async with ReplayServer(m.today, ReplaySettings(speed=120.0)) as server:
        cfg = load_config(
            write_config(
                tmp, feed=f'url = "{server.url}"\nrest_url = "{server.rest_url}"', extra=extra,
                alerts=alerts_path,
            )
        )  # fmt: skip
        stop = asyncio.Event()
        ingests: list[Ingest] = []

        async def finish() -> None:
            while not ingests or ingests[0].stats.last_bar_time != last or not until(ingests[0]):
                await asyncio.sleep(0.1)
            stop.set()

        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tg:
            tg.create_task(finish())
            await run_daemon(
                cfg, Secrets.load(cfg), stop, warmup=Warmup(m.daily, m.history), realtime=False,
                on_ingest=ingests.append, sink_backoff=FAST,
            )  # fmt: skip
    return ingests[0]


def _telegram_alerts(api: BotApiServer) -> list[tuple[str, str]]:
    """(rule, symbol) of each alert message the user got, in order."""
    out = []
    for call in api.sent(USER):
        text = call.text or ""
        if "rule <code>" in text:
            rule = text.split("rule <code>", 1)[1].split("</code>", 1)[0]
            headline = text.split("<b>", 1)[1].split("</b>", 1)[0] if "<b>" in text else ""
            out.append((rule, headline.split(" ", 1)[0]))  # "IWM volume breakout: ..."
    return out


async def test_bot_api_answering_500_for_60_s_while_mqtt_and_jsonl_deliver(
    tmp_path: Path,
) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port)
        async with BotApiServer(TOKEN) as api:
            api.fail(for_s=BOT_API_DOWN_S)  # every method, from before the daemon starts
            down_until = time.monotonic() + BOT_API_DOWN_S
            (tmp_path / "state").mkdir(parents=True)
            with SubscriberStore.open(tmp_path / "state" / "subscribers.sqlite") as store:
                store.subscribe(USER, USER)
            extra = (
                f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
                f'[sinks.telegram]\napi_base_url = "{api.base_url}"\nrate_per_chat_s = 0.01\n'
            )
            others_done: list[float] = []

            def delivered(ingest: Ingest) -> bool:
                n = ingest.stats.alerts_emitted
                mqtt_all = n > 0 and len(set(sub.ids)) == n
                if not others_done and mqtt_all and len(alerts(tmp_path / "alerts.jsonl")) == n:
                    others_done.append(time.monotonic())
                return bool(others_done) and len(_telegram_alerts(api)) >= n

            async with asyncio.TaskGroup() as tg:
                listener = tg.create_task(sub.run())
                with _env(TELEGRAM_BOT_TOKEN=TOKEN):
                    ingest = await _run_demo(tmp_path, extra, delivered, BOT_API_DOWN_S + 90)
                listener.cancel()
            faulted = api.faulted()
    emitted = ingest.stats.alerts_emitted
    assert emitted >= 3, "the demo session alerts"
    # The fault happened: the Bot API answered 500 to the start-up calls, many times.
    assert len(faulted) >= 3 and any(c.method.lower() == "getme" for c in faulted)
    # MQTT and JSONL delivered everything while the Bot API was still failing.
    assert others_done and others_done[0] < down_until
    # Then Telegram got the backlog: every alert once, in the order it was decided.
    in_order = [(rule, symbol) for _, rule, symbol, _ in alerts(tmp_path / "alerts.jsonl")]
    assert _telegram_alerts(api) == in_order
    assert sorted(set(sub.ids)) == sorted(a[0] for a in alerts(tmp_path / "alerts.jsonl"))


async def test_broker_down_for_30_s_at_start(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")  # its port is chosen; nothing listens yet
    sub = Subscriber(broker.port)
    started_at: list[float] = []

    async def broker_later() -> None:
        await asyncio.sleep(BROKER_DOWN_S)
        started_at.append(time.monotonic())
        await asyncio.to_thread(broker.start)

    jsonl_done: list[float] = []

    def delivered(ingest: Ingest) -> bool:
        n = ingest.stats.alerts_emitted
        if not jsonl_done and n and len(alerts(tmp_path / "alerts.jsonl")) == n:
            jsonl_done.append(time.monotonic())
        return bool(n) and len(set(sub.ids)) >= n

    extra = f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(broker_later())
            listener = tg.create_task(sub.run())
            ingest = await _run_demo(tmp_path, extra, delivered, BROKER_DOWN_S + 60)
            listener.cancel()
    finally:
        broker.stop()
    emitted = ingest.stats.alerts_emitted
    assert emitted >= 3
    # The fault happened: JSONL had every alert before the broker existed.
    assert jsonl_done and started_at and jsonl_done[0] < started_at[0]
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        (tries,) = db.execute("select max(attempts) from deliveries where sink = 'mqtt'").fetchone()
    assert tries >= 2, "no publish was tried while the broker was down"
    # Then MQTT delivered the backlog: every alert, none twice.
    ids = [a[0] for a in alerts(tmp_path / "alerts.jsonl")]
    assert sorted(set(sub.ids)) == sorted(ids) and len(sub.ids) == len(ids)


async def test_jsonl_path_not_writable_fails_alone_and_is_named(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the alerts directory should be")
    path = blocked / "alerts.jsonl"
    port = free_port()
    seen: dict[str, object] = {}
    emitted: list[int] = []

    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port)

        async def check_then_unblock() -> None:
            while not emitted or not emitted[-1] or len(set(sub.ids)) < emitted[-1]:
                await asyncio.sleep(0.1)
            async with httpx.AsyncClient() as http:
                seen["health"] = (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
                seen["metrics"] = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            blocked.unlink()  # the operator fixes it: the sink starts on its next try

        def done(ingest: Ingest) -> bool:
            emitted.append(ingest.stats.alerts_emitted)
            return "health" in seen and len(alerts(path)) >= ingest.stats.alerts_emitted

        extra = (
            f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
            f'[health]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
        )
        async with asyncio.TaskGroup() as tg:
            listener = tg.create_task(sub.run())
            tg.create_task(check_then_unblock())
            ingest = await _run_demo(tmp_path, extra, done, 90, alerts_path=path)
            listener.cancel()
    assert ingest.stats.alerts_emitted >= 3
    # While the path was blocked: MQTT had every alert, /healthz and /metrics named the sink.
    health = seen["health"]
    assert isinstance(health, dict)
    jsonl = health["sinks"]["jsonl"]
    assert jsonl["up"] is False and jsonl["start_failures"] >= 1, jsonl
    assert jsonl["depth"] == ingest.stats.alerts_emitted
    assert "NotADirectoryError" in jsonl["problem"] or "FileExistsError" in jsonl["problem"]
    waiting = health["waiting"]
    assert (
        "NotADirectoryError" in waiting["sink jsonl"] or "FileExistsError" in waiting["sink jsonl"]
    )
    assert health["sinks"]["mqtt"]["up"] is True
    metrics = str(seen["metrics"])
    assert 'iwm_alerts_sink_up{sink="jsonl"} 0.0' in metrics
    assert re.search(r'iwm_alerts_sink_start_failures_total\{sink="jsonl"\} [1-9]', metrics)
    # Then the JSONL sink started and wrote the backlog, in the order decided.
    assert [a[0] for a in alerts(path)] == sorted(set(sub.ids), key=sub.ids.index)
