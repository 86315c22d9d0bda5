"""Home Assistant discovery payloads: every field HA needs, ids it accepts, topics that line up."""

from __future__ import annotations

import re

import pytest

from daemon.sinks import ha_discovery as ha

SYMBOLS = ("IWM", "SPY", "BRK.B")
RULES = ("volume_breakout", "rsi_entry_zone", "score_cross")

# Per HA's MQTT docs: availability, device registry and what each platform needs.
COMMON_KEYS = {
    "name",
    "unique_id",
    "default_entity_id",
    "state_topic",
    "availability_topic",
    "payload_available",
    "payload_not_available",
    "device",
    "origin",
    "qos",
}
DEVICE_KEYS = {"identifiers", "name", "manufacturer", "model", "sw_version"}
SENSOR_KEYS = COMMON_KEYS | {"value_template", "state_class", "suggested_display_precision"}
BINARY_SENSOR_KEYS = COMMON_KEYS | {"value_template", "payload_on", "payload_off"}
EVENT_KEYS = COMMON_KEYS | {"event_types", "value_template"}
# HA: an object id in the discovery topic is [a-zA-Z0-9_-] only.
DISCOVERY_TOPIC = re.compile(r"homeassistant/(sensor|binary_sensor|event)/([a-zA-Z0-9_-]+)/config")


def _messages() -> list[tuple[str, ha.JsonObject]]:
    return ha.discovery_messages(
        symbols=SYMBOLS, rule_names=RULES, options=ha.DiscoveryOptions(sw_version="0.1.0")
    )


def _by_uid() -> dict[str, ha.JsonObject]:
    return {config["unique_id"]: config for _, config in _messages()}


def test_one_device_and_nine_entities_per_symbol() -> None:
    messages = _messages()
    assert len(messages) == len(SYMBOLS) * 9
    components = [DISCOVERY_TOPIC.fullmatch(topic) for topic, _ in messages]
    assert all(components), [t for t, _ in messages]
    kinds = [m.group(1) for m in components if m]
    assert kinds.count("sensor") == 7 * len(SYMBOLS)
    assert kinds.count("binary_sensor") == kinds.count("event") == len(SYMBOLS)
    devices = {tuple(config["device"]["identifiers"]) for _, config in messages}
    assert devices == {("iwm_alerts",)}


def test_object_id_in_topic_is_the_unique_id_and_ids_are_unique() -> None:
    messages = _messages()
    uids = [config["unique_id"] for _, config in messages]
    assert len(set(uids)) == len(uids)
    for topic, config in messages:
        match = DISCOVERY_TOPIC.fullmatch(topic)
        assert match is not None
        component, object_id = match.groups()
        assert object_id == config["unique_id"]
        assert config["default_entity_id"] == f"{component}.{object_id}"
        assert "object_id" not in config  # deprecated by HA 2025.10, gone in 2026.4


@pytest.mark.parametrize(
    ("key", "field", "unit"),
    [
        ("price", "price", "USD"),
        ("score", "score", None),
        ("rsi", "rsi14", None),
        ("rvol", "rvol", None),
        ("atr_pct", "atr_pct", "%"),
        ("rs", "rs_roc20", "%"),
    ],
)
def test_sensor_payloads(key: str, field: str, unit: str | None) -> None:
    config = _by_uid()[f"iwm_alerts_iwm_{key}"]
    assert config.keys() >= SENSOR_KEYS
    assert config["state_topic"] == "iwm-alerts/IWM/state"
    assert config["state_class"] == "measurement"
    assert config.get("unit_of_measurement") == unit
    assert f"value_json.{field}" in config["value_template"]
    assert field in ha.STATE_FIELDS
    assert config["availability_topic"] == "iwm-alerts/status"
    assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
    assert config["device"].keys() >= DEVICE_KEYS
    assert config["device"]["name"] == "iwm-alerts"
    assert config["device"]["sw_version"] == "0.1.0"
    assert config["name"].startswith("IWM ")


def test_templates_render_missing_or_null_fields_as_none() -> None:
    # HA maps a rendered "None" to `unknown`, so warm-up nulls never show as 0.
    by_uid = _by_uid()
    assert (
        by_uid["iwm_alerts_iwm_price"]["value_template"]
        == "{{ value_json.price if value_json.price is number else None }}"
    )
    assert (
        by_uid["iwm_alerts_iwm_rs"]["value_template"]
        == "{{ (value_json.rs_roc20 * 100) | round(6) if value_json.rs_roc20 is number else None }}"
    )


@pytest.mark.parametrize(("key", "daily"), [("score", True), ("rsi", True), ("atr_pct", True),
                                           ("rs", True), ("price", False), ("rvol", False)])  # fmt: skip
def test_daily_sensors_say_which_daily_bar_their_value_belongs_to(key: str, daily: bool) -> None:
    config = _by_uid()[f"iwm_alerts_iwm_{key}"]
    if not daily:
        assert "json_attributes_topic" not in config
        return
    assert config["json_attributes_topic"] == "iwm-alerts/IWM/state"
    assert config["json_attributes_template"] == (
        "{{ {'daily_time': value_json.get('daily_time'), "
        "'daily_closed': value_json.get('daily_closed')} | tojson }}"
    )
    assert {"daily_time", "daily_closed"} <= set(ha.STATE_FIELDS)


def test_last_alert_sensor_shows_the_text_with_rule_severity_and_time() -> None:
    config = _by_uid()["iwm_alerts_iwm_last_alert"]
    assert config.keys() >= COMMON_KEYS | {"value_template", "json_attributes_template"}
    assert "state_class" not in config  # text, not a measurement
    assert config["state_topic"] == config["json_attributes_topic"] == "iwm-alerts/IWM/state"
    assert (
        config["value_template"]
        == "{{ value_json.last_alert if value_json.last_alert is string else None }}"
    )
    template = config["json_attributes_template"]
    for attr, field in (
        ("rule", "last_alert_rule"),
        ("severity", "last_alert_severity"),
        ("time", "last_alert_time"),
    ):
        assert f"'{attr}': value_json.get('{field}')" in template
        assert field in ha.STATE_FIELDS
    assert config["default_entity_id"] == "sensor.iwm_alerts_iwm_last_alert"


def test_another_base_topic_is_another_device_sharing_no_id_or_topic() -> None:
    main = ha.discovery_messages(symbols=SYMBOLS, rule_names=RULES)
    demo = ha.discovery_messages(
        symbols=SYMBOLS,
        rule_names=RULES,
        options=ha.DiscoveryOptions(base_topic="iwm-alerts-demo"),
    )
    assert len(main) == len(demo)
    assert not {t for t, _ in main} & {t for t, _ in demo}
    assert not {c["unique_id"] for _, c in main} & {c["unique_id"] for _, c in demo}
    assert {tuple(c["device"]["identifiers"]) for _, c in demo} == {("iwm_alerts_demo",)}
    assert {c["device"]["name"] for _, c in demo} == {"iwm-alerts-demo"}
    assert all(c["unique_id"].startswith("iwm_alerts_demo_") for _, c in demo)
    assert all(c["availability_topic"] == "iwm-alerts-demo/status" for _, c in demo)


def test_breakout_binary_sensor() -> None:
    config = _by_uid()["iwm_alerts_iwm_breakout"]
    assert config.keys() >= BINARY_SENSOR_KEYS
    assert (config["payload_on"], config["payload_off"]) == ("ON", "OFF")
    assert config["state_topic"] == "iwm-alerts/IWM/state"
    assert "value_json.breakout" in config["value_template"]
    assert "breakout" in ha.STATE_FIELDS


def test_event_entity_maps_rule_to_event_type() -> None:
    config = _by_uid()["iwm_alerts_iwm_alert"]
    assert config.keys() >= EVENT_KEYS
    assert config["event_types"] == list(RULES)
    assert config["state_topic"] == "iwm-alerts/IWM/alerts"
    assert "'event_type': value_json.rule" in config["value_template"]
    assert config["value_template"].endswith("| tojson }}")


def test_symbols_with_dots_get_safe_ids_but_keep_their_topics() -> None:
    config = _by_uid()["iwm_alerts_brk_b_price"]
    assert config["state_topic"] == "iwm-alerts/BRK.B/state"


def test_custom_base_topic_and_prefix() -> None:
    messages = ha.discovery_messages(
        symbols=["IWM"],
        rule_names=RULES,
        options=ha.DiscoveryOptions(base_topic="desk/alerts", discovery_prefix="ha", qos=0),
    )
    topic, config = messages[0]
    assert topic == "ha/sensor/desk_alerts_iwm_price/config"
    assert config["state_topic"] == "desk/alerts/IWM/state"
    assert config["availability_topic"] == "desk/alerts/status"
    assert config["qos"] == 0
    assert "sw_version" not in config["device"]


def test_no_rules_no_event_entity() -> None:
    messages = ha.discovery_messages(symbols=["IWM"], rule_names=[])
    assert [t for t, _ in messages if "/event/" in t] == []
    assert len(messages) == 8


@pytest.mark.parametrize("symbol", ["iwm", "IW/M", "IWM+", "#", "", "IWM "])
def test_rejects_symbols_unsafe_in_topics(symbol: str) -> None:
    with pytest.raises(ValueError, match="symbol"):
        ha.discovery_messages(symbols=[symbol], rule_names=RULES)


def test_rejects_symbols_that_collide_on_entity_id() -> None:
    with pytest.raises(ValueError, match="collide"):
        ha.discovery_messages(symbols=["BRK.B", "BRK-B"], rule_names=RULES)


@pytest.mark.parametrize("base", ["", "a/#", "a/+/b", "/a", "a/", "a//b"])
def test_rejects_bad_base_topics(base: str) -> None:
    with pytest.raises(ValueError, match="base_topic"):
        ha.discovery_messages(
            symbols=["IWM"], rule_names=RULES, options=ha.DiscoveryOptions(base_topic=base)
        )


def test_topic_helpers() -> None:
    assert ha.status_topic("iwm-alerts") == "iwm-alerts/status"
    assert ha.state_topic("iwm-alerts", "IWM") == "iwm-alerts/IWM/state"
    assert ha.alerts_topic("iwm-alerts") == "iwm-alerts/alerts"
    assert ha.alerts_topic("iwm-alerts", "IWM") == "iwm-alerts/IWM/alerts"
    assert ha.ha_status_topic("homeassistant") == "homeassistant/status"
