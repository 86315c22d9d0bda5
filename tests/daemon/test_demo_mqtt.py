"""`iwm-alerts demo --mqtt` against a real Mosquitto: its own device, nothing left behind,
what each sink delivered, and a clear exit when the broker takes nothing."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from daemon.cli import main
from tests.daemon.retained import retained
from tests.daemon.sinks.mosquitto import Mosquitto, free_port

DEMO_TIMEOUT_S = 90.0
PASSWORD = "demo-pw-5c1e9a"  # a throwaway broker's
# What the user's own daemon left on the broker: the demo must not touch it.
USERS_DAEMON = {
    "iwm-alerts/status": b"online",
    "iwm-alerts/IWM/state": b'{"price":201.5}',
    "homeassistant/sensor/iwm_alerts_iwm_price/config": b'{"name":"IWM price"}',
}


@dataclass
class Demo:
    returncode: int
    stdout: str
    stderr: str
    messages: list[aiomqtt.Message]


async def _demo(
    port: int,
    *args: str,
    env: dict[str, str] | None = None,
    login: str | None = None,
    watch: bool = True,
) -> Demo:
    """The demo as a subprocess at speed 200; with `watch`, a subscriber to `#` on the
    broker while it runs (logged in as `login`)."""
    messages: list[aiomqtt.Message] = []

    async def listen(ready: asyncio.Event) -> None:
        password = PASSWORD if login else None
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="demo-watch", username=login, password=password
        ) as client:
            await client.subscribe("#", qos=1)
            ready.set()
            async for message in client.messages:
                messages.append(message)

    environ = {k: v for k, v in os.environ.items() if k != "MQTT_PASSWORD"} | (env or {})
    command = [sys.executable, "-m", "daemon.cli", "demo", "--speed", "200"]
    command += ["--mqtt", f"mqtt://127.0.0.1:{port}", *args]
    async with asyncio.timeout(DEMO_TIMEOUT_S), asyncio.TaskGroup() as tg:
        listener = None
        if watch:
            ready = asyncio.Event()
            listener = tg.create_task(listen(ready))
            await ready.wait()
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environ
        )
        out, err = await proc.communicate()
        if listener is not None:
            await asyncio.sleep(0.3)
            listener.cancel()
    assert proc.returncode is not None
    return Demo(proc.returncode, out.decode(), err.decode(), messages)


async def _publish_users_daemon(port: int) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="users-daemon") as client:
        for topic, payload in USERS_DAEMON.items():
            await client.publish(topic, payload, qos=1, retain=True)


async def test_demo_publishes_as_its_own_device_and_leaves_nothing_retained(
    tmp_path: Path,
) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        await _publish_users_daemon(broker.port)
        demo = await _demo(broker.port)
        left = await retained(broker.port)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "iwm-alerts demo: console 3, jsonl 3, mqtt 3 alerts delivered" in demo.stderr
    assert "iwm-alerts demo: removed its 31 retained MQTT messages" in demo.stderr
    assert left == USERS_DAEMON  # the user's own device, untouched
    # What it published while it ran: under its own base topic, as its own device.
    ours = {str(m.topic) for m in demo.messages if str(m.topic) not in USERS_DAEMON}
    assert {"iwm-alerts-demo/status", "iwm-alerts-demo/IWM/state", "iwm-alerts-demo/alerts"} <= ours
    configs = {t for t in ours if t.startswith("homeassistant/")}
    assert len(configs) == 3 * 9
    assert all("/iwm_alerts_demo_" in t for t in configs), configs
    assert all(t.startswith(("iwm-alerts-demo/", "homeassistant/")) for t in ours), ours
    # ...and last, an empty retained payload on each of them: the status among them.
    cleared = [m for m in demo.messages if m.payload == b""]
    assert {str(m.topic) for m in cleared} >= configs | {"iwm-alerts-demo/status"}


async def test_demo_logs_in_with_mqtt_user_and_the_password_from_the_environment(
    tmp_path: Path,
) -> None:
    with Mosquitto(tmp_path / "broker", passwords={"demo": PASSWORD}) as broker:
        demo = await _demo(
            broker.port, "--mqtt-user", "demo", "--mqtt-qos", "1",
            env={"MQTT_PASSWORD": PASSWORD}, login="demo",
        )  # fmt: skip
        left = await retained(broker.port, username="demo", password=PASSWORD)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "iwm-alerts demo: console 3, jsonl 3, mqtt 3 alerts delivered" in demo.stderr
    assert left == {}
    assert any(str(m.topic) == "iwm-alerts-demo/IWM/state" for m in demo.messages)
    assert PASSWORD not in demo.stdout + demo.stderr


async def test_demo_without_the_login_the_broker_needs_exits_3(tmp_path: Path) -> None:
    """Exit 3 either way: the sink's start-up check ends the daemon at once, or (when the
    warm-up held the event loop past that check's wait) the run delivers nothing to MQTT
    and the clean-up's own connect is refused."""
    with Mosquitto(tmp_path / "broker", passwords={"demo": PASSWORD}) as broker:
        started = asyncio.get_running_loop().time()
        demo = await _demo(broker.port, watch=False)
        elapsed = asyncio.get_running_loop().time() - started
    assert demo.returncode == 3, demo.stderr[-3000:]
    last = demo.stderr.strip().splitlines()[-1]
    assert last.startswith("iwm-alerts: mqtt: the broker refused the login"), last
    assert last.endswith("(for the demo: --mqtt-user, the password in MQTT_PASSWORD)")
    assert "mqtt 0 alerts delivered" in demo.stderr
    assert "Traceback" not in demo.stderr
    assert elapsed < 45  # the session, the drain's 10 s, the clean-up: never a hang


async def test_demo_exits_2_when_the_broker_took_none_of_the_alerts(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    demo = await _demo(port, "--out", str(tmp_path), watch=False)
    assert demo.returncode == 2, demo.stderr[-3000:]
    assert "iwm-alerts demo: console 3, jsonl 3, mqtt 0 alerts delivered" in demo.stderr
    last = demo.stderr.strip().splitlines()[-1]
    assert last.startswith("iwm-alerts: demo: mqtt delivered none of the 3 alerts"), last
    assert "could not remove the retained MQTT messages it may have left" in demo.stderr
    assert "Traceback" not in demo.stderr
    assert len((tmp_path / "alerts.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--mqtt-user", "u"], "iwm-alerts: demo: --mqtt-user needs --mqtt URL"),
        (["--mqtt-qos", "1", "--mqtt-ca", "ca.pem"],
         "iwm-alerts: demo: --mqtt-qos and --mqtt-ca need --mqtt URL"),
        (["--mqtt", "http://127.0.0.1:1"], "iwm-alerts: demo: --mqtt: expected a URL"),
        (["--mqtt", "mqtt://127.0.0.1:1", "--mqtt-ca", "ca.pem"],
         "iwm-alerts: demo: --mqtt-ca: TLS files need an mqtts:// url"),
        (["--mqtt", "mqtt://127.0.0.1:1", "--mqtt-user", "u"],
         "iwm-alerts: demo: --mqtt-user needs the password in the MQTT_PASSWORD environment"),
    ],
)  # fmt: skip
def test_demo_flags_are_checked_before_it_starts(
    args: list[str],
    line: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MQTT_PASSWORD", raising=False)
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(line), err
