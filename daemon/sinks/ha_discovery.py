"""Home Assistant MQTT discovery: the topic layout and the config payloads (pure, no I/O).

Topics under the base topic (default `iwm-alerts`):

- `<base>/status`: `online` / `offline`, retained (last will).
- `<base>/<SYMBOL>/state`: JSON object with the `STATE_FIELDS` keys, retained. The
  daily values keep their last known numbers after the close (`daily_time` names
  the session they belong to), and `last_alert` is the symbol's latest alert.
- `<base>/alerts` and `<base>/<SYMBOL>/alerts`: alert JSON, not retained.

Discovery configs go to `<prefix>/<component>/<unique_id>/config` (HA's advice:
object id = unique id, no node id). One device per base topic; per symbol six
number sensors, a `last alert` text sensor, a `breakout` binary sensor and an
`event` entity fed by the alerts. The node (the slug of the base topic) prefixes
every unique id and is the device's identifier, so a second base topic (the
demo's `iwm-alerts-demo`) is a second device that shares nothing with the first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

JsonObject = dict[str, Any]

PAYLOAD_ONLINE = "online"
PAYLOAD_OFFLINE = "offline"

# Keys of the per-symbol state JSON that the discovery templates read.
# `rs_roc20` is a fraction (0.012 = +1.2%); HA shows it in percent.
STATE_FIELDS: tuple[str, ...] = (
    "price",
    "score",
    "rsi14",
    "rvol",
    "atr_pct",
    "rs_roc20",
    "breakout",
    "daily_time",
    "daily_closed",
    "last_alert",
    "last_alert_rule",
    "last_alert_severity",
    "last_alert_time",
)

_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9.\-]*")
# HA accepts only these characters in a discovery topic's object id.
_NOT_ID = re.compile(r"[^a-z0-9]+")


class _Sensor(NamedTuple):
    key: str
    name: str
    field: str
    unit: str | None
    precision: int
    icon: str
    scale: float = 1.0
    daily: bool = False  # a value of the daily bar: attributes say which one


_SENSORS: tuple[_Sensor, ...] = (
    _Sensor("price", "price", "price", "USD", 2, "mdi:currency-usd"),
    _Sensor("score", "score", "score", None, 0, "mdi:gauge", daily=True),
    _Sensor("rsi", "RSI", "rsi14", None, 1, "mdi:chart-line", daily=True),
    _Sensor("rvol", "RVOL", "rvol", None, 2, "mdi:chart-bar"),
    _Sensor("atr_pct", "ATR %", "atr_pct", "%", 2, "mdi:arrow-expand-vertical", daily=True),
    _Sensor("rs", "relative strength", "rs_roc20", "%", 2, "mdi:scale-balance", 100.0, True),
)

# Attributes of the daily sensors and of the last alert sensor, read from the state.
_DAILY_ATTRIBUTES = ("daily_time", "daily_closed")
_LAST_ALERT_ATTRIBUTES = (
    ("rule", "last_alert_rule"),
    ("severity", "last_alert_severity"),
    ("time", "last_alert_time"),
)

# What the event entity exposes as attributes besides `event_type`.
_EVENT_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("alert_id", "id"),
    ("title", "title"),
    ("severity", "severity"),
    ("timeframe", "timeframe"),
    ("score", "score"),
    ("label", "label"),
    ("delayed", "delayed"),
)


def validate_topic_part(value: str, what: str) -> str:
    """`value` if it is a usable topic prefix: non-empty, no wildcards, no empty levels."""
    if not value or "+" in value or "#" in value or "\x00" in value:
        raise ValueError(f"{what} must be non-empty without '+', '#' or NUL, got {value!r}")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError(f"{what} must not have empty topic levels, got {value!r}")
    return value


def validate_symbol(symbol: str) -> str:
    """`symbol` if it is a ticker that is safe inside a topic (`[A-Z0-9.-]`)."""
    if not _SYMBOL.fullmatch(symbol):
        raise ValueError(f"symbol must match [A-Z0-9][A-Z0-9.-]*, got {symbol!r}")
    return symbol


def status_topic(base_topic: str) -> str:
    """`<base>/status`: online/offline, retained, also the last will."""
    return f"{base_topic}/status"


def state_topic(base_topic: str, symbol: str) -> str:
    """`<base>/<SYMBOL>/state`: the latest state JSON, retained."""
    return f"{base_topic}/{validate_symbol(symbol)}/state"


def alerts_topic(base_topic: str, symbol: str | None = None) -> str:
    """`<base>/alerts`, or `<base>/<SYMBOL>/alerts` for one symbol."""
    if symbol is None:
        return f"{base_topic}/alerts"
    return f"{base_topic}/{validate_symbol(symbol)}/alerts"


def ha_status_topic(discovery_prefix: str) -> str:
    """Where Home Assistant announces itself (`online` after a restart)."""
    return f"{discovery_prefix}/status"


def _slug(text: str) -> str:
    return _NOT_ID.sub("_", text.lower()).strip("_")


def _number_template(field: str, scale: float) -> str:
    # HA turns a rendered "None" into `unknown`: a warming-up (null) or missing
    # field must not show as 0 or as a stale number.
    value = f"value_json.{field}"
    if scale != 1.0:
        value = f"({value} * {scale:g}) | round(6)"
    return f"{{{{ {value} if value_json.{field} is number else None }}}}"


_BREAKOUT_TEMPLATE = (
    "{{ ('ON' if value_json.breakout else 'OFF') if value_json.breakout is boolean else 'None' }}"
)


def _attributes_template(pairs: Sequence[tuple[str, str]]) -> str:
    # `.get`: a state published before the field existed renders null, not an error.
    items = ", ".join(f"'{attr}': value_json.get('{key}')" for attr, key in pairs)
    return f"{{{{ {{{items}}} | tojson }}}}"


_LAST_ALERT_TEMPLATE = "{{ value_json.last_alert if value_json.last_alert is string else None }}"


def _event_template() -> str:
    # The alert JSON names its rule `rule`; HA's event entity wants `event_type`.
    pairs = ", ".join(f"'{attr}': value_json.{key}" for attr, key in _EVENT_ATTRIBUTES)
    return f"{{{{ {{'event_type': value_json.rule, {pairs}}} | tojson }}}}"


@dataclass(frozen=True, kw_only=True)
class DiscoveryOptions:
    """Where the entities' topics live (`base_topic`, HA's `discovery_prefix`), the QoS
    HA subscribes with, and the version the device reports (None: not reported)."""

    base_topic: str = "iwm-alerts"
    discovery_prefix: str = "homeassistant"
    qos: int = 1
    sw_version: str | None = None


def discovery_messages(
    *,
    symbols: Sequence[str],
    rule_names: Sequence[str],
    options: DiscoveryOptions = DiscoveryOptions(),
) -> list[tuple[str, JsonObject]]:
    """Every discovery (topic, config) pair, to be published retained.

    Entity ids are suggested with `default_entity_id` (HA 2025.10 deprecated
    `object_id` for this; older HA ignores unknown discovery keys). Without
    rule names there is no event entity (HA requires `event_types`).
    """
    base_topic, discovery_prefix = options.base_topic, options.discovery_prefix
    qos, sw_version = options.qos, options.sw_version
    validate_topic_part(base_topic, "base_topic")
    validate_topic_part(discovery_prefix, "discovery_prefix")
    node = _slug(base_topic)
    if not node:
        raise ValueError(f"base_topic needs a letter or digit, got {base_topic!r}")
    slugs: dict[str, str] = {}
    for symbol in symbols:
        slug = _slug(validate_symbol(symbol))
        if slug in slugs.values():
            raise ValueError(f"symbols {symbols!r} collide on the entity id {slug!r}")
        slugs[symbol] = slug

    device: JsonObject = {
        "identifiers": [node],
        "name": base_topic,
        "manufacturer": "iwm-alerts",
        "model": "signal alert daemon",
    }
    origin: JsonObject = {"name": "iwm-alerts"}
    if sw_version is not None:
        device["sw_version"] = sw_version
        origin["sw_version"] = sw_version
    common: JsonObject = {
        "availability_topic": status_topic(base_topic),
        "payload_available": PAYLOAD_ONLINE,
        "payload_not_available": PAYLOAD_OFFLINE,
        "device": device,
        "origin": origin,
        "qos": qos,
    }

    def entry(component: str, uid: str, config: JsonObject) -> tuple[str, JsonObject]:
        payload = {"unique_id": uid, "default_entity_id": f"{component}.{uid}", **config}
        return f"{discovery_prefix}/{component}/{uid}/config", payload | common

    messages: list[tuple[str, JsonObject]] = []
    for symbol, slug in slugs.items():
        state = state_topic(base_topic, symbol)
        for sensor in _SENSORS:
            config: JsonObject = {
                "name": f"{symbol} {sensor.name}",
                "state_topic": state,
                "value_template": _number_template(sensor.field, sensor.scale),
                "state_class": "measurement",
                "suggested_display_precision": sensor.precision,
                "icon": sensor.icon,
            }
            if sensor.unit is not None:
                config["unit_of_measurement"] = sensor.unit
            if sensor.daily:
                config["json_attributes_topic"] = state
                config["json_attributes_template"] = _attributes_template(
                    [(key, key) for key in _DAILY_ATTRIBUTES]
                )
            messages.append(entry("sensor", f"{node}_{slug}_{sensor.key}", config))
        messages.append(
            entry(
                "sensor",
                f"{node}_{slug}_last_alert",
                {
                    "name": f"{symbol} last alert",
                    "state_topic": state,
                    "value_template": _LAST_ALERT_TEMPLATE,
                    "json_attributes_topic": state,
                    "json_attributes_template": _attributes_template(_LAST_ALERT_ATTRIBUTES),
                    "icon": "mdi:bell-ring",
                },
            )
        )
        messages.append(
            entry(
                "binary_sensor",
                f"{node}_{slug}_breakout",
                {
                    "name": f"{symbol} breakout",
                    "state_topic": state,
                    "value_template": _BREAKOUT_TEMPLATE,
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "icon": "mdi:rocket-launch",
                },
            )
        )
        if rule_names:
            messages.append(
                entry(
                    "event",
                    f"{node}_{slug}_alert",
                    {
                        "name": f"{symbol} alert",
                        "state_topic": alerts_topic(base_topic, symbol),
                        "event_types": list(dict.fromkeys(rule_names)),
                        "value_template": _event_template(),
                        "icon": "mdi:bell-alert",
                    },
                )
            )
    return messages
