"""Reading rule files: the bundled defaults or a user's TOML."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from signals.rules.spec import RuleError, RuleSpec, parse_rules


def default_rules_text() -> str:
    """The bundled default rules TOML."""
    return resources.files("daemon").joinpath("data/default_rules.toml").read_text()


def load_rules(path: Path | None = None) -> tuple[RuleSpec, ...]:
    """Rules from `path`, or the defaults; errors name the file and the key."""
    source = str(path) if path is not None else "default_rules.toml"
    try:
        text = path.read_text() if path is not None else default_rules_text()
    except OSError as exc:
        raise RuleError(f"{source}: cannot read: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{source}: {exc}") from exc
    return parse_rules(data, source)
