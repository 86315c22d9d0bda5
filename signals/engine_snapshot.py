"""An engine snapshot's schema: state keyed by name, the settings it was taken with, the checks.

Every piece of per-row state is stored under the name of what holds it (an
indicator such as `rsi`, or `signal.<name>` for a signal's own state), never by
its position in a list, so reordering indicators or signals cannot put one's
state into another. A snapshot of another schema, other settings or other
named state is refused with a `ValueError` saying what differs, before
anything is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np

from signals.config import EngineConfig
from signals.indicators.columnar import Columnar

SCHEMA = 2
"""Version of the engine snapshot layout; 1 keyed indicators by position."""

_SEP = ":"


def settings_of(config: EngineConfig) -> dict[str, Any]:
    """Every setting of `config` as plain data (JSON-ready), by field name; the signals are in the state."""
    return {f.name: _plain(getattr(config, f.name)) for f in fields(config) if f.name != "signals"}


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def state_arrays(states: Mapping[str, Columnar]) -> dict[str, np.ndarray]:
    """Every state array of `states`, keyed `<name>:<array>`."""
    return {f"{name}{_SEP}{k}": v for name, st in states.items() for k, v in st.state().items()}


def state_of(name: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays `state_arrays` stored for `name`."""
    prefix = f"{name}{_SEP}"
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def check(meta: Mapping[str, Any], config: EngineConfig, names: list[str]) -> None:
    """`ValueError` unless `meta` is of this schema, taken with `config`, with state for `names`."""
    schema = meta.get("schema", 1)
    if schema != SCHEMA:
        raise ValueError(f"engine snapshot schema {schema}, this engine reads schema {SCHEMA}")
    taken, now = meta["settings"], settings_of(config)
    for key in sorted(taken.keys() | now.keys()):
        if taken.get(key) != now.get(key):
            raise ValueError(
                f"the snapshot was taken with {key}={taken.get(key)!r}, "
                f"this engine has {key}={now.get(key)!r}"
            )
    stored = set(meta["state"])
    if stored != set(names):
        raise ValueError(
            f"the snapshot holds state for {sorted(stored - set(names))} and none for "
            f"{sorted(set(names) - stored)}"
        )
