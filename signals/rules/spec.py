"""Rule specifications: what a rules TOML file may say, validated once.

Operators follow TradingView's words: `crossing_up`, `crossing_down`,
`entering_channel`, `exiting_channel`, `greater_than`, `less_than`, plus the
composite `breakout` (relative volume at or above `min_rvol` while the close
crosses a breakout level).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec

from signals.aggregate import Timeframe
from signals.alerts import SEVERITIES
from signals.bar import SYMBOL_PATTERN
from signals.rules.errors import describe, key_path, literal_choices, one_of, shown

Operator = Literal[
    "crossing_up", "crossing_down", "entering_channel", "exiting_channel",
    "greater_than", "less_than", "breakout",
]  # fmt: skip
Frequency = Literal["once_per_bar_close", "once_per_bar", "only_once"]
BREAKOUT_LEVELS = ("prior_day", "donchian20", "fib")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
# Fields a title template may use (besides any engine column).
TITLE_FIELDS = frozenset(
    {"symbol", "rule", "timeframe", "value", "level", "level_name", "threshold"}
)


class RuleError(ValueError):
    """A rule file is wrong; the message names the file, the rule, the key and, for a key
    with a fixed set of values, lists them."""


class SeverityTier(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Raise the alert's severity to `level` when column `value` is at least `at_least`."""

    level: str
    value: str
    at_least: float


class RuleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One rule. `value` names an engine column (`rsi14`, `score`, `breadth20`...).

    After firing, a rule with `rearm_below` (`rearm_above`) stays disarmed until
    a closed bar's value is at or below (at or above) that level; with
    `start_armed = false` it must meet that condition once before it can fire
    at all (a band flip). `frequency`: `once_per_bar_close` looks at closed
    bars only; `once_per_bar` also at forming bars, at most once per bar;
    `only_once` fires once per symbol, ever. `on = "bar_close"` keeps a rule
    off forming bars whatever its frequency.
    """

    name: str
    operator: Operator
    timeframe: str = "1d"
    value: str = "close"
    threshold: float | None = None
    lower: float | None = None
    upper: float | None = None
    entering_from: Literal["any", "above", "below"] = "any"
    rearm_below: float | None = None
    rearm_above: float | None = None
    start_armed: bool = True
    frequency: Frequency = "once_per_bar_close"
    on: Literal["forming", "bar_close"] = "forming"
    cooldown: str | None = None
    expires: str | None = None
    sessions: Literal["regular", "extended"] = "regular"
    severity: str = "info"
    severity_tiers: tuple[SeverityTier, ...] = ()
    min_rvol: float = 2.0
    direction: Literal["up", "down"] = "up"
    levels: tuple[str, ...] = BREAKOUT_LEVELS
    symbols: tuple[str, ...] = ()
    enabled: bool = True
    title: str = ""

    @property
    def cooldown_s(self) -> int:
        """The cooldown in seconds (0: none)."""
        return 0 if self.cooldown is None else parse_duration(self.cooldown)

    @property
    def expires_at(self) -> int | None:
        """Expiry as epoch seconds, or None."""
        return (
            None if self.expires is None else int(datetime.fromisoformat(self.expires).timestamp())
        )

    @property
    def evaluates_forming(self) -> bool:
        """Whether the rule looks at forming bars (intrabar) or only at closed ones."""
        return self.frequency != "once_per_bar_close" and self.on == "forming"

    def check(self, where: str | None = None) -> None:
        """Checks msgspec's types cannot express (and the enum-like keys of a spec built in
        code); raises `RuleError` as `<where>: <key>: <problem>`, `where` defaulting to
        `rule '<name>'`. Enum-like keys list their valid values."""
        problem = self._problem()
        if problem is not None:
            raise RuleError(f"{where or f'rule {self.name!r}'}: {problem[0]}: {problem[1]}")

    def _problem(self) -> tuple[str, str] | None:
        """The first problem as (key path, detail), or None."""
        return next((p for check in _CHECKS if (p := check(self)) is not None), None)


# A problem: (key path, detail).
Problem = tuple[str, str]


def _choice_problem(spec: RuleSpec) -> Problem | None:
    for f in msgspec.structs.fields(spec):
        choices = literal_choices(f.type)
        value = getattr(spec, f.name)
        if choices is not None and value not in choices:
            return f.encode_name, one_of(choices, value)
    return None


def _timeframe_problem(spec: RuleSpec) -> Problem | None:
    try:
        Timeframe.parse(spec.timeframe)
    except ValueError as exc:
        expected = str(exc).partition("expected one of ")[2]
        if expected:
            return "timeframe", f"expected one of {expected}; got {shown(spec.timeframe)}"
        return "timeframe", str(exc)
    return None


def _name_problem(spec: RuleSpec) -> Problem | None:
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", spec.name):
        return "name", "must be lower_snake_case (a-z, 0-9 and _, up to 63 characters)"
    return None


def _operand_problem(spec: RuleSpec) -> Problem | None:
    thresholded = ("crossing_up", "crossing_down", "greater_than", "less_than")
    if spec.operator in thresholded and spec.threshold is None:
        return "threshold", f"required for operator {spec.operator}"
    if spec.operator in ("entering_channel", "exiting_channel"):
        for key, bound in (("lower", spec.lower), ("upper", spec.upper)):
            if bound is None:
                return key, f"required for operator {spec.operator}"
        if spec.lower is not None and spec.upper is not None and spec.lower > spec.upper:
            return "lower", f"must be <= upper ({spec.lower:g} > {spec.upper:g})"
    return None


def _arming_problem(spec: RuleSpec) -> Problem | None:
    if spec.rearm_below is not None and spec.rearm_above is not None:
        return "rearm_above", "give rearm_below or rearm_above, not both"
    if not spec.start_armed and spec.rearm_below is None and spec.rearm_above is None:
        return "start_armed", "false needs rearm_below or rearm_above"
    return None


def _listed_problem(spec: RuleSpec) -> Problem | None:
    """Severity, severity tiers, breakout levels and symbols: each from its fixed set."""
    if spec.severity not in SEVERITIES:
        return "severity", one_of(SEVERITIES, spec.severity)
    for i, tier in enumerate(spec.severity_tiers):
        if tier.level not in SEVERITIES:
            return f"severity_tiers[{i}].level", one_of(SEVERITIES, tier.level)
    for i, level in enumerate(spec.levels):
        if level not in BREAKOUT_LEVELS:
            return f"levels[{i}]", one_of(BREAKOUT_LEVELS, level)
    for i, symbol in enumerate(spec.symbols):
        if not SYMBOL_PATTERN.fullmatch(symbol):
            return f"symbols[{i}]", f"{symbol!r} is not a symbol"
    return None


def _time_problem(spec: RuleSpec) -> Problem | None:
    if spec.cooldown is not None:
        try:
            parse_duration(spec.cooldown)
        except ValueError as exc:
            return "cooldown", str(exc)
    if spec.expires is not None:
        try:
            stamp = datetime.fromisoformat(spec.expires)
        except ValueError as exc:
            return "expires", str(exc)
        if stamp.tzinfo is None:
            return "expires", "needs a UTC offset, e.g. 2027-01-01T00:00:00+00:00"
    return None


def _title_problem(spec: RuleSpec) -> Problem | None:
    for _, name, _, _ in string.Formatter().parse(spec.title):
        if name is not None and not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            return "title", f"field {{{name}}} must be a plain name"
    return None


def _rvol_problem(spec: RuleSpec) -> Problem | None:
    return ("min_rvol", "must be > 0") if spec.min_rvol <= 0 else None


# In the order problems are reported: the first found is the one raised.
_CHECKS: tuple[Callable[[RuleSpec], Problem | None], ...] = (
    _choice_problem,
    _timeframe_problem,
    _name_problem,
    _operand_problem,
    _arming_problem,
    _listed_problem,
    _time_problem,
    _title_problem,
    _rvol_problem,
)


def parse_duration(text: str) -> int:
    """`30m`, `2h`, `1d`, `45s` -> seconds."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 2h or 1d")
    return int(float(m.group(1)) * _UNIT_S[m.group(2)])


class RuleFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A rules TOML: `[[rule]]` tables."""

    rule: tuple[RuleSpec, ...] = ()


def parse_rules(data: Mapping[str, Any], source: str = "rules") -> tuple[RuleSpec, ...]:
    """Validate a parsed rules TOML document (`tomllib.loads`) into rule specs.

    Errors read `<source>: rule '<name>' (rule[<i>]): <key path>: <problem>`; a
    key with a fixed set of values lists them (`expected one of ...; got 'x'`).
    """
    raw = data.get("rule")

    def label(index: int) -> str:
        table = raw[index] if isinstance(raw, Sequence) and index < len(raw) else None
        name = table.get("name") if isinstance(table, Mapping) else None
        return f"rule {name!r} (rule[{index}])" if isinstance(name, str) else f"rule[{index}]"

    try:
        specs = msgspec.convert(data, RuleFile).rule
    except msgspec.ValidationError as exc:
        path, detail = describe(exc, data, RuleFile)
        if len(path) >= 2 and path[0] == "rule" and isinstance(path[1], int):
            where, rest = label(path[1]), key_path(path[2:])
            message = f"{where}: {rest}: {detail}" if rest else f"{where}: {detail}"
        else:
            message = f"{key_path(path)}: {detail}" if path else detail
        raise RuleError(f"{source}: {message}") from exc
    first: dict[str, int] = {}
    for index, spec in enumerate(specs):
        try:
            spec.check(label(index))
        except RuleError as exc:
            raise RuleError(f"{source}: {exc}") from exc
        if spec.name in first:
            raise RuleError(
                f"{source}: {label(index)}: name: defined twice (first at rule[{first[spec.name]}])"
            )
        first[spec.name] = index
    return specs


def enabled(specs: Sequence[RuleSpec]) -> tuple[RuleSpec, ...]:
    """The rules that are switched on."""
    return tuple(s for s in specs if s.enabled)
