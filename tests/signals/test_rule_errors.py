"""Rule-file errors, exactly: the file, the rule, the key path, and the valid values."""

from __future__ import annotations

from typing import Any

import pytest

from signals.rules.spec import RuleError, RuleSpec, parse_rules

OPERATORS = (
    "crossing_up, crossing_down, entering_channel, exiting_channel, greater_than, less_than, "
    "breakout"
)
KEYS = (
    "name, operator, timeframe, value, threshold, lower, upper, entering_from, rearm_below, "
    "rearm_above, start_armed, frequency, on, cooldown, expires, sessions, severity, "
    "severity_tiers, min_rvol, direction, levels, symbols, enabled, title"
)


def _rule(**fields: Any) -> dict[str, Any]:
    return {"name": "dip", "operator": "less_than", "threshold": 40.0, **fields}


def _error(*rules: Any, **top: Any) -> str:
    data = {"rule": list(rules), **top} if rules else top
    with pytest.raises(RuleError) as info:
        parse_rules(data, "my_rules.toml")
    return str(info.value)


# Every key with a fixed set of values lists them, whatever checks it (msgspec or `check`).
@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"operator": "crosses_up"}, f"operator: expected one of {OPERATORS}; got 'crosses_up'"),
        ({"operator": 5}, f"operator: expected one of {OPERATORS}; got 5"),
        ({"operator": True}, f"operator: expected one of {OPERATORS}; got true"),
        (
            {"frequency": "always"},
            "frequency: expected one of once_per_bar_close, once_per_bar, only_once; got 'always'",
        ),
        ({"on": "close"}, "on: expected one of forming, bar_close; got 'close'"),
        ({"sessions": "all"}, "sessions: expected one of regular, extended; got 'all'"),
        ({"sessions": ["regular"]}, "sessions: expected one of regular, extended; got a list"),
        ({"direction": "sideways"}, "direction: expected one of up, down; got 'sideways'"),
        (
            {"operator": "entering_channel", "lower": 1, "upper": 2, "entering_from": "left"},
            "entering_from: expected one of any, above, below; got 'left'",
        ),
        ({"severity": "loud"}, "severity: expected one of info, notable, strong; got 'loud'"),
        (
            {"severity_tiers": [
                {"level": "strong", "value": "rvol", "at_least": 3},
                {"level": "urgent", "value": "rvol", "at_least": 4},
            ]},
            "severity_tiers[1].level: expected one of info, notable, strong; got 'urgent'",
        ),
        ({"timeframe": "2d"}, "timeframe: expected one of 1m, 5m, 15m, 30m, 1h, 1d; got '2d'"),
        (
            {"levels": ["fib", "moon"]},
            "levels[1]: expected one of prior_day, donchian20, fib; got 'moon'",
        ),
    ],
)  # fmt: skip
def test_enum_like_keys_list_their_valid_values(fields: dict[str, Any], detail: str) -> None:
    assert _error(_rule(**fields)) == f"my_rules.toml: rule 'dip' (rule[0]): {detail}"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            [_rule(), _rule(name="late", frequency="twice")],
            "rule 'late' (rule[1]): frequency: expected one of once_per_bar_close, "
            "once_per_bar, only_once; got 'twice'",
        ),
        (
            [{"operator": "less_than", "threshold": 1}],
            "rule[0]: name: required but missing",
        ),
        ([{"operator": "wat"}], f"rule[0]: operator: expected one of {OPERATORS}; got 'wat'"),
        ([_rule(op="crossing_up")], f"rule 'dip' (rule[0]): op: unknown key; expected one of {KEYS}"),
        ([_rule(operatr="x")], "rule 'dip' (rule[0]): operatr: unknown key (did you mean operator?)"),
        (
            [_rule(severity_tiers=[{"level": "strong", "value": "rvol"}])],
            "rule 'dip' (rule[0]): severity_tiers[0].at_least: required but missing",
        ),
        (
            [_rule(severity_tiers=[{"level": "strong", "value": "rvol", "at_least": 3, "x": 1}])],
            "rule 'dip' (rule[0]): severity_tiers[0].x: unknown key; expected one of level, "
            "value, at_least",
        ),
        ([_rule(threshold="high")], "rule 'dip' (rule[0]): threshold: expected a number, got a string"),
        ([_rule(levels="fib")], "rule 'dip' (rule[0]): levels: expected a list, got a string"),
        ([_rule(), _rule()], "rule 'dip' (rule[1]): name: defined twice (first at rule[0])"),
        (
            [_rule(name="Dip")],
            "rule 'Dip' (rule[0]): name: must be lower_snake_case (a-z, 0-9 and _, up to 63 "
            "characters)",
        ),
        (
            [{"name": "dip", "operator": "crossing_up"}],
            "rule 'dip' (rule[0]): threshold: required for operator crossing_up",
        ),
        (
            [_rule(operator="exiting_channel", lower=3.0, upper=1.0)],
            "rule 'dip' (rule[0]): lower: must be <= upper (3 > 1)",
        ),
        (
            [_rule(symbols=["IWM", "a b"])],
            "rule 'dip' (rule[0]): symbols[1]: 'a b' is not a symbol",
        ),
        (
            [_rule(cooldown="soon")],
            "rule 'dip' (rule[0]): cooldown: 'soon' is not a duration like 30m, 2h or 1d",
        ),
        ([7], "rule[0]: expected a table, got an integer"),
    ],
)  # fmt: skip
def test_errors_name_the_file_the_rule_and_the_key(rules: list[Any], message: str) -> None:
    assert _error(*rules) == f"my_rules.toml: {message}"


def test_file_level_mistakes() -> None:
    assert _error(rules=[_rule()]) == "my_rules.toml: rules: unknown key (did you mean rule?)"
    assert _error(rule=_rule()) == (
        "my_rules.toml: rule: expected a list, got a table (write each rule as a [[rule]] table)"
    )


def test_a_spec_built_in_code_is_checked_for_its_enum_like_keys_too() -> None:
    spec = RuleSpec(name="dip", operator="crosses_up", threshold=1.0)  # type: ignore[arg-type]
    with pytest.raises(RuleError) as info:
        spec.check()
    assert str(info.value) == f"rule 'dip': operator: expected one of {OPERATORS}; got 'crosses_up'"
