"""The QoS the MQTT sink's alerts go at: the configured one, until the broker refuses it.

A broker that refuses QoS 2 (NATS, Mosquitto with `max_qos 1`, AWS IoT Core,
Azure IoT Hub) closes the connection on a QoS 2 publish, and again when paho
resends it after the reconnect. A broker restarted under a publish does that
once, then the resend completes. So two losses in a row right after an
unacknowledged QoS 2 publish, with no QoS 2 flow completed in between, mean
"refused"; an MQTT 5 CONNACK says it outright (Maximum QoS). A broker that
takes QoS 2 but acknowledges it as QoS 1 (PUBACK: RabbitMQ) is downgraded too,
since exactly-once does not hold there. Either way alerts go at the lower QoS
for the rest of the process, after one warning.
"""

from __future__ import annotations

import math

import structlog

_log = structlog.get_logger(__name__)

REFUSED_WITHIN_S = 10.0
"""A loss this soon after a QoS 2 publish counts (some brokers close at once, some after
a silent wait)."""


class SessionQos:
    """The alert QoS in use (`qos`) and the evidence about QoS 2, fed by the sink."""

    def __init__(self, configured: int) -> None:
        self.configured = configured
        self.qos = configured
        self._suspect = 0
        self._last_qos2_at = -math.inf

    @property
    def retained(self) -> int:
        """Status, discovery and state replace themselves: QoS 1 at most, which every
        broker takes (QoS 2 buys nothing for them)."""
        return min(self.qos, 1)

    def sending(self, now: float) -> None:
        """A QoS 2 publish goes out now (a new one, or paho's resend after a reconnect)."""
        if self.qos == 2:
            self._last_qos2_at = now

    def completed(self) -> None:
        """A QoS 2 flow completed: the broker takes QoS 2."""
        self._suspect = 0

    def refused_on_loss(self, now: float, *, pending: bool) -> bool:
        """A connection was lost at `now`, with an alert publish `pending` or not: whether
        it is the second loss in a row that looks like a QoS 2 refusal."""
        if self.qos != 2 or not (pending and now - self._last_qos2_at < REFUSED_WITHIN_S):
            return False  # a loss unrelated to QoS 2; only a completed QoS 2 flow clears
        self._suspect += 1
        return self._suspect >= 2

    def downgrade(self, qos: int, reason: str) -> None:
        """Alerts go at `qos` for the rest of this process; one warning says why."""
        self.qos = qos
        self._suspect = 0
        _log.warning(
            "mqtt.qos_downgraded",
            configured=self.configured,
            used=qos,
            reason=reason,
            hint=f"set sinks.mqtt.qos = {qos} for this broker to silence this; alerts carry "
            "an id to drop repeats by",
        )
