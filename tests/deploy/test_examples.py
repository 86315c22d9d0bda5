"""The deploy examples name things that exist: Home Assistant entity ids the daemon's MQTT
discovery really creates, secret names the daemon really reads."""

from __future__ import annotations

import re
from pathlib import Path

from daemon.rules_file import load_rules
from daemon.secrets import SECRET_NAMES
from daemon.sinks.ha_discovery import discovery_messages
from signals.alerts import SEVERITIES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ENTITY = re.compile(r"\b(?:sensor|binary_sensor|event)\.iwm_alerts_[a-z0-9_]+")


def discovered_entity_ids() -> set[str]:
    rules = [spec.name for spec in load_rules(None)]
    messages = discovery_messages(symbols=("IWM", "SPY", "QQQ"), rule_names=rules)
    return {str(payload["default_entity_id"]) for _, payload in messages}


def test_home_assistant_examples_use_real_entity_ids() -> None:
    known = discovered_entity_ids()
    for name in ("dashboard.yaml", "automation_alerts.yaml"):
        used = set(ENTITY.findall((DEPLOY / "homeassistant" / name).read_text()))
        assert used, f"{name} names no entity"
        assert used <= known, f"{name}: unknown entities {sorted(used - known)}"
    assert "sensor.iwm_alerts_iwm_score" in known


def test_alert_automation_delivers_every_rule_unless_the_user_tightens_its_list() -> None:
    """No YAML parser is a dependency: the automation is read as text. Its one severity
    filter compares against the `severities` variable, which lists every severity."""
    text = (DEPLOY / "homeassistant" / "automation_alerts.yaml").read_text()
    listed = re.findall(r"(?m)^variables:\n(?:  #.*\n)*  severities: \[(.*)\]$", text)
    assert len(listed) == 1, "a top-level `variables:` block with a `severities: [...]` list"
    severities = [item.strip().strip("'\"") for item in listed[0].split(",")]
    assert severities == list(SEVERITIES)
    specs = load_rules(None)
    fired = {s.severity for s in specs} | {t.level for s in specs for t in s.severity_tiers}
    assert "info" in fired and fired <= set(severities)
    mentions = [line.strip() for line in text.splitlines() if "severity" in line and "{{" in line]
    assert mentions == [
        'value_template: "{{ trigger.to_state.attributes.severity in severities }}"'
    ], "the only severity test in a template is the one against the list"
    assert not re.search(r"severity\s*(?:in|==|!=|not in)\s*[\[('\"]", text)
    # Every symbol's event entity triggers it.
    triggers = set(re.findall(r"(?m)^      - (event\.iwm_alerts_[a-z0-9_]+)$", text))
    assert triggers == {e for e in discovered_entity_ids() if e.startswith("event.")}


def test_env_example_only_has_placeholders_for_known_secrets() -> None:
    text = (DEPLOY / "iwm-alerts.env.example").read_text()
    assignments = re.findall(r"(?m)^(#?)([A-Z][A-Z0-9_]*)=(.*)$", text)
    secrets = [(c, k, v) for c, k, v in assignments if k in SECRET_NAMES]
    assert {k for _, k, _ in secrets} == set(SECRET_NAMES)
    for commented, key, value in secrets:
        assert commented == "#", f"{key} must stay commented out in the example"
        assert value.startswith("<") and value.endswith(">"), f"{key} is not a placeholder"


def test_install_guide_covers_every_credential_of_the_unit() -> None:
    unit = (DEPLOY / "iwm-alerts.service").read_text()
    guide = (DEPLOY / "INSTALL.md").read_text()
    names = re.findall(r"(?m)^LoadCredential=([A-Z_]+):", unit)
    assert names
    for name in names:
        assert f"iwm-alerts.{name}" in guide, name
