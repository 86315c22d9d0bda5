"""Rule files from disk: errors name the file, the rule and the key, and list valid values."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.rules_file import load_rules
from signals.rules.spec import RuleError

RULES = """
[[rule]]
name = "rsi_dip"
operator = "less_than"
value = "rsi14"
threshold = 35

[[rule]]
name = "score_up"
operator = "crosses_up"
value = "score"
threshold = 70
"""


def test_a_bad_operator_names_the_file_the_rule_and_lists_the_operators(tmp_path: Path) -> None:
    path = tmp_path / "my_rules.toml"
    path.write_text(RULES)
    with pytest.raises(RuleError) as info:
        load_rules(path)
    assert str(info.value) == (
        f"{path}: rule 'score_up' (rule[1]): operator: expected one of crossing_up, "
        "crossing_down, entering_channel, exiting_channel, greater_than, less_than, breakout; "
        "got 'crosses_up'"
    )


def test_a_bad_sessions_value_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(RULES.replace('"crosses_up"', '"crossing_up"') + 'sessions = "24h"\n')
    with pytest.raises(RuleError) as info:
        load_rules(path)
    assert str(info.value) == (
        f"{path}: rule 'score_up' (rule[1]): sessions: expected one of regular, extended; got '24h'"
    )


def test_the_bundled_defaults_load() -> None:
    assert len(load_rules(None)) >= 5
