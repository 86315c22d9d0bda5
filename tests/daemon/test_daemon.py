"""The whole daemon against a real local Alpaca-protocol server: faults, shutdown, MQTT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiomqtt
import httpx
import polars as pl
import pytest

from daemon.app import Ingest, IngestStats
from daemon.config import load_config
from daemon.feeds.replay import ReplaySettings
from daemon.secrets import Secrets
from daemon.service import run_daemon
from daemon.telegram.subscribers import SubscriberStore
from tests.daemon.daemon_config import write_config
from tests.daemon.feeds.replay_harness import ReplayHarness
from tests.daemon.minute_market import minute_market
from tests.daemon.sinks.mosquitto import Mosquitto, free_port
from tests.daemon.telegram.botapi import BotApiServer
from tests.daemon.telegram.kit import TOKEN, USER

RULES = """
[[rule]]
name = "px_up"
operator = "crossing_up"
timeframe = "1m"
value = "close"
threshold = {level}
"""


def _config(tmp: Path, url: str, rest_url: str, level: float, extra: str = "") -> Path:
    feed = f'url = "{url}"\nrest_url = "{rest_url}"'
    return write_config(tmp, feed=feed, rules=RULES.format(level=level), extra=extra)


async def _run(
    tmp: Path, bars: pl.DataFrame, level: float, during: Callable[[ReplayHarness], Awaitable[None]] | None = None,
    speed: float = 400.0, extra: str = "", snapshots: bool = False,
) -> tuple[IngestStats, Ingest]:  # fmt: skip
    last = int(bars["time"].max())  # type: ignore[arg-type]
    async with ReplayHarness(bars, ReplaySettings(speed=speed)) as server:
        config = load_config(_config(tmp, server.url, server.rest_url, level, extra))
        stop = asyncio.Event()
        ingests: list[Ingest] = []

        async def finish() -> None:
            if during is not None:
                await during(server)
            await server.wait_played(server.minutes_total)
            while not ingests or ingests[0].stats.last_bar_time != last:
                await asyncio.sleep(0.02)
            stop.set()

        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            tg.create_task(finish())
            stats = await run_daemon(
                config,
                Secrets.load(config),
                stop,
                realtime=False,
                on_ingest=ingests.append,
                snapshots=snapshots,
            )
    return stats, ingests[0]


def _alert_ids(tmp: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (tmp / "alerts.jsonl").read_text().splitlines()]


def _daily_volumes(ingest: Ingest) -> dict[tuple[str, int], float]:
    daily = ingest.pipeline.engine("1d")
    out = {}
    for sym in ("IWM", "SPY", "QQQ"):
        f = daily.rings.frame(daily.row(sym))
        out.update({(sym, int(t)): float(v) for t, v in zip(f["time"], f["volume"], strict=True)})
    return out


async def test_server_killed_mid_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    df, _ = minute_market(n_sessions=3)
    level = float(df.filter(pl.col("symbol") == "IWM")["close"].median())  # type: ignore[arg-type]
    clean_dir, faulty_dir = tmp_path / "clean", tmp_path / "faulty"
    clean_dir.mkdir()
    faulty_dir.mkdir()
    clean_stats, clean = await _run(clean_dir, df, level)

    async def kill_five_times(server: ReplayHarness) -> None:
        for k in range(5):
            await server.wait_played((k + 1) * server.minutes_total // 7)
            # Under load the daemon may still be reconnecting from the last kill:
            # wait for it to be back, so that each of the five kills hits a session.
            async with asyncio.timeout(30):
                while server.kill_connections() == 0:
                    await asyncio.sleep(0.01)

    faulty_stats, faulty = await _run(faulty_dir, df, level, kill_five_times)
    assert faulty.pipeline.minute is not None and clean.pipeline.minute is not None
    # Every minute arrived exactly once: aggregated daily volumes equal the source's.
    source = (
        df.with_columns((pl.col("time") // 86_400 * 86_400).alias("day"))
        .group_by("symbol", "day")
        .agg(pl.col("volume").sum())
    )
    want = {(r["symbol"], r["day"]): r["volume"] for r in source.iter_rows(named=True)}
    assert _daily_volumes(faulty) == want == _daily_volumes(clean)
    assert faulty.pipeline.minute.rejected_total.get("duplicate", 0) == 0
    ids = _alert_ids(faulty_dir)
    assert ids and len(ids) == len(set(ids)) and sorted(ids) == sorted(_alert_ids(clean_dir))
    assert faulty_stats.alerts_emitted == clean_stats.alerts_emitted == len(ids)


async def test_alerts_and_state_reach_a_real_mqtt_subscriber(tmp_path: Path) -> None:
    df, _ = minute_market(n_sessions=2)
    level = float(df.filter(pl.col("symbol") == "IWM")["close"].median())  # type: ignore[arg-type]
    with Mosquitto(tmp_path / "broker") as broker:
        received: list[aiomqtt.Message] = []

        async def listen(ready: asyncio.Event) -> None:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-sub") as client:
                await client.subscribe("iwm-alerts/#", qos=1)
                await client.subscribe("homeassistant/#", qos=1)
                ready.set()
                async for message in client.messages:
                    received.append(message)

        ready = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            listener = tg.create_task(listen(ready))
            await asyncio.wait_for(ready.wait(), 5)
            extra = f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
            stats, _ = await _run(tmp_path, df, level, extra=extra)
            await asyncio.sleep(0.5)
            listener.cancel()
    topics = {str(m.topic) for m in received}
    alerts = [json.loads(m.payload) for m in received if str(m.topic) == "iwm-alerts/alerts"]
    assert len(alerts) == stats.alerts_emitted > 0
    assert {"iwm-alerts/IWM/alerts", "iwm-alerts/IWM/state", "iwm-alerts/status"} <= topics
    assert any(t.startswith("homeassistant/sensor/") for t in topics)
    last_state = [
        json.loads(m.payload) for m in received if str(m.topic) == "iwm-alerts/IWM/state"
    ][-1]
    assert last_state["price"] == pytest.approx(
        float(df.filter(pl.col("symbol") == "IWM")["close"][-1])
    )
    statuses = [m.payload for m in received if str(m.topic) == "iwm-alerts/status"]
    assert statuses[0] == b"online" and statuses[-1] == b"offline"


def _retained(port: int, topic: str) -> bytes | None:
    """The retained message on `topic`, as a new subscriber finds it (None: there is none)."""

    async def read() -> bytes | None:
        async with aiomqtt.Client("127.0.0.1", port, identifier="retained-check") as client:
            await client.subscribe(topic, qos=1)
            try:
                async with asyncio.timeout(1.0):
                    async for message in client.messages:
                        return message.payload if isinstance(message.payload, bytes) else None
            except TimeoutError:
                pass
        return None

    return asyncio.run(read())


def test_sigterm_stops_cleanly_within_ten_seconds(tmp_path: Path) -> None:
    df, _ = minute_market(n_sessions=2)
    bars = tmp_path / "bars.csv"
    df.with_columns(
        pl.from_epoch("time", time_unit="s")
        .dt.replace_time_zone("UTC")
        .dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        .alias("timestamp")
    ).drop("time").write_csv(bars)
    with Mosquitto(tmp_path / "broker") as broker:
        extra = f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
        config = _config(tmp_path, "ws://127.0.0.1:9/unused", "http://127.0.0.1:9", 1e9, extra)
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "replay", "--bars", str(bars), "--speed", "20", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while _retained(broker.port, "iwm-alerts/status") != b"online":
                assert time.monotonic() < deadline, "the daemon never came online"
                time.sleep(0.1)
            time.sleep(1.5)
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            _out, err = proc.communicate(timeout=10)
            assert time.monotonic() - started < 10
        finally:
            proc.kill()
        # A clean DISCONNECT sends no last will: this `offline` is the daemon's own.
        status = _retained(broker.port, "iwm-alerts/status")
    assert proc.returncode == 0, err[-2000:]
    assert "daemon.stopping" in err
    assert status == b"offline"
    assert "mqtt.offline_failed" not in err
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        assert (
            db.execute("select count(*) from deliveries where status = 'sending'").fetchone()[0]
            == 0
        )


def test_sighup_reloads_the_rules_of_the_running_daemon(tmp_path: Path) -> None:
    """`systemctl reload` (SIGHUP) swaps the rules between two bars; a broken file is
    refused with its reason in the log and the daemon runs on with the rules it had."""
    df, _ = minute_market(n_sessions=2)
    bars = tmp_path / "bars.csv"
    df.with_columns(
        pl.from_epoch("time", time_unit="s").dt.replace_time_zone("UTC")
        .dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias("timestamp")
    ).drop("time").write_csv(bars)  # fmt: skip
    config = _config(tmp_path, "ws://127.0.0.1:9/unused", "http://127.0.0.1:9", 1e9)
    every_bar = (
        RULES.format(level=0.0).replace("crossing_up", "greater_than").replace("px_up", "every")
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "replay", "--bars", str(bars), "--speed", "10", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    alerts = tmp_path / "alerts.jsonl"

    def fired() -> list[str]:
        return (
            [json.loads(x)["rule"] for x in alerts.read_text().splitlines()]
            if alerts.exists()
            else []
        )

    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "state" / "outbox.sqlite").exists():
            assert time.monotonic() < deadline, "the daemon never started"
            time.sleep(0.1)
        time.sleep(1.0)
        assert fired() == []  # px_up at 1e9 never fires
        (tmp_path / "rules.toml").write_text(every_bar)
        proc.send_signal(signal.SIGHUP)
        while "every" not in fired():
            assert time.monotonic() < deadline, "the reloaded rule never fired"
            time.sleep(0.1)
        (tmp_path / "rules.toml").write_text(every_bar.replace("greater_than", "grater_than"))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        n = len(fired())
        time.sleep(1.0)
        assert len(fired()) > n  # still running, on the rules it had
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert set(fired()) == {"every"}
    assert '"rules.reload_signal"' in err or "rules.reload_signal" in err
    failed = [line for line in err.splitlines() if "rules.reload_failed" in line]
    assert len(failed) == 1 and "rules.toml" in failed[0] and "operator" in failed[0]


async def test_alerts_reach_telegram_subscribers_and_commands_read_the_daemon(
    tmp_path: Path,
) -> None:
    df, _ = minute_market(n_sessions=3)
    level = float(df.filter(pl.col("symbol") == "IWM")["close"].median())  # type: ignore[arg-type]
    async with BotApiServer(TOKEN) as api:
        (tmp_path / "state").mkdir()
        with SubscriberStore.open(tmp_path / "state" / "subscribers.sqlite") as store:
            store.subscribe(USER, USER)
        extra = f'[sinks.telegram]\napi_base_url = "{api.base_url}"\nrate_per_chat_s = 0.01\n'
        replies: list[str] = []

        async def ask_score(server: ReplayHarness) -> None:
            await server.wait_played(server.minutes_total // 2)
            before = len(api.sent(USER))
            api.push_message("/score IWM", chat_id=USER, user_id=USER)
            calls = await api.wait_for(
                lambda c: c.ok and c.chat_id == USER and "score" in (c.text or ""), count=1
            )
            replies.extend(c.text or "" for c in calls)
            assert len(api.sent(USER)) > before

        os.environ["TELEGRAM_BOT_TOKEN"] = TOKEN
        try:
            stats, _ = await _run(tmp_path, df, level, ask_score, speed=150.0, extra=extra)
        finally:
            del os.environ["TELEGRAM_BOT_TOKEN"]
        texts = [c.text or "" for c in api.sent(USER)]
    alert_texts = [t for t in texts if "rule <code>px_up</code>" in t]
    assert stats.alerts_emitted > 0 and len(alert_texts) == stats.alerts_emitted
    assert any("<b>IWM</b> score" in r and "rsi" in r for r in replies)


async def test_broker_restarted_mid_run_loses_no_alert(tmp_path: Path) -> None:
    """The outbox holds alerts while the broker is down and delivers them after it returns."""
    df, _ = minute_market(n_sessions=3)
    level = float(df.filter(pl.col("symbol") == "IWM")["close"].median())  # type: ignore[arg-type]
    with Mosquitto(tmp_path / "broker") as broker:
        got: list[str] = []

        async def listen() -> None:
            # A persistent session: QoS 1 messages published while we are away are kept for us.
            while True:
                try:
                    async with aiomqtt.Client(
                        "127.0.0.1", broker.port, identifier="persistent-sub", clean_session=False
                    ) as client:
                        await client.subscribe("iwm-alerts/alerts", qos=1)
                        async for message in client.messages:
                            got.append(json.loads(message.payload)["id"])
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.2)

        async def restart_twice(server: ReplayHarness) -> None:
            for k in (1, 2):
                await server.wait_played(k * server.minutes_total // 3)
                broker.stop()
                await asyncio.sleep(1.0)
                broker.start()

        async with asyncio.TaskGroup() as tg:
            listener = tg.create_task(listen())
            await asyncio.sleep(0.5)
            extra = f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
            stats, _ = await _run(tmp_path, df, level, restart_twice, speed=200.0, extra=extra)
            async with asyncio.timeout(15):
                while len(set(got)) < stats.alerts_emitted:
                    await asyncio.sleep(0.1)
            listener.cancel()
    assert stats.alerts_emitted > 0
    assert sorted(set(got)) == sorted(_alert_ids(tmp_path))
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        retried = db.execute("select max(attempts) from deliveries where sink = 'mqtt'").fetchone()[
            0
        ]
        pending = db.execute(
            "select count(*) from deliveries where status != 'delivered'"
        ).fetchone()[0]
    assert retried >= 2, "no alert was published while the broker was down: the test proved nothing"
    assert pending == 0


async def test_sd_notify_and_health_endpoint_during_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    df, _ = minute_market(n_sessions=2)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    port = free_port()
    seen: dict[str, object] = {}

    async def scrape(server: ReplayHarness) -> None:
        await server.wait_played(server.minutes_total // 2)
        async with httpx.AsyncClient() as http:
            health = await http.get(f"http://127.0.0.1:{port}/healthz")
            metrics = await http.get(f"http://127.0.0.1:{port}/metrics")
        seen["health"] = health.json()
        seen["metrics"] = metrics.text

    extra = f'[health]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
    await _run(tmp_path, df, 1e9, scrape, speed=300.0, extra=extra)
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    sock.close()
    assert any("READY=1" in d for d in datagrams) and any("STOPPING=1" in d for d in datagrams)
    assert isinstance(seen["health"], dict) and "outbox_depth" in str(seen["health"])
    assert "iwm_alerts_" in str(seen["metrics"])


async def test_restart_resumes_from_the_snapshot_without_resending(tmp_path: Path) -> None:
    df, _ = minute_market(n_sessions=3)
    level = float(df.filter(pl.col("symbol") == "IWM")["close"].median())  # type: ignore[arg-type]
    times = df["time"].unique().sort()
    cut = int(times[len(times) // 2 + 11])
    whole_dir = tmp_path / "whole"
    whole_dir.mkdir()
    _, whole = await _run(whole_dir, df, level)

    await _run(tmp_path, df.filter(pl.col("time") < cut), level, snapshots=True)
    assert (tmp_path / "state" / "snapshot" / "meta.json").exists()
    _, second = await _run(tmp_path, df.filter(pl.col("time") >= cut), level, snapshots=True)
    assert second.pipeline.minute is not None and whole.pipeline.minute is not None
    assert _daily_volumes(second) == _daily_volumes(whole)
    assert second.pipeline.minute.rejected_total == whole.pipeline.minute.rejected_total
    ids = _alert_ids(tmp_path)
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(_alert_ids(whole_dir))
