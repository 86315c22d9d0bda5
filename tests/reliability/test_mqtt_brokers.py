"""The MQTT sink against the brokers people run, not only a default Mosquitto.

- Mosquitto with `max_qos 1` (like AWS IoT Core and Azure IoT Hub): a QoS 2
  publish gets the connection closed ("Too high QoS").
- NATS 2.9's MQTT listener: QoS 0/1 only, retained messages in JetStream; a
  QoS 2 publish gets the connection closed ("publish QoS=2 not supported").
- aedes (Node.js, from npm): QoS 2 granted, retained messages in memory, and a
  forbidden subscription answered with SUBACK 0x80.

At the default `qos = 2` the daemon must fall back to QoS 1 with one warning
and deliver every alert; status `online` while running and `offline` after;
discovery and state retained. The broker-restart test runs against all three. With
`protocol = "5"`, Mosquitto's Maximum QoS is honoured without a single refused
publish, and an ACL denial is reported per topic.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from daemon.app import Ingest
from daemon.sinks.base import SinkRejected
from daemon.sinks.mqtt import MqttSink
from daemon.startup import SupervisedSink, Waits
from tests.daemon.retained import retained
from tests.daemon.sinks.mosquitto import Aedes, Mosquitto, NatsMqtt, RabbitMqtt
from tests.daemon.sinks.test_mqtt import _alert
from tests.reliability.startkit import alerts
from tests.reliability.test_hostile_sinks import Subscriber, _run_demo

pytestmark = pytest.mark.reliability

BROKERS: dict[str, tuple[Callable[[Path], Mosquitto], str | None]] = {
    # name: (factory, what the broker logs when it refuses a QoS 2 publish; None: it grants QoS 2)
    "mosquitto-max-qos-1": (lambda d: Mosquitto(d, extra=["max_qos 1"]), "QoS"),
    "nats": (NatsMqtt, "QoS=2 not supported"),
    "aedes": (Aedes, None),
}


@pytest.mark.parametrize("kind", sorted(BROKERS))
async def test_every_alert_arrives_on_a_broker_without_qos_2(tmp_path: Path, kind: str) -> None:
    factory, refusal = BROKERS[kind]
    with factory(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port)
        status_seen: list[bytes] = []

        def done(ingest: Ingest) -> bool:
            n = ingest.stats.alerts_emitted
            return n > 0 and len(set(sub.ids)) >= n

        async def watch_status() -> None:
            while not status_seen:  # once the sink has connected (after the warm-up)
                got = await retained(broker.port, "iwm-alerts/status")
                if got:
                    status_seen.append(got["iwm-alerts/status"])

        extra = f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'  # qos 2: the default
        with structlog.testing.capture_logs() as logs:
            async with asyncio.TaskGroup() as tg:
                listener = tg.create_task(sub.run())
                tg.create_task(watch_status())
                ingest = await _run_demo(tmp_path, extra, done, 60)
                listener.cancel()
        after = await retained(broker.port, quiet_s=1.0)
        log = broker.log()
    ids = [a[0] for a in alerts(tmp_path / "alerts.jsonl")]
    assert len(ids) >= 3 and set(sub.ids) == set(ids)
    downgraded = [e for e in logs if e["event"] == "mqtt.qos_downgraded"]
    if refusal is None:  # the broker granted QoS 2: nothing to fall back from
        assert "qos=2 retain=false iwm-alerts/alerts" in log, log[-2000:]
        assert downgraded == []
    else:  # the fault happened (the broker refused QoS 2) and was answered with one warning
        assert refusal in log, log[-2000:]
        assert len(downgraded) == 1 and "sinks.mqtt.qos" in downgraded[0]["hint"]
    assert status_seen == [b"online"]
    assert after["iwm-alerts/status"] == b"offline"
    states = {t: json.loads(p) for t, p in after.items() if t.endswith("/state")}
    assert set(states) == {f"iwm-alerts/{s}/state" for s in ("IWM", "SPY", "QQQ")}
    configs = [t for t in after if t.startswith("homeassistant/") and t.endswith("/config")]
    assert len(configs) >= 8
    assert ingest.stats.alerts_emitted == len(ids)


@pytest.mark.parametrize("kind", sorted(BROKERS))
async def test_broker_restarted_twice_mid_run_loses_no_alert(tmp_path: Path, kind: str) -> None:
    """The broker goes away twice while the session plays: what the daemon decides meanwhile
    waits in the outbox and reaches the subscriber once the broker is back, none twice.

    Each stop comes once the subscriber has everything the broker acknowledged so far,
    with nothing acknowledged in between: no broker here keeps a QoS 1 message in flight
    to a subscriber across its own restart (Mosquitto and aedes run without persistence),
    and that loss is not the sink's."""
    factory, _ = BROKERS[kind]
    broker = factory(tmp_path / "broker")
    sub = Subscriber(broker.port)
    restarts: list[int] = []
    ingests: list[Ingest] = []

    def done(ingest: Ingest) -> bool:
        if not ingests:
            ingests.append(ingest)
        n = ingest.stats.alerts_emitted
        return len(restarts) == 2 and n > 0 and len(set(sub.ids)) >= n

    def caught_up(alerts_seen: int) -> bool:
        if not ingests:
            return False
        acknowledged = ingests[0].outbox.stats()["mqtt"]["delivered"]
        return len(set(sub.ids)) >= max(acknowledged, alerts_seen)

    async def restart_twice() -> None:
        while len(restarts) < 2:
            while not caught_up(len(restarts) + 1):  # an alert went through first
                await asyncio.sleep(0.05)
            # Stopped from the event loop itself, which blocks it: no acknowledgement can
            # be counted between the check above and the broker's end (a full run lost two
            # alerts to NATS in that gap, acknowledged but not yet forwarded).
            broker.stop()
            await asyncio.sleep(1.0)
            await asyncio.to_thread(broker.start)
            restarts.append(1)

    broker.start()
    try:
        extra = f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
        async with asyncio.TaskGroup() as tg:
            listener = tg.create_task(sub.run())
            tg.create_task(restart_twice())
            ingest = await _run_demo(tmp_path, extra, done, 90)
            listener.cancel()
    finally:
        broker.stop()
    ids = [a[0] for a in alerts(tmp_path / "alerts.jsonl")]
    assert len(restarts) == 2 and len(ids) == ingest.stats.alerts_emitted
    assert set(sub.ids) == set(ids)
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        (left,) = db.execute(
            "select count(*) from deliveries where status != 'delivered'"
        ).fetchone()
    assert left == 0


async def test_a_qos_2_publish_acknowledged_as_qos_1_downgrades_once(tmp_path: Path) -> None:
    """RabbitMQ takes a QoS 2 publish but answers PUBACK (QoS 1): exactly-once does not
    hold, so the sink says so once and sends at QoS 1 from then on; every alert arrives."""
    with RabbitMqtt(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port)
        with structlog.testing.capture_logs() as logs:
            async with asyncio.TaskGroup() as tg:
                listener = tg.create_task(sub.run())
                async with MqttSink(
                    f"mqtt://127.0.0.1:{broker.port}",
                    symbols=["IWM"],  # qos 2: the default
                ) as sink:
                    async with asyncio.timeout(20):
                        await sink.wait_connected()
                        while not sub.ids:  # again until the subscriber has subscribed
                            await sink.send(_alert(title="first"))
                            await asyncio.sleep(0.2)
                        assert sink.alert_qos == 1
                        for i in range(3):
                            await sink.send(_alert(symbol=("SPY", "QQQ", "IWM")[i]))
                        while len(set(sub.ids)) < 3:
                            await asyncio.sleep(0.05)
                listener.cancel()
    downgraded = [e for e in logs if e["event"] == "mqtt.qos_downgraded"]
    assert len(downgraded) == 1 and "PUBACK" in downgraded[0]["reason"]
    assert "sinks.mqtt.qos" in downgraded[0]["hint"]
    expected = {_alert(title="first").id, *(_alert(symbol=s).id for s in ("SPY", "QQQ"))}
    assert set(sub.ids) == expected


async def test_mqtt_5_honours_maximum_qos_without_a_refused_publish(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker", extra=["max_qos 1"]) as broker:
        with structlog.testing.capture_logs() as logs:
            async with MqttSink(
                f"mqtt://127.0.0.1:{broker.port}", protocol="5", symbols=["IWM"]
            ) as sink:
                async with asyncio.timeout(5):
                    await sink.wait_connected()
                for i in range(3):
                    await sink.send(_alert(title=f"alert {i}"))
        log = broker.log()
    downgraded = [e for e in logs if e["event"] == "mqtt.qos_downgraded"]
    assert len(downgraded) == 1 and "Maximum QoS 1" in downgraded[0]["reason"]
    assert "Too high QoS" not in log  # not one QoS 2 publish reached the broker
    assert not [e for e in logs if e["event"] == "mqtt.disconnected" and e.get("reason") == "lost"]


async def test_mqtt_5_reports_an_acl_denial_per_topic(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(
        "# anonymous: may publish everything but per-symbol alerts, and may not read HA's status\n"
        "topic write iwm-alerts/status\n"
        "topic write iwm-alerts/alerts\n"
        "topic write iwm-alerts/+/state\n"
        "topic write homeassistant/+/+/config\n"
        "topic read iwm-alerts/#\n"
    )
    with (
        Mosquitto(tmp_path / "broker", extra=[f"acl_file {acl}"]) as broker,
        structlog.testing.capture_logs() as logs,
    ):
        async with MqttSink(
            f"mqtt://127.0.0.1:{broker.port}", protocol="5", qos=1, symbols=["IWM"]
        ) as sink:
            async with asyncio.timeout(5):
                await sink.wait_connected()
            with pytest.raises(SinkRejected) as denied:
                await sink.send(_alert())
    assert "iwm-alerts/IWM/alerts" in str(denied.value) and "0x87" in str(denied.value)
    assert "topic write iwm-alerts/#" in str(denied.value)
    published = [e for e in logs if e["event"] == "mqtt.publish_denied"]
    assert published and published[0]["topic"] == "iwm-alerts/IWM/alerts"
    # Mosquitto 2.0 grants a subscription its ACL will not serve (SUBACK 1, reads are
    # filtered at delivery): the refused subscription is shown against aedes, below.


async def test_a_refused_subscription_to_home_assistant_status_names_the_acl_line(
    tmp_path: Path,
) -> None:
    """aedes answers the SUBSCRIBE to HA's birth topic with 0x80, as an ACL that forbids
    reading it does: one warning naming the missing line, and the sink still publishes."""
    with Aedes(tmp_path / "broker", deny_subscribe=["homeassistant/status"]) as broker:
        sub = Subscriber(broker.port)
        with structlog.testing.capture_logs() as logs:
            async with asyncio.TaskGroup() as tg:
                listener = tg.create_task(sub.run())
                async with MqttSink(f"mqtt://127.0.0.1:{broker.port}", symbols=["IWM"]) as sink:
                    async with asyncio.timeout(5):
                        await sink.wait_connected()
                        while not sub.ids:  # again until the subscriber has subscribed
                            await sink.send(_alert())
                            await asyncio.sleep(0.2)
                listener.cancel()
        log = broker.log()
    assert "denied subscription of iwm-alerts to homeassistant/status" in log, log[-2000:]
    denied = [e for e in logs if e["event"] == "mqtt.subscribe_denied"]
    assert len(denied) == 1 and denied[0]["topic"] == "homeassistant/status"
    assert "topic read homeassistant/status" in denied[0]["hint"]
    assert set(sub.ids) == {_alert().id}


async def test_a_login_refused_while_running_is_retried_and_named(tmp_path: Path) -> None:
    """The broker's password changes under a running daemon: the sink keeps trying with
    backoff (the daemon does not stop) and says why, for `/healthz`."""
    broker = Mosquitto(tmp_path / "broker", passwords={"alice": "first-password"})
    broker.start()
    try:
        with structlog.testing.capture_logs() as logs:
            inner = MqttSink(
                f"mqtt://127.0.0.1:{broker.port}", username="alice", password="first-password",
                symbols=["IWM"], reconnect_initial_s=0.1, reconnect_max_s=0.5,
            )  # fmt: skip
            sink = SupervisedSink(inner, Waits())
            closing = asyncio.Event()
            runner = asyncio.create_task(sink.run(closing))
            async with asyncio.timeout(10):
                while not sink.up:
                    await asyncio.sleep(0.05)
            assert sink.problem is None
            await asyncio.to_thread(broker.stop)
            broker._password_file({"alice": "rotated-password"})  # the broker's admin rotates it
            await asyncio.to_thread(broker.start)
            async with asyncio.timeout(10):
                while sum(e["event"] == "mqtt.login_refused" for e in logs) < 3:
                    await asyncio.sleep(0.05)
            problem = sink.problem
            assert not runner.done()  # still trying, not ended
            closing.set()
            await runner
    finally:
        broker.stop()
    assert problem == (
        "the broker refused the login (Not authorized): check sinks.mqtt.username and MQTT_PASSWORD"
    )
    assert "first-password" not in repr(logs)


class _AcceptingBroker:
    """Answers each CONNECT with a CONNACK (accepted), then either closes the connection in
    the same breath (a broker stopped just after it accepted us) or, with `silent`, keeps
    it open and answers nothing more (a broker that froze). Counts the connections."""

    def __init__(self, *, silent: bool = False) -> None:
        self.connections = 0
        self.port = 0
        self.silent = silent

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readexactly(1)  # CONNECT's fixed header
            length, shift = 0, 0
            while True:  # MQTT's variable-length "remaining length"
                byte = (await reader.readexactly(1))[0]
                length += (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            await reader.readexactly(length)
            writer.write(b"\x20\x02\x00\x00")  # CONNACK: session not present, accepted
            await writer.drain()
            while self.silent and await reader.read(4096):
                pass  # publishes, pings and the DISCONNECT go unanswered
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@pytest.mark.parametrize("silent", [False, True], ids=["hangs-up", "freezes"])
async def test_a_broker_that_fails_right_after_accepting_is_retried_forever(silent: bool) -> None:
    """A session that ends at once, by a closed socket or by a broker that stops answering
    (not even the DISCONNECT), must leave the client ready for the next connect: the sink
    keeps reconnecting instead of finding its client "reusable, but not reentrant"."""
    broker = _AcceptingBroker(silent=silent)
    server = await asyncio.start_server(broker._serve, "127.0.0.1", 0)
    broker.port = server.sockets[0].getsockname()[1]
    with structlog.testing.capture_logs() as logs:
        async with server:
            sink = MqttSink(
                f"mqtt://127.0.0.1:{broker.port}", qos=1, symbols=["IWM"],
                publish_timeout_s=0.3, reconnect_initial_s=0.05, reconnect_max_s=0.1,
            )  # fmt: skip
            async with sink:
                async with asyncio.timeout(30):
                    while broker.connections < 6:
                        await asyncio.sleep(0.05)
    errors = [str(e.get("error")) for e in logs if e["event"].startswith("mqtt.")]
    expected = "timed out" if silent else "not currently connected"
    assert any(expected in e for e in errors), errors[-5:]  # the fault happened
    assert not [e for e in errors if "reentrant" in e], errors[-5:]
