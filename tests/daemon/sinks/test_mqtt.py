"""The MQTT sink against a real mosquitto: status and last will, alerts, retained state,
discovery and its republishing, broker restarts, stalls, auth, TLS, and no leaked secrets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest
import structlog

from daemon.secrets import Secret
from daemon.sinks.base import SinkAuthFailed, SinkRejected, SinkUnavailable
from daemon.sinks.mqtt import MqttSink
from daemon.sinks.mqtt_client import backoff_delays
from signals.alerts import Alert, alert_id, decode_alert
from tests.daemon.sinks.mosquitto import Mosquitto, TlsFiles, free_port, make_tls_files

ROOT = Path(__file__).resolve().parents[3]
SYMBOLS = ("IWM", "SPY")
RULES = ("volume_breakout", "rsi_entry_zone")
DISCOVERY_COUNT = len(SYMBOLS) * 9
CANARY = "canary-pw-7f3a9c1e"  # must never show up in logs, errors or payloads
WRONG = "wrong-pw-0b5d2e88"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


def _sink(broker: Mosquitto, scheme: str = "mqtt", **kwargs: Any) -> MqttSink:
    options: dict[str, Any] = {
        "symbols": SYMBOLS,
        "rule_names": RULES,
        "publish_timeout_s": 2.0,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.4,
    }
    return MqttSink(f"{scheme}://127.0.0.1:{broker.port}", **(options | kwargs))


def _alert(
    symbol: str = "IWM",
    title: str = "IWM volume breakout: 3.1\N{MULTIPLICATION SIGN} relative volume",
) -> Alert:
    return Alert(
        id=alert_id("volume_breakout", symbol, "1m", 1_750_000_000),
        rule="volume_breakout",
        symbol=symbol,
        timeframe="1m",
        bar_time=1_750_000_000,
        time=1_750_000_060,
        severity="strong",
        title=title,
        values={"rvol": 3.1, "close": 201.35, "level": 200.9, "level_name": "donchian_high20"},
        score=74.0,
        label="bullish",
        breakdown={"rsi": {"raw": 58.0, "sub": 55.0, "weight": 1.0}},
    )


def _payload(message: aiomqtt.Message) -> bytes:
    assert isinstance(message.payload, bytes), message.payload
    return message.payload


class Recorder:
    """A plain aiomqtt client that keeps every message it got on its subscriptions."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []

    async def wait_for(
        self, predicate: Callable[[aiomqtt.Message], bool], timeout_s: float = 5.0
    ) -> aiomqtt.Message:
        """The first message (already seen or new) matching `predicate`."""
        for message in self.messages:
            if predicate(message):
                return message
        async with asyncio.timeout(timeout_s):
            async for message in self.client.messages:
                self.messages.append(message)
                if predicate(message):
                    return message
        raise AssertionError("unreachable: the message iterator never ends")

    async def wait_count(
        self, predicate: Callable[[aiomqtt.Message], bool], count: int, timeout_s: float = 5.0
    ) -> list[aiomqtt.Message]:
        """Wait until `count` messages match `predicate`; return them."""

        def enough(_: aiomqtt.Message) -> bool:
            return sum(map(predicate, self.messages)) >= count

        if not self.messages or not enough(self.messages[-1]):
            await self.wait_for(enough, timeout_s)
        return [m for m in self.messages if predicate(m)]

    async def drain(self, quiet_s: float = 0.3) -> list[aiomqtt.Message]:
        """Everything that arrives until nothing has for `quiet_s`."""
        while True:
            try:
                async with asyncio.timeout(quiet_s):
                    message = await anext(aiter(self.client.messages))
            except TimeoutError:
                return self.messages
            self.messages.append(message)

    def topics(self) -> list[str]:
        """Topics of what was received, in order."""
        return [m.topic.value for m in self.messages]


@asynccontextmanager
async def recording(port: int, *topics: str, **client_kwargs: Any) -> AsyncIterator[Recorder]:
    """Subscribe (QoS 1) to `topics` with a fresh client; yields a `Recorder`."""
    client = aiomqtt.Client(
        "127.0.0.1", port, identifier=f"recorder-{uuid.uuid4().hex[:8]}", **client_kwargs
    )
    async with client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        yield Recorder(client)


def _on(topic: str) -> Callable[[aiomqtt.Message], bool]:
    return lambda m: m.topic.value == topic


def _is_config(m: aiomqtt.Message) -> bool:
    return m.topic.value.endswith("/config")


async def _connected(sink: MqttSink, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        await sink.wait_connected()


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


# -- status and last will ------------------------------------------------------------------


async def test_online_retained_on_connect_and_offline_on_clean_exit(broker: Mosquitto) -> None:
    async with _sink(broker) as sink:
        await _connected(sink)
        assert sink.connected
        async with recording(broker.port, "iwm-alerts/status") as rec:
            status = await rec.wait_for(_on("iwm-alerts/status"))
            assert (_payload(status), status.retain) == (b"online", True)
    assert not sink.connected
    async with recording(broker.port, "iwm-alerts/status") as rec:
        status = await rec.wait_for(_on("iwm-alerts/status"))
        assert (_payload(status), status.retain) == (b"offline", True)


_DYING_SINK = """
import asyncio, sys
from daemon.sinks.mqtt import MqttSink

async def main() -> None:
    async with MqttSink(sys.argv[1]) as sink:
        async with asyncio.timeout(10):
            await sink.wait_connected()
        print("ready", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_last_will_says_offline_when_the_process_dies(broker: Mosquitto) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _DYING_SINK,
        f"mqtt://127.0.0.1:{broker.port}",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):  # structlog's default output shares stdout
            while (await proc.stdout.readline()).strip() != b"ready":
                pass
        async with recording(broker.port, "iwm-alerts/status") as rec:
            online = await rec.wait_for(_on("iwm-alerts/status"))
            assert _payload(online) == b"online"
            proc.kill()  # SIGKILL: no DISCONNECT, no offline publish, only the will
            await proc.wait()
            will = await rec.wait_for(
                lambda m: m.topic.value == "iwm-alerts/status" and m is not online
            )
            assert _payload(will) == b"offline"
        async with recording(broker.port, "iwm-alerts/status") as rec:
            retained = await rec.wait_for(_on("iwm-alerts/status"))
            assert (_payload(retained), retained.retain) == (b"offline", True)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- alerts and state ----------------------------------------------------------------------


async def test_alert_goes_to_both_topics_at_qos1_not_retained(broker: Mosquitto) -> None:
    alert = _alert()
    async with _sink(broker) as sink:
        await _connected(sink)
        async with recording(broker.port, "iwm-alerts/alerts", "iwm-alerts/+/alerts") as rec:
            await sink.send(alert)
            got = await rec.wait_count(lambda m: m.topic.value.endswith("alerts"), 2)
        assert sorted(m.topic.value for m in got) == ["iwm-alerts/IWM/alerts", "iwm-alerts/alerts"]
        for message in got:
            assert message.qos == 1  # delivered at min(publish, subscribe) QoS: published at 1
            assert decode_alert(_payload(message)) == alert
        async with recording(broker.port, "iwm-alerts/alerts", "iwm-alerts/+/alerts") as late:
            assert await late.drain() == []  # nothing retained for a late subscriber


async def test_state_is_retained_and_seen_by_a_late_subscriber(broker: Mosquitto) -> None:
    sink = _sink(broker)
    # Before the connection exists: remembered, then published on connect.
    await sink.publish_state("SPY", {"price": 601.2, "score": None, "breakout": False})
    async with sink:
        await _connected(sink)
        await sink.publish_state("IWM", {"price": 200.0, "breakout": False})
        await sink.publish_state(
            "IWM",
            {
                "price": 201.35,
                "score": 74.0,
                "rsi14": float("nan"),
                "rs_roc20": 0.012,
                "breakout": True,
            },
        )
        async with recording(broker.port, "iwm-alerts/+/state") as late:
            states = await late.wait_count(lambda m: m.topic.value.endswith("/state"), 2)
    by_topic = {m.topic.value: m for m in states}
    assert all(m.retain for m in states)
    assert msgspec.json.decode(_payload(by_topic["iwm-alerts/IWM/state"])) == {
        "price": 201.35,
        "score": 74.0,
        "rsi14": None,  # NaN (warming up) travels as null, which HA shows as unknown
        "rs_roc20": 0.012,
        "breakout": True,
    }
    assert msgspec.json.decode(_payload(by_topic["iwm-alerts/SPY/state"]))["price"] == 601.2


# -- discovery -----------------------------------------------------------------------------


async def test_discovery_is_published_retained_with_what_home_assistant_needs(
    broker: Mosquitto,
) -> None:
    async with _sink(broker) as sink:
        await _connected(sink)
        async with recording(broker.port, "homeassistant/#") as late:
            configs = await late.wait_count(_is_config, DISCOVERY_COUNT)
    assert all(m.retain for m in configs)
    required = {
        "sensor": {"name", "unique_id", "state_topic", "value_template", "device"},
        "binary_sensor": {"name", "unique_id", "state_topic", "value_template", "payload_on", "payload_off"},
        "event": {"name", "unique_id", "state_topic", "event_types", "value_template"},
    }  # fmt: skip
    for message in configs:
        component = message.topic.value.split("/")[1]
        config = msgspec.json.decode(_payload(message))
        assert required[component] <= config.keys(), message.topic.value
        assert config["availability_topic"] == "iwm-alerts/status"
        assert {"identifiers", "name", "manufacturer", "model"} <= config["device"].keys()
        assert config["device"]["sw_version"]  # from the installed package
        if component == "event":
            assert config["event_types"] == list(RULES)
        if component == "sensor":  # numbers are measurements; the last alert is text
            text = message.topic.value.endswith("_last_alert/config")
            assert config.get("state_class") == (None if text else "measurement")


async def test_discovery_and_state_are_republished_when_home_assistant_comes_online(
    broker: Mosquitto,
) -> None:
    async with recording(broker.port, "homeassistant/+/+/config", "iwm-alerts/+/state") as rec:
        # A birth retained from before we connected arrives flagged retained (MQTT-3.3.1-8):
        # old news, everything was just published on connect, so no second round for it.
        await rec.client.publish("homeassistant/status", "online", qos=1, retain=True)
        with structlog.testing.capture_logs() as logs:
            async with _sink(broker) as sink:
                await _connected(sink)
                await sink.publish_state("IWM", {"price": 201.0, "breakout": False})
                await rec.wait_count(lambda m: True, DISCOVERY_COUNT + 1)
                assert len(await rec.drain()) == DISCOVERY_COUNT + 1
                rec.messages.clear()
                # A live birth (Home Assistant restarted): discovery and state again.
                await rec.client.publish("homeassistant/status", "online", qos=1)
                fresh = await rec.wait_count(lambda m: True, DISCOVERY_COUNT + 1)
                await rec.client.publish("homeassistant/status", "offline", qos=1)
                assert len(await rec.drain()) == DISCOVERY_COUNT + 1  # offline: nothing
        await rec.client.publish("homeassistant/status", "", qos=1, retain=True)
    assert sum(map(_is_config, fresh)) == DISCOVERY_COUNT
    assert [m.topic.value for m in fresh if not _is_config(m)] == ["iwm-alerts/IWM/state"]
    reasons = [e["reason"] for e in logs if e["event"] == "mqtt.discovery_published"]
    assert reasons == ["connect", "ha_online"]


# -- failures ------------------------------------------------------------------------------


async def test_broker_restart_unavailable_while_down_then_reconnects_and_republishes(
    broker: Mosquitto,
) -> None:
    async with _sink(broker) as sink:
        await _connected(sink)
        await sink.publish_state("IWM", {"price": 201.0, "breakout": True})
        broker.stop()
        await _until(lambda: not sink.connected)
        with pytest.raises(SinkUnavailable, match="not connected"):
            await sink.send(_alert())
        await sink.publish_state("IWM", {"price": 202.5, "breakout": True})  # kept for later
        broker.start()  # same port, no persistence: retained topics are gone
        async with asyncio.timeout(5):
            await sink.wait_connected()
            async with recording(broker.port, "homeassistant/#", "iwm-alerts/#") as late:
                await late.wait_count(_is_config, DISCOVERY_COUNT)
                state = await late.wait_for(_on("iwm-alerts/IWM/state"))
                status = await late.wait_for(_on("iwm-alerts/status"))
        assert msgspec.json.decode(_payload(state))["price"] == 202.5
        assert _payload(status) == b"online"
        await sink.send(_alert())  # and alerts flow again


async def test_send_is_unavailable_when_the_broker_stalls(broker: Mosquitto) -> None:
    async with _sink(broker, publish_timeout_s=0.3) as sink:
        await _connected(sink)
        broker.pause()
        try:
            with pytest.raises(SinkUnavailable):
                async with asyncio.timeout(3):
                    await sink.send(_alert())
        finally:
            broker.resume()
        await sink.send(_alert())


@pytest.mark.parametrize("qos", [1, 2])
async def test_a_retry_joins_the_unacknowledged_publish_instead_of_sending_twice(
    broker: Mosquitto, qos: int
) -> None:
    """The broker stalls with the alert sent but not acknowledged; the outbox's retry must
    wait for that publish, not put a second copy on the wire (the subscriber sees one)."""
    alert = _alert()
    topics = ["iwm-alerts/alerts", f"iwm-alerts/{alert.symbol}/alerts"]
    async with (
        _sink(broker, publish_timeout_s=0.3, qos=qos) as sink,
        recording(broker.port, "iwm-alerts/+/alerts", "iwm-alerts/alerts") as rec,
    ):
        await _connected(sink)
        broker.pause()
        try:
            with pytest.raises(SinkUnavailable, match="not acknowledged"):
                await sink.send(alert)
        finally:
            broker.resume()
        await sink.send(alert)  # the retry: returns once the first publish is acknowledged
        await rec.wait_count(lambda m: m.topic.value in topics, 2)
        with contextlib.suppress(TimeoutError):  # collect for a while: a second copy would show
            await rec.wait_for(lambda m: False, timeout_s=0.5)
    got = sorted(m.topic.value for m in rec.messages if m.topic.value in topics)
    assert got == sorted(topics), got  # once per topic
    assert all(msgspec.json.decode(_payload(m))["id"] == alert.id for m in rec.messages)


async def test_send_is_unavailable_without_a_broker(tmp_path: Path) -> None:
    sink = MqttSink(
        f"mqtt://127.0.0.1:{free_port()}", reconnect_initial_s=0.05, reconnect_max_s=0.1
    )
    with structlog.testing.capture_logs() as logs:
        async with sink:
            with pytest.raises(SinkUnavailable, match="not connected"):
                await sink.send(_alert())
            await _until(lambda: sum(e["event"] == "mqtt.reconnect" for e in logs) >= 3)
    events = [e["event"] for e in logs]
    assert "mqtt.connect_failed" in events and "mqtt.connected" not in events
    delays = [e["delay_s"] for e in logs if e["event"] == "mqtt.reconnect"]
    assert all(0 < d <= 0.1 for d in delays)


async def test_oversized_or_untopicable_alert_is_rejected_not_retried(broker: Mosquitto) -> None:
    async with _sink(broker, max_payload_bytes=600) as sink:
        await _connected(sink)
        with pytest.raises(SinkRejected, match="byte limit") as rejected:
            await sink.send(_alert(title="x" * 600))
        assert not isinstance(rejected.value, SinkUnavailable)
        with pytest.raises(SinkRejected, match="symbol"):
            await sink.send(_alert(symbol="IW/M", title="t"))
        assert sink.connected  # the connection is not harmed by a bad alert


# -- auth, TLS and secrets -----------------------------------------------------------------


async def test_password_auth_right_and_wrong_and_the_password_never_leaks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with Mosquitto(tmp_path / "auth", passwords={"alice": CANARY}) as broker:
        async with recording(broker.port, "#", username="alice", password=CANARY) as spy:
            with structlog.testing.capture_logs() as logs:
                async with _sink(broker, username="alice", password=Secret(CANARY)) as good:
                    await _connected(good)
                    await good.send(_alert())
                    await good.publish_state("IWM", {"price": 201.0, "breakout": False})
                bad = _sink(broker, username="alice", password=WRONG)
                # A refused login at start-up is the end (the daemon exits 3 with it),
                # not a retry loop: one line naming what to check.
                with pytest.raises(SinkAuthFailed) as refused:
                    async with bad:
                        pass
            seen = await spy.drain()
        assert any(m.topic.value == "iwm-alerts/IWM/alerts" for m in seen)
        assert str(refused.value) == (
            "mqtt: the broker refused the login (Not authorized): "
            "check sinks.mqtt.username and MQTT_PASSWORD"
        )
        assert refused.value.__cause__ is None and not bad.connected

    leaks = [repr(logs), caplog.text, str(refused.value), repr(good), repr(bad)]
    leaks += [_payload(m).decode(errors="replace") for m in seen]
    for text in leaks:
        assert CANARY not in text and WRONG not in text


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


async def test_tls_with_the_right_ca(tmp_path: Path, tls_files: TlsFiles) -> None:
    with Mosquitto(tmp_path / "tls-broker", tls=tls_files) as broker:
        context = ssl.create_default_context(cafile=tls_files.ca)
        async with _sink(broker, "mqtts", ca_file=tls_files.ca) as sink:
            await _connected(sink)
            async with recording(broker.port, "iwm-alerts/alerts", tls_context=context) as rec:
                await sink.send(_alert())
                got = await rec.wait_for(_on("iwm-alerts/alerts"))
        assert decode_alert(_payload(got)) == _alert()


async def test_tls_with_a_wrong_ca_fails_closed(tmp_path: Path, tls_files: TlsFiles) -> None:
    with Mosquitto(tmp_path / "tls-broker", tls=tls_files) as broker:
        context = ssl.create_default_context(cafile=tls_files.ca)
        async with recording(broker.port, "iwm-alerts/#", tls_context=context) as spy:
            with structlog.testing.capture_logs() as logs:
                async with _sink(broker, "mqtts", ca_file=str(tls_files.other_ca)) as sink:
                    await _until(
                        lambda: sum(e["event"] == "mqtt.connect_failed" for e in logs) >= 2
                    )
                    assert not sink.connected
                    with pytest.raises(SinkUnavailable):
                        await sink.send(_alert())
            assert await spy.drain() == []  # not a byte got through
    failure = next(e for e in logs if e["event"] == "mqtt.connect_failed")
    assert "certificate verify failed" in failure["error"]


# -- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kwargs", "match"),
    [
        ("http://127.0.0.1:1883", {}, "scheme"),
        (f"mqtt://alice:{CANARY}@127.0.0.1:1883", {}, "credentials"),
        ("mqtt://127.0.0.1:1883/x", {}, "just"),
        ("mqtt://:1883", {}, "host"),
        ("mqtt://127.0.0.1:1883", {"ca_file": "/ca.pem"}, "mqtts"),
        ("mqtt://127.0.0.1:1883", {"password": CANARY}, "username"),
        ("mqtt://127.0.0.1:1883", {"qos": 3}, "qos"),
        ("mqtt://127.0.0.1:1883", {"symbols": ["IW/M"]}, "symbol"),
        ("mqtt://127.0.0.1:1883", {"base_topic": "a/#"}, "base_topic"),
        ("mqtt://127.0.0.1:1883", {"reconnect_initial_s": 0}, "initial_s"),
    ],
)
def test_bad_settings_fail_at_construction(url: str, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as error:
        MqttSink(url, **kwargs)
    assert CANARY not in str(error.value)


def test_default_ports_and_repr_without_secrets() -> None:
    sink = MqttSink("mqtts://broker.example", username="alice", password=CANARY)
    assert repr(sink) == "MqttSink(host='broker.example', port=8883, tls=True)"
    assert "1883" in repr(MqttSink("mqtt://broker.example"))


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    delays = backoff_delays(0.5, 4.0)
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for ceiling in ceilings:
        assert ceiling / 2 <= next(delays) <= ceiling


async def test_exit_stack_use_like_the_supervisor(broker: Mosquitto) -> None:
    async with AsyncExitStack() as stack:
        sink = await stack.enter_async_context(_sink(broker))
        await _connected(sink)
        await sink.send(_alert())
    assert not sink.connected


async def test_a_client_id_clash_backs_off_instead_of_storming(broker: Mosquitto) -> None:
    """Two sinks with one client id: the broker drops each when the other connects. Short
    sessions must not reset the backoff (that would reconnect every few ms)."""
    first, second = (
        _sink(broker, client_id="clash", reconnect_initial_s=0.05, reconnect_max_s=1.0)
        for _ in range(2)
    )
    with structlog.testing.capture_logs() as logs:
        async with first, second:
            await asyncio.sleep(4.0)
    connects = sum(1 for e in logs if e["event"] == "mqtt.connected")
    drops = sum(1 for e in logs if e["event"] == "mqtt.disconnected")
    assert drops >= 2  # the clash really happened
    assert connects <= 30, f"{connects} connects in 4 s: the backoff was reset by short sessions"


class _FlakyClient:
    """Stands in for the connected client: acknowledges publishes, except that the first
    publish to `fail_on` loses the connection (the broker died between two topics)."""

    is_connected = True
    qos2_downgraded = False

    def __init__(self, fail_on: str) -> None:
        self.fail_on: str | None = fail_on
        self.published: list[str] = []

    async def publish_checked(
        self, topic: str, payload: bytes, *, qos: int, retain: bool, properties: object = None,
        timeout: float | None = None,
    ) -> int:  # fmt: skip
        if topic == self.fail_on:
            self.fail_on = None
            raise aiomqtt.MqttError("connection lost")
        self.published.append(topic)
        return 0


async def test_a_retry_sends_only_the_topics_the_broker_did_not_acknowledge(
    broker: Mosquitto,
) -> None:
    """Acknowledged on `<base>/alerts`, lost on `<base>/IWM/alerts`: the retry must not put
    the alert on `<base>/alerts` a second time."""
    sink = _sink(broker)
    alert = _alert()
    main, per_symbol = "iwm-alerts/alerts", f"iwm-alerts/{alert.symbol}/alerts"
    flaky = _FlakyClient(fail_on=per_symbol)
    sink._client = flaky  # type: ignore[assignment]
    with pytest.raises(SinkUnavailable):
        await sink.send(alert)
    await sink.send(alert)
    assert flaky.published == [main, per_symbol]
    await sink.send(alert)  # a new send of a delivered alert (a replay) publishes both again
    assert flaky.published == [main, per_symbol, main, per_symbol]
