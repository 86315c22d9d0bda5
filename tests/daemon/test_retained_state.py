"""The retained MQTT state after the session's last bar: a real daemon, a real Mosquitto,
a fresh subscriber, as Home Assistant finds it overnight."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from daemon.app import Ingest
from daemon.config import load_config
from daemon.feeds.replay import ReplayServer, ReplaySettings
from daemon.sample import demo_market
from daemon.secrets import Secrets
from daemon.service import run_daemon
from daemon.warmup import Warmup
from tests.daemon.daemon_config import write_config
from tests.daemon.retained import retained
from tests.daemon.sinks.mosquitto import Mosquitto

AFTER_CLOSE_S = 600  # a post-market minute, ten minutes after the close


async def test_state_keeps_score_and_rsi_after_the_sessions_last_bar(tmp_path: Path) -> None:
    m = demo_market()
    last = int(m.today["time"].max())  # type: ignore[arg-type]
    post_market = m.today.filter(pl.col("time") == last).with_columns(
        pl.lit(last + AFTER_CLOSE_S, dtype=pl.Int64).alias("time")
    )
    bars = pl.concat([m.today, post_market])
    closed_at = datetime.fromtimestamp(last + 60, UTC).isoformat()
    seen: dict[str, object] = {}
    with Mosquitto(tmp_path / "broker") as broker:
        async with ReplayServer(bars, ReplaySettings(speed=400.0)) as server:
            feed = f'url = "{server.url}"\nrest_url = "{server.rest_url}"'
            extra = f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
            config = load_config(write_config(tmp_path, feed=feed, extra=extra))
            stop = asyncio.Event()
            ingests: list[Ingest] = []

            async def past_the_close() -> None:
                await server.wait_played(server.minutes_total)
                while not ingests or ingests[0].stats.last_bar_time != last + AFTER_CLOSE_S:
                    await asyncio.sleep(0.02)
                # The daemon runs on after the close: what a subscriber finds now.
                while True:
                    found = await retained(broker.port, "iwm-alerts/+/state", quiet_s=0.2)
                    states = {t: json.loads(p) for t, p in found.items()}
                    if states and all(s["time"] == closed_at for s in states.values()):
                        break
                seen["running"] = states
                stop.set()

            async with asyncio.timeout(90), asyncio.TaskGroup() as tg:
                tg.create_task(past_the_close())
                await run_daemon(
                    config, Secrets.load(config), stop, warmup=Warmup(m.daily, m.history),
                    realtime=False, on_ingest=ingests.append,
                )  # fmt: skip
        # And after the daemon stopped: the night, the weekend (2025-06-13 is a Friday).
        found = await retained(broker.port)
    running = seen["running"]
    assert isinstance(running, dict)
    stopped = {t: json.loads(p) for t, p in found.items() if t.endswith("/state")}
    assert stopped == running
    assert set(stopped) == {f"iwm-alerts/{s}/state" for s in ("IWM", "SPY", "QQQ")}
    for topic, state in stopped.items():
        assert isinstance(state["score"], float) and isinstance(state["rsi14"], float), topic
        assert isinstance(state["atr_pct"], float) and isinstance(state["label"], str), topic
        assert state["daily_time"] == m.day.isoformat() and state["daily_closed"] is True
    iwm = stopped["iwm-alerts/IWM/state"]
    assert iwm["last_alert_rule"] in ("volume_breakout", "score_cross_up")
    assert iwm["last_alert"].startswith("IWM ")
    assert stopped["iwm-alerts/SPY/state"]["last_alert_rule"] == "rsi_entry_zone"
    assert found["iwm-alerts/status"] == b"offline"
    sensors = {t for t in found if t.startswith("homeassistant/sensor/")}
    assert "homeassistant/sensor/iwm_alerts_iwm_last_alert/config" in sensors
