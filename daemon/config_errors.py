"""Config errors people can act on: the file, the dotted key, the problem.

msgspec reports `Expected `int`, got `str` - at `$.feed.symbols[2]``; this
turns such messages (and the semantic checks' `Invalid`) into one
`ConfigError` line naming `feed.symbols[2]`, with "did you mean" for typos
and the allowed values for enumerations.
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from signals.rules.errors import EXPECTED, MISSING_FIELD, UNKNOWN_FIELD, strip_optional, type_words

DecHook = Callable[[type, Any], Any]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(ValueError):
    """The config file cannot be used: one line naming the file, the key and the problem."""

    def __init__(self, file: Path, key: str | None, detail: str) -> None:
        super().__init__(f"{file}: {key}: {detail}" if key else f"{file}: {detail}")
        self.file = file
        self.key = key
        self.detail = detail


class Invalid(ValueError):
    """A semantic check failed at `key`, relative to the section that raised it."""

    def __init__(self, *key: str | int, detail: str) -> None:
        super().__init__(f"{dotted(key)}: {detail}")
        self.key = key
        self.detail = detail


def dotted(parts: Iterable[str | int]) -> str:
    """`("engine", "symbols", "BRK.B", "benchmark")` -> `engine.symbols."BRK.B".benchmark`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            out += f".{name}" if out else name
    return out


_AT = re.compile(r"^(?P<message>.*) - at `(?P<path>\$[^`]*)`$", re.DOTALL)
_SEGMENT = re.compile(r"\.(?P<field>[A-Za-z_][A-Za-z0-9_]*)|\[(?P<index>\d+)\]|(?P<any>\[\.\.\.\])")


def _child(tp: Any, part: str | int) -> Any:
    """The declared type one key or index below `tp` (None when unknown)."""
    tp = strip_optional(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        fields = {f.encode_name: f.type for f in msgspec.structs.fields(tp)}
        return fields.get(part) if isinstance(part, str) else None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    if origin in (tuple, list) and args:
        return args[0]
    return None


def _resolve(path: str, raw: Any, root: type, dec_hook: DecHook) -> tuple[list[str | int], Any]:
    """msgspec's `$.a[0][...]` as key parts, `[...]` replaced by the failing map key; and its type."""
    parts: list[str | int] = []
    node, tp = raw, root
    for m in _SEGMENT.finditer(path):
        part: str | int
        if m["field"] is not None:
            part = m["field"]
        elif m["index"] is not None:
            part = int(m["index"])
        else:
            # msgspec does not say which map entry failed: find the first that does.
            value_tp = _child(tp, "")
            entries = node.items() if isinstance(node, dict) else []
            part = next((k for k, v in entries if not _converts(v, value_tp, dec_hook)), "...")
        parts.append(part)
        tp = _child(tp, part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return parts, tp


def _converts(value: Any, tp: Any, dec_hook: DecHook) -> bool:
    try:
        msgspec.convert(value, tp, dec_hook=dec_hook)
    except msgspec.ValidationError:
        return False
    return True


def translate(
    exc: msgspec.ValidationError, raw: Mapping[str, Any], file: Path, root: type, dec_hook: DecHook
) -> ConfigError:
    """One `ConfigError` naming the dotted key, from msgspec's `... - at $.a.b` message;
    `root` is the config's top type, `dec_hook` the one it was decoded with."""
    m = _AT.match(str(exc))
    message, path = (m["message"], m["path"]) if m else (str(exc), "$")
    parts, tp = _resolve(path, raw, root, dec_hook)
    cause = exc.__cause__
    if isinstance(cause, Invalid):
        return ConfigError(file, dotted([*parts, *cause.key]), cause.detail)
    if u := UNKNOWN_FIELD.match(message):
        name = u["name"]
        struct = strip_optional(tp)
        is_struct = isinstance(struct, type) and issubclass(struct, msgspec.Struct)
        fields = [f.encode_name for f in msgspec.structs.fields(struct)] if is_struct else []
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; expected one of {', '.join(fields)}"
        return ConfigError(file, dotted([*parts, name]), f"unknown key{hint}")
    if r := MISSING_FIELD.match(message):
        return ConfigError(file, dotted([*parts, r["name"]]), "required but missing")
    if message.startswith("Invalid enum value"):
        choices = ", ".join(json.dumps(c) for c in typing.get_args(strip_optional(tp)))
        return ConfigError(file, dotted(parts), f"expected one of {choices}")
    if e := EXPECTED.match(message):
        detail = f"expected {type_words(e['want'])}{e['bound']}"
        if e["got"]:
            detail += f", got {type_words(e['got'])}"
        return ConfigError(file, dotted(parts), detail)
    return ConfigError(file, dotted(parts), message)
