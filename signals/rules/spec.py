"""Rule specifications: what a rules TOML file may say, validated once.

Operators follow TradingView's words: `crossing_up`, `crossing_down`,
`entering_channel`, `exiting_channel`, `greater_than`, `less_than`, plus the
composite `breakout` (relative volume at or above `min_rvol` while the close
crosses a breakout level).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec

from signals.aggregate import Timeframe
from signals.alerts import SEVERITIES
from signals.bar import SYMBOL_PATTERN

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
    """A rule file is wrong; the message names the rule and the key."""


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

    def check(self) -> None:
        """Semantic checks msgspec's types cannot express; raises `RuleError` naming the key."""
        where = f"rule {self.name!r}"
        try:
            Timeframe.parse(self.timeframe)
        except ValueError as exc:
            raise RuleError(f"{where}: timeframe: {exc}") from exc
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", self.name):
            raise RuleError(f"{where}: name must be lower_snake_case")
        needs_threshold = self.operator in (
            "crossing_up",
            "crossing_down",
            "greater_than",
            "less_than",
        )
        if needs_threshold and self.threshold is None:
            raise RuleError(f"{where}: threshold is required for {self.operator}")
        channel = self.operator in ("entering_channel", "exiting_channel")
        if channel and (self.lower is None or self.upper is None or self.lower > self.upper):
            raise RuleError(f"{where}: lower and upper are required, lower <= upper")
        if self.rearm_below is not None and self.rearm_above is not None:
            raise RuleError(f"{where}: give rearm_below or rearm_above, not both")
        if not self.start_armed and self.rearm_below is None and self.rearm_above is None:
            raise RuleError(f"{where}: start_armed = false needs rearm_below or rearm_above")
        for key, level in (
            ("severity", self.severity),
            *(("severity_tiers", t.level) for t in self.severity_tiers),
        ):
            if level not in SEVERITIES:
                raise RuleError(f"{where}: {key}: {level!r} is not one of {', '.join(SEVERITIES)}")
        bad_levels = set(self.levels) - set(BREAKOUT_LEVELS)
        if bad_levels:
            raise RuleError(f"{where}: levels: unknown {sorted(bad_levels)}; use {BREAKOUT_LEVELS}")
        for s in self.symbols:
            if not SYMBOL_PATTERN.fullmatch(s):
                raise RuleError(f"{where}: symbols: {s!r} is not a symbol")
        if self.cooldown is not None:
            try:
                parse_duration(self.cooldown)
            except ValueError as exc:
                raise RuleError(f"{where}: cooldown: {exc}") from exc
        if self.expires is not None:
            try:
                stamp = datetime.fromisoformat(self.expires)
            except ValueError as exc:
                raise RuleError(f"{where}: expires: {exc}") from exc
            if stamp.tzinfo is None:
                raise RuleError(
                    f"{where}: expires needs a UTC offset, e.g. 2027-01-01T00:00:00+00:00"
                )
        for _, field, _, _ in string.Formatter().parse(self.title):
            if field is not None and not re.fullmatch(r"[a-z_][a-z0-9_]*", field):
                raise RuleError(f"{where}: title: field {{{field}}} must be a plain name")
        if self.min_rvol <= 0:
            raise RuleError(f"{where}: min_rvol must be > 0")


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
    """Validate a parsed rules TOML document (`tomllib.loads`) into rule specs."""
    try:
        specs = msgspec.convert(data, RuleFile).rule
    except msgspec.ValidationError as exc:
        raise RuleError(f"{source}: {_dotted(str(exc))}") from exc
    names: set[str] = set()
    for spec in specs:
        try:
            spec.check()
        except RuleError as exc:
            raise RuleError(f"{source}: {exc}") from exc
        if spec.name in names:
            raise RuleError(f"{source}: rule {spec.name!r} is defined twice")
        names.add(spec.name)
    return specs


def _dotted(message: str) -> str:
    """msgspec says `at $.rule[2].threshold`; people read `rule[2].threshold`."""
    return message.replace("`$.", "`").replace("$.", "")


def enabled(specs: Sequence[RuleSpec]) -> tuple[RuleSpec, ...]:
    """The rules that are switched on."""
    return tuple(s for s in specs if s.enabled)
