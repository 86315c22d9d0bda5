"""The MQTT sink (aiomqtt): alerts, per-symbol state and Home Assistant discovery.

One background task owns the connection. After a loss it waits an
exponential, jittered, capped delay and connects again. On every connect it
publishes `online`, the discovery configs and the remembered states (all
retained), then listens to `<discovery_prefix>/status` and publishes them
again whenever Home Assistant says `online`.

Exactly once, with `qos = 2`: one `aiomqtt.Client` (one paho session) serves
every reconnect of the process, with `clean_session=False`. A publish whose
acknowledgement was lost when the broker went away stays in paho's session,
and paho completes it after the reconnect with the same packet id (resending
PUBLISH with DUP, or PUBREL), so the broker delivers it once. The sink keeps
the task waiting for that acknowledgement: the outbox's retry of the alert
joins it instead of publishing a second copy. At start-up a clean connect
clears what a previous process left in the broker's session, whose packet ids
the new paho session would otherwise collide with. With `qos = 1` the same
machinery still cannot avoid a repeat (MQTT's QoS 1 is at least once: the
broker forwards a DUP again), and at most the alert in flight repeats.

`send` never waits for a connection: while there is none it raises
`SinkUnavailable` at once and the outbox retries later.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import math
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import aiomqtt
import msgspec
import paho.mqtt.client as paho
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.aio import keep_cancel
from daemon.secrets import Secret
from daemon.sinks import ha_discovery as ha
from daemon.sinks.base import SinkAuthFailed, SinkRejected, SinkUnavailable
from daemon.sinks.mqtt_client import (
    SessionClient,
    backoff_delays,
    login_refused,
    parse_url,
    properties,
    reason_value,
)
from daemon.sinks.mqtt_qos import SessionQos
from signals.alerts import Alert, encode_alert

_log = structlog.get_logger(__name__)

_INFLIGHT_KEPT = 4096  # (alert, topic) publishes remembered for the outbox's retries
STABLE_SESSION_S = 5.0
"""A session that lasted this long resets the reconnect backoff."""
SESSION_EXPIRY_S = 86_400
"""MQTT 5: how long the broker keeps our session (and its in-flight messages) while we are away."""


class _Denied(Exception):
    """The broker answered a publish with a failure reason code (MQTT 5), e.g. its ACL."""

    def __init__(self, topic: str, reason: int) -> None:
        super().__init__(f"the broker refused the publish to {topic} (reason {reason:#04x})")
        self.topic, self.reason = topic, reason


def _package_version() -> str | None:
    try:
        return importlib.metadata.version("iwm-alerts")
    except importlib.metadata.PackageNotFoundError:
        return None


class MqttSink:
    """Publishes alerts and state to an MQTT broker, with Home Assistant discovery.

    `url` is `mqtt://host[:port]` or `mqtts://host[:port]`; with `mqtts` the
    broker certificate is verified (against `ca_file`, else the system store)
    and a failure is never downgraded to an unverified connection. `cert_file`
    / `key_file` add a client certificate. `password` (a str or a
    `daemon.secrets.Secret`) is never logged, put in an exception or a payload.

    Alerts go to `<base>/alerts` and `<base>/<SYMBOL>/alerts` at `qos`, not
    retained. An alert encoded larger than `max_payload_bytes` is rejected:
    set it at or below the broker's message size limit.
    """

    name = "mqtt"

    def __init__(
        self,
        url: str,
        *,
        base_topic: str = "iwm-alerts",
        discovery_prefix: str = "homeassistant",
        username: str | None = None,
        password: str | Secret | None = None,
        client_id: str = "iwm-alerts",
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        qos: int = 2,
        protocol: str = "3.1.1",
        alert_expiry_s: int = 1800,
        symbols: Sequence[str] = (),
        rule_names: Sequence[str] = (),
        keepalive_s: int = 30,
        publish_timeout_s: float = 5.0,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        max_payload_bytes: int = 128 * 1024,
    ) -> None:
        self._host, self._port, self._tls = parse_url(url)
        if not self._tls and (ca_file or cert_file or key_file):
            raise ValueError("ca_file/cert_file/key_file need an mqtts:// url")
        if key_file and not cert_file:
            raise ValueError("key_file needs cert_file")
        if password is not None and username is None:
            raise ValueError("password needs username")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        if protocol not in ("3.1.1", "5"):
            raise ValueError(f'protocol must be "3.1.1" or "5", got {protocol!r}')
        if publish_timeout_s <= 0 or keepalive_s <= 0 or max_payload_bytes <= 0:
            raise ValueError("publish_timeout_s, keepalive_s and max_payload_bytes must be > 0")
        backoff_delays(reconnect_initial_s, reconnect_max_s)  # a bad range fails here, not later
        self._base = ha.validate_topic_part(base_topic, "base_topic")
        self._prefix = ha.validate_topic_part(discovery_prefix, "discovery_prefix")
        self._symbols = tuple(ha.validate_symbol(s) for s in symbols)
        self._rule_names = tuple(rule_names)
        self._username = username
        # Kept wrapped so that it prints as *** wherever the sink's state ends up.
        self._password = Secret(password) if isinstance(password, str) else password
        # (alert id, topic) -> the publish waiting for the broker's acknowledgement,
        # which may come after a reconnect: a retry joins it instead of sending again.
        self._inflight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.resumed = 0
        """Alert publishes found unacknowledged at a reconnect (completed by the session)."""
        self._client_id = client_id
        self._ca_file, self._cert_file, self._key_file = (
            None if f is None else os.fspath(f) for f in (ca_file, cert_file, key_file)
        )
        self._qos = qos
        # The QoS alerts go at this process: `qos`, unless the broker refuses it.
        self._session_qos = SessionQos(qos)
        self._v5 = protocol == "5"
        self._alert_expiry_s = alert_expiry_s
        self.problem: str | None = "not connected yet"
        """Why the sink is not connected (one line, no secrets); None while it is."""
        self._keepalive_s = keepalive_s
        self._publish_timeout_s = publish_timeout_s
        self._reconnect = (reconnect_initial_s, reconnect_max_s)
        self._max_payload_bytes = max_payload_bytes
        # Fails here, not at the first connect, on a bad symbol or base topic.
        self._discovery: list[tuple[str, bytes]] = self._encode_discovery(None)
        self._states: dict[str, bytes] = {}
        self._client: SessionClient | None = None  # set while connected and announced
        self._ready = asyncio.Event()
        # Serialises retained publishes so a republish never overwrites a newer state.
        self._publish_lock = asyncio.Lock()
        self._stack: AsyncExitStack | None = None
        self._task: asyncio.Task[None] | None = None
        # The first connect's outcome: a refused login fails __aenter__ (the daemon stops
        # with exit 3 at start-up); anything else leaves the reconnect loop to it.
        self._first: asyncio.Future[None] | None = None
        self.on_connected: Callable[[], None] = lambda: None
        """Called after each (re)connect, once the retained topics are out: the daemon
        makes the alerts held while the broker was away due at once."""

    def __repr__(self) -> str:
        return f"MqttSink(host={self._host!r}, port={self._port}, tls={self._tls})"

    @property
    def connected(self) -> bool:
        """Whether the broker session is up and the retained topics are published."""
        return self._client is not None

    async def wait_connected(self) -> None:
        """Return once connected (wrap in `asyncio.timeout`: it waits as long as it takes)."""
        await self._ready.wait()

    async def __aenter__(self) -> Self:
        """Start the connection task. Waits for the first connect's answer at most
        `publish_timeout_s`: a broker that refuses the login raises `SinkAuthFailed`;
        one that is down or slow is left to the reconnect loop."""
        self._discovery = self._encode_discovery(_package_version())
        self._first = asyncio.get_running_loop().create_future()
        first = self._first
        refused: SinkAuthFailed | None = None
        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(asyncio.TaskGroup())
            self._task = tg.create_task(self._run(), name="mqtt.connection")
            await asyncio.wait([first], timeout=self._publish_timeout_s)
            if not first.done():
                # Loop time: a loop blocked meanwhile (a synchronous warm-up) may hold the
                # CONNACK unread. One more short wait lets the I/O it missed come through.
                await asyncio.wait([first], timeout=1.0)
            if first.done() and isinstance(first.exception(), SinkAuthFailed):
                refused = first.exception()  # type: ignore[assignment]
            else:
                self._first = None  # answered, or too slow: later refusals are logged
                self._stack = stack.pop_all()
        if refused is not None:  # raised out here: not wrapped by the task group
            self._task = None
            raise refused
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Publish `offline` (retained), then disconnect cleanly and stop the task."""
        client = self._client
        if client is not None:
            try:
                async with asyncio.timeout(self._publish_timeout_s), self._publish_lock:
                    await keep_cancel(
                        client.publish(
                            ha.status_topic(self._base), ha.PAYLOAD_OFFLINE, qos=1, retain=True
                        )
                    )
            except (aiomqtt.MqttError, TimeoutError) as err:
                _log.warning("mqtt.offline_failed", error=self._redact(str(err)))
        for waiting in self._inflight.values():
            waiting.cancel()  # not acknowledged: the outbox still has these alerts
        self._inflight.clear()
        if self._task is not None:
            self._task.cancel()
        if self._stack is not None:
            await self._stack.aclose()
        self._task, self._stack, self._client = None, None, None
        self._ready.clear()
        if client is not None:
            _log.info("mqtt.disconnected", host=self._host, port=self._port, reason="shutdown")

    async def send(self, alert: Alert) -> None:
        """Publish one alert to `<base>/alerts` and `<base>/<SYMBOL>/alerts`."""
        payload = encode_alert(alert)
        if len(payload) > self._max_payload_bytes:
            raise SinkRejected(
                self.name,
                f"alert {alert.id} is {len(payload)} bytes, over the "
                f"{self._max_payload_bytes}-byte limit",
            )
        try:
            topics = (ha.alerts_topic(self._base), ha.alerts_topic(self._base, alert.symbol))
        except ValueError as exc:
            raise SinkRejected(self.name, f"alert {alert.id}: {exc}") from exc
        client = self._client
        if client is None:
            raise SinkUnavailable(self.name, "not connected to the broker")
        # Topic by topic, in order. A retry after a connection loss neither repeats
        # a topic the broker acknowledged nor re-publishes one still in flight in
        # paho's session: it waits for that one's acknowledgement instead.
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                for topic in topics:
                    await keep_cancel(
                        asyncio.shield(self._publishing(client, alert.id, topic, payload))
                    )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled: that goes on
            # The publish was abandoned (a fresh session after a QoS downgrade, shutdown).
            raise SinkUnavailable(self.name, "publish abandoned with its session") from None
        except TimeoutError as exc:
            raise SinkUnavailable(self.name, "publish not acknowledged yet") from exc
        except _Denied as exc:
            _log.warning(
                "mqtt.publish_denied", alert_id=alert.id, topic=exc.topic, reason=exc.reason
            )
            raise SinkRejected(
                self.name,
                f"alert {alert.id}: {exc}: the broker's ACL must allow "
                f"'topic write {self._base}/#' for this user",
            ) from None
        except aiomqtt.MqttError as exc:
            raise SinkUnavailable(self.name, self._redact(str(exc))) from exc
        except ValueError as exc:  # paho refuses the payload itself (beyond the MQTT limit)
            raise SinkRejected(self.name, f"alert {alert.id}: {exc}") from exc
        for topic in topics:
            self._inflight.pop((alert.id, topic), None)

    def _publishing(
        self, client: SessionClient, alert_id: str, topic: str, payload: bytes
    ) -> asyncio.Task[None]:
        """The publish of `payload` to `topic` for this alert: the one under way, or a new one."""
        key = (alert_id, topic)
        task = self._inflight.get(key)
        if task is not None and not (task.done() and (task.cancelled() or task.exception())):
            return task  # acknowledged already, or still in paho's session
        task = asyncio.create_task(self._publish_once(client, topic, payload))
        self._inflight[key] = task
        while len(self._inflight) > _INFLIGHT_KEPT:
            self._inflight.pop(next(iter(self._inflight)))
        return task

    async def _publish_once(self, client: SessionClient, topic: str, payload: bytes) -> None:
        # Checked in the same step as the publish: paho queues a QoS > 0 message it
        # cannot send (and aiomqtt reports an error), and a copy it would send on
        # the next connect must not get a twin from the outbox's retry.
        if not client.is_connected:
            raise aiomqtt.MqttError("not connected to the broker")
        qos = self._session_qos.qos
        self._session_qos.sending(asyncio.get_running_loop().time())
        # No timeout: the acknowledgement may come after a reconnect, and `send` bounds its wait.
        code = await client.publish_checked(
            topic, payload, qos=qos, retain=False, properties=self._expiry(), timeout=math.inf
        )
        if code >= 0x80:
            raise _Denied(topic, code)
        if qos != 2:
            return
        if client.qos2_downgraded and self._session_qos.qos == 2:
            self._session_qos.downgrade(
                1, "the broker acknowledged a QoS 2 publish as QoS 1 (PUBACK): no exactly-once"
            )
        else:
            self._session_qos.completed()

    def _expiry(self) -> Properties | None:
        """MQTT 5: an alert older than the daemon would send is not delivered late either."""
        if not self._v5:
            return None
        return properties(PacketTypes.PUBLISH, MessageExpiryInterval=self._alert_expiry_s)

    async def publish_state(
        self, symbol: str, state: Mapping[str, float | str | bool | None]
    ) -> None:
        """Publish `state` retained to `<base>/<SYMBOL>/state` and remember it.

        Keys are `ha_discovery.STATE_FIELDS` (more are kept, HA ignores them);
        NaN is sent as null. Transport problems are logged, not raised: the
        latest state per symbol is published again on every (re)connect. A
        symbol that is unsafe in a topic raises `ValueError`.
        """
        topic = ha.state_topic(self._base, symbol)
        self._states[symbol] = msgspec.json.encode(dict(state))
        try:
            async with asyncio.timeout(self._publish_timeout_s), self._publish_lock:
                client = self._client
                if client is None:  # the next connect publishes it
                    return
                # The latest, not necessarily ours: a newer one may have come in meanwhile.
                await keep_cancel(
                    client.publish(topic, self._states[symbol], qos=self.retained_qos, retain=True)
                )
        except (aiomqtt.MqttError, TimeoutError) as err:
            _log.info("mqtt.state_deferred", symbol=symbol, error=self._redact(str(err)))

    async def clear_retained(self) -> int:
        """Delete every retained message this sink publishes, on a sink that is not running
        (never entered, or after `__aexit__`, whose retained `offline` this deletes too).

        Publishes an empty retained payload (QoS 1 at most) to each discovery config
        (Home Assistant then removes the entities and the device), to the state topic of
        each configured or published symbol, and last to the status topic, over a
        connection of its own: a clean session and no last will, so a connection lost
        meanwhile leaves nothing behind either. Returns how many topics it cleared.
        Raises `SinkAuthFailed` when the broker refuses the login, `aiomqtt.MqttError`
        when it cannot be reached; each step is bounded by `publish_timeout_s`.
        """
        if self._task is not None:
            raise RuntimeError("clear_retained needs a stopped sink: call it after __aexit__")
        symbols = dict.fromkeys((*self._symbols, *self._states))
        topics = [topic for topic, _ in self._discovery]
        topics += [ha.state_topic(self._base, symbol) for symbol in symbols]
        topics.append(ha.status_topic(self._base))
        client = await self._new_client(persistent=False)
        client._client.will_clear()
        try:
            async with client:
                for topic in topics:
                    await client.publish(topic, b"", qos=min(self._qos, 1), retain=True)
        except aiomqtt.MqttError as err:
            refused = login_refused(err)
            if refused is None:
                raise
            raise SinkAuthFailed(self.name, refused) from None
        _log.info("mqtt.retained_cleared", host=self._host, port=self._port, topics=len(topics))
        return len(topics)

    def _encode_discovery(self, sw_version: str | None) -> list[tuple[str, bytes]]:
        messages = ha.discovery_messages(
            symbols=self._symbols,
            rule_names=self._rule_names,
            options=ha.DiscoveryOptions(
                base_topic=self._base,
                discovery_prefix=self._prefix,
                qos=self._qos,
                sw_version=sw_version,
            ),
        )
        return [(topic, msgspec.json.encode(config)) for topic, config in messages]

    def _redact(self, text: str) -> str:
        # Library error texts are not ours to vouch for: scrub the secret anyway.
        if self._password is not None and self._password.reveal():
            text = text.replace(self._password.reveal(), "***")
        return text or "unknown error"

    def _tls_context(self) -> ssl.SSLContext:
        # create_default_context: CERT_REQUIRED and hostname checking, so a wrong
        # CA or name fails the handshake instead of connecting unverified.
        context = ssl.create_default_context(cafile=self._ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self._cert_file:
            context.load_cert_chain(self._cert_file, self._key_file)
        return context

    def _session_options(self, persistent: bool) -> dict[str, Any]:
        """MQTT 3.1.1: `clean_session`. MQTT 5: clean start, and a session the broker
        keeps for a day while we are away (so a publish cut off is completed after)."""
        if not self._v5:
            return {"clean_session": not persistent}
        props = properties(
            PacketTypes.CONNECT, SessionExpiryInterval=SESSION_EXPIRY_S if persistent else 0
        )
        return {
            "protocol": aiomqtt.ProtocolVersion.V5,
            "clean_start": paho.MQTT_CLEAN_START_FIRST_ONLY if persistent else True,
            "properties": props,
        }

    async def _new_client(self, *, persistent: bool) -> SessionClient:
        tls_context = await asyncio.to_thread(self._tls_context) if self._tls else None
        return SessionClient(
            self._host,
            self._port,
            username=self._username,
            password=None if self._password is None else self._password.reveal(),
            identifier=self._client_id,
            will=aiomqtt.Will(ha.status_topic(self._base), ha.PAYLOAD_OFFLINE, qos=1, retain=True),
            **self._session_options(persistent),
            keepalive=self._keepalive_s,
            timeout=self._publish_timeout_s,
            tls_context=tls_context,
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delays = backoff_delays(*self._reconnect)
        client: SessionClient | None = None
        while True:
            since: float | None = None
            try:
                if client is None:
                    # A clean connect first: it clears the session a previous process
                    # left on the broker. The session client keeps its own after that.
                    async with await self._new_client(persistent=False):
                        pass
                    client = await self._new_client(persistent=True)
                async with client:
                    since = loop.time()
                    self.problem = None
                    if self._first is not None and not self._first.done():
                        self._first.set_result(None)
                    if client.max_qos is not None and client.max_qos < self._session_qos.qos:
                        self._session_qos.downgrade(
                            client.max_qos,
                            f"the broker's CONNACK says Maximum QoS {client.max_qos}",
                        )
                    # Alert publishes cut off by the last loss: paho completes them now.
                    resumed = sum(not t.done() for t in self._inflight.values())
                    self.resumed += resumed
                    if resumed:
                        self._session_qos.sending(loop.time())  # paho resends them now
                    _log.info(
                        "mqtt.connected",
                        host=self._host,
                        port=self._port,
                        tls=self._tls,
                        resumed=resumed,
                    )
                    await self._session(client)
            except (aiomqtt.MqttError, OSError) as err:
                # MqttError: refused, TLS handshake, connection lost; OSError: CA/cert files.
                self._client = None
                self._ready.clear()
                error = self._redact(str(err))
                fields = {"host": self._host, "port": self._port, "error": error}
                self.problem = error
                pending = any(not t.done() for t in self._inflight.values())
                if since is not None and self._session_qos.refused_on_loss(
                    loop.time(), pending=pending
                ):
                    # Paho's session holds the QoS 2 publish the broker refuses and would
                    # resend it on every reconnect: start a fresh session at QoS 1 instead.
                    self._session_qos.downgrade(
                        1, "the broker drops the connection on QoS 2 publishes"
                    )
                    for waiting in self._inflight.values():
                        waiting.cancel()  # the outbox resends these at QoS 1
                    self._inflight.clear()
                    client = None
                refused = login_refused(err)
                if refused is not None:
                    self.problem = refused
                    _log.error("mqtt.login_refused", reason=refused, **fields)
                    if self._first is not None and not self._first.done():
                        self._first.set_exception(SinkAuthFailed(self.name, refused))
                        return  # at start-up: the daemon stops with this line
                elif since is None:
                    _log.warning("mqtt.connect_failed", **fields)
                else:
                    _log.warning("mqtt.disconnected", reason="lost", **fields)
            if self._first is not None and not self._first.done():
                self._first.set_result(None)
            # Only a session that held for a while earns a fast retry: a broker
            # that accepts then drops us (a client-id clash) must not make a storm,
            # while one that ran for seconds before a restart gets us back quickly.
            if since is not None and loop.time() - since >= STABLE_SESSION_S:
                delays = backoff_delays(*self._reconnect)
            delay = next(delays)
            _log.info("mqtt.reconnect", delay_s=round(delay, 3))
            await asyncio.sleep(delay)

    async def _session(self, client: SessionClient) -> None:
        """Announce, publish the retained topics, then follow Home Assistant's status."""
        async with self._publish_lock:
            await keep_cancel(
                client.publish_checked(
                    ha.status_topic(self._base), ha.PAYLOAD_ONLINE, qos=1, retain=True
                )
            )
            await self._publish_retained(client, reason="connect")
            # Only now may publish_state go direct: anything older is already out.
            self._client = client
        granted = await keep_cancel(client.subscribe(ha.ha_status_topic(self._prefix), qos=1))
        if any(reason_value(code) >= 0x80 for code in granted):
            _log.warning(
                "mqtt.subscribe_denied",
                topic=ha.ha_status_topic(self._prefix),
                hint=f"the broker's ACL must allow 'topic read {self._prefix}/status': "
                "without it discovery is not republished when Home Assistant restarts",
            )
        self._ready.set()
        self.on_connected()
        async for message in client.messages:
            # A retained birth is an old one (delivered on subscribe): we have
            # just published everything anyway. Live births come unretained.
            if message.retain or message.payload not in (b"online", "online"):
                continue
            async with self._publish_lock:
                await self._publish_retained(client, reason="ha_online")

    @property
    def alert_qos(self) -> int:
        """The QoS alerts go at now: the configured one, until the broker refused it."""
        return self._session_qos.qos

    @property
    def retained_qos(self) -> int:
        """The QoS of status, discovery and state (see `SessionQos.retained`)."""
        return self._session_qos.retained

    async def _publish_retained(self, client: SessionClient, *, reason: str) -> None:
        denied: list[str] = []
        qos = self.retained_qos
        for topic, payload in self._discovery:
            code = await keep_cancel(client.publish_checked(topic, payload, qos=qos, retain=True))
            if code >= 0x80:
                denied.append(topic)
        for symbol in list(self._states):  # publish_state may add symbols meanwhile
            topic = ha.state_topic(self._base, symbol)
            code = await keep_cancel(
                client.publish_checked(topic, self._states[symbol], qos=qos, retain=True)
            )
            if code >= 0x80:
                denied.append(topic)
        if denied:
            _log.warning(
                "mqtt.publish_denied",
                topics=len(denied),
                first=denied[0],
                hint=f"the broker's ACL must allow 'topic write {self._prefix}/#' and "
                f"'topic write {self._base}/#' for this user",
            )
        _log.info(
            "mqtt.discovery_published",
            reason=reason,
            configs=len(self._discovery) - sum(t.startswith(self._prefix + "/") for t in denied),
            states=len(self._states) - sum(t.startswith(self._base + "/") for t in denied),
            denied=len(denied),
        )
