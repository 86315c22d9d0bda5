"""The MQTT sink's client: one aiomqtt client per session, and what the broker answered.

`SessionClient` is an `aiomqtt.Client` that can be entered again after the
broker dropped it (one paho session across reconnects), and that keeps what
aiomqtt drops on the floor: the CONNACK's Maximum QoS (MQTT 5) and each
publish's reason code (MQTT 5 PUBACK/PUBREC: 0x87 means the broker's ACL
denied the topic). Also: the URL parser, the reconnect delays, and the line
for a refused login.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from daemon.retry import RetryPolicy

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_REASONS_KEPT = 4096

_PUBACK_LOG = "Received PUBACK (Mid: "

NOT_AUTHORIZED = 0x87
"""MQTT 5 reason code of a publish or subscription the broker's ACL denies."""


def backoff_delays(initial_s: float, max_s: float) -> Iterator[float]:
    """Reconnect delays: doubling from `initial_s` up to `max_s`, each drawn from
    [d/2, d] so that many clients cut off together do not come back together
    (the daemon's `RetryPolicy` with a jitter of 0.5)."""
    if not 0 < initial_s <= max_s:
        raise ValueError(f"need 0 < initial_s <= max_s, got {initial_s} and {max_s}")
    return RetryPolicy(base_s=initial_s, cap_s=max_s, jitter=0.5).delays()


class SessionClient(aiomqtt.Client):
    """An `aiomqtt.Client` that can be entered again after the broker dropped it.

    aiomqtt (2.5) leaves its `_connected` future resolved after an unexpected
    disconnect, so a second `async with` would return before the CONNACK and
    ignore it. Re-arming it here keeps one paho client, and with it the
    in-flight QoS 1/2 messages that paho retransmits on reconnect.

    `max_qos` is the broker's Maximum QoS from its last CONNACK (MQTT 5; None
    when it did not say, as MQTT 3.1.1 brokers never do). `publish_checked`
    returns the publish's reason code (0 on MQTT 3.1.1, which has none).
    `qos2_downgraded` turns true once the broker answers a QoS 2 publish with a
    PUBACK, the QoS 1 acknowledgement (RabbitMQ does): it took the message, but
    not for exactly-once delivery.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_qos: int | None = None
        self.qos2_downgraded = False
        self._reasons: OrderedDict[int, int] = OrderedDict()
        self._qos2_mids: set[int] = set()
        self._open_fd: int | None = None
        # paho hands each publish's acknowledgement to `on_publish` without saying which
        # packet it was; its protocol log line does, just before (public callback).
        self._client.on_log = self._on_log

    def _on_log(self, client: paho.Client, userdata: Any, level: int, buf: str) -> None:
        if buf.startswith(_PUBACK_LOG):
            mid = int(buf[len(_PUBACK_LOG) :].rstrip(")"))
            if mid in self._qos2_mids:
                self.qos2_downgraded = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await super().__aexit__(exc_type, exc, tb)
        if self._connected.done():
            self._connected = asyncio.get_running_loop().create_future()

    @property
    def is_connected(self) -> bool:
        """Whether paho's session is up now (not merely not yet noticed as lost)."""
        return self._client.is_connected()

    # aiomqtt 2.5 registers a socket's reader with `call_soon_threadsafe` and removes it on
    # close only if the socket still has a file number. A broker that closes a connection
    # at once (NATS or Mosquitto refusing a QoS 2 resend) leaves a stale selector entry
    # behind: the next socket, which gets the same number, is never read (its CONNACK
    # times out) and asyncio logs "Exception in callback add_reader". These two keep the
    # number and clean up after a closed socket, in order with the pending registration.

    def _on_socket_open(
        self,
        client: paho.Client,
        userdata: Any,
        sock: Any,
    ) -> None:
        self._open_fd = sock.fileno()

        def read() -> None:
            client.loop_read()
            pending = getattr(client._sock, "pending", None)  # SSL buffers (paho #131)
            while pending is not None and pending() > 0:
                client.loop_read()

        def create_misc_task() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        self._register(self._open_fd, self._loop.add_reader, read)
        self._loop.call_soon_threadsafe(create_misc_task)

    def _on_socket_close(
        self,
        client: paho.Client,
        userdata: Any,
        sock: Any,
    ) -> None:
        fd, self._open_fd = self._open_fd, None
        if fd is not None:
            self._loop.call_soon_threadsafe(self._forget, fd)
        if self._misc_task is not None and not self._misc_task.done():
            self._loop.call_soon_threadsafe(self._misc_task.cancel)

    def _on_socket_register_write(
        self,
        client: paho.Client,
        userdata: Any,
        sock: Any,
    ) -> None:
        self._register(sock.fileno(), self._loop.add_writer, client.loop_write)

    def _register(
        self, fd: int, add: Callable[[int, Callable[[], None]], object], io: Callable[[], object]
    ) -> None:
        """`add(fd, ...)` on the loop, unless the socket closed before that turn came; an
        error of `io` (paho's read or write) is a broken connection, as aiomqtt has it."""

        def callback() -> None:
            try:
                io()
            except Exception as exc:
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            if self._open_fd == fd:  # not closed meanwhile
                add(fd, callback)

        self._loop.call_soon_threadsafe(register)

    def _on_socket_unregister_write(
        self,
        client: paho.Client,
        userdata: Any,
        sock: Any,
    ) -> None:
        fd = sock.fileno()
        if fd > -1:
            with contextlib.suppress(OSError):
                self._loop.remove_writer(fd)

    def _forget(self, fd: int) -> None:
        # The fd is closed, so epoll has dropped it already; the selector still maps it.
        # With a writer registered too, asyncio modifies rather than unregisters, which
        # fails on a closed fd: the selector then drops its entry and re-raises.
        with contextlib.suppress(OSError):
            self._loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            self._loop.remove_writer(fd)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        maximum = getattr(properties, "MaximumQoS", None) if properties is not None else None
        self.max_qos = None if maximum is None else int(maximum)
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        super()._on_disconnect(client, userdata, flags, reason_code, properties)
        # A loss seen after the session's `async with` was left (the broker closed a
        # resent QoS 2 publish's connection at once) is nobody's to await: mark it read,
        # or asyncio logs "Future exception was never retrieved". The reconnect loop has
        # already logged the loss.
        lost = self._disconnected
        if lost.done() and not lost.cancelled():
            lost.exception()

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._reasons[mid] = int(getattr(reason_code, "value", 0) or 0)
        while len(self._reasons) > _REASONS_KEPT:
            self._reasons.popitem(last=False)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int,
        retain: bool,
        properties: Properties | None = None,
        timeout: float | None = None,
    ) -> int:
        """`publish`, returning the broker's reason code (>= 0x80: refused)."""
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if qos == 2:
            self._qos2_mids.add(info.mid)
        try:
            if not info.is_published():
                confirmation = asyncio.Event()
                with self._pending_call(info.mid, confirmation, self._pending_publishes):
                    await self._wait_for(confirmation.wait(), timeout=timeout)
        finally:
            self._qos2_mids.discard(info.mid)
        return self._reasons.pop(info.mid, 0)


def reason_value(code: int | ReasonCode) -> int:
    """The number of a reason code, however paho handed it over."""
    return int(code.value) if isinstance(code, ReasonCode) else int(code)


def properties(packet: int, **values: int) -> Properties:
    """MQTT 5 properties of `packet` (a `PacketTypes` member), e.g. MessageExpiryInterval."""
    props = Properties(packet)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


def parse_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of `mqtt://host[:port]` or `mqtts://host[:port]`.

    Error messages never echo the URL: a user may have put a password in it.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError("url is not a valid mqtt:// or mqtts:// URL") from exc
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError("url scheme must be mqtt:// or mqtts://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url must not carry credentials: use username= and password=")
    if not parts.hostname:
        raise ValueError("url needs a host, as in mqtt://host:1883")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("url must be just mqtt[s]://host[:port]")
    return parts.hostname, port or DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts"


_LOGIN_REFUSED = (4, 5, 134, 135)  # MQTT 3.1.1 CONNACK 4/5; MQTT 5 reason codes 0x86/0x87


def login_refused(err: BaseException) -> str | None:
    """For a CONNACK that refuses the credentials: the line naming what to check."""
    if not isinstance(err, MqttConnectError):  # a CONNACK refusal, not a lost socket
        return None
    rc = err.rc
    value = rc.value if isinstance(rc, ReasonCode) else rc
    if value not in _LOGIN_REFUSED:
        return None
    return f"the broker refused the login ({rc}): check sinks.mqtt.username and MQTT_PASSWORD"
