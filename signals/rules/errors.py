"""Rule-file errors people can act on: the key path and the problem, valid values listed.

msgspec says `Invalid enum value 'crosses_up' - at `$.rule[0].operator``; this
turns such messages into a key path (`["rule", 0, "operator"]`) and a detail
(`expected one of crossing_up, crossing_down, ...; got 'crosses_up'`), reading
the allowed values off the declared types. Pure string work: no I/O.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec

Path = list[str | int]

_AT = re.compile(r"^(?P<message>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_SEGMENT = re.compile(r"\.(?P<field>[A-Za-z_][A-Za-z0-9_]*)|\[(?P<index>\d+)\]")
UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`")
MISSING_FIELD = re.compile(r"Object missing required field `(?P<name>[^`]*)`")
_INVALID_ENUM = re.compile(r"Invalid enum value ")
EXPECTED = re.compile(r"Expected `(?P<want>[^`]*)`(?P<bound>[^,]*)(?:, got `(?P<got>[^`]*)`)?")
_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "array": "a list",
    "object": "a table",
    "datetime": "a date-time",
    "date": "a date",
    "time": "a time",
}


def one_of(choices: Iterable[object], got: object) -> str:
    """`expected one of a, b, c; got 'x'`: the detail of every enum-like rule key."""
    return f"expected one of {', '.join(str(c) for c in choices)}; got {shown(got)}"


def shown(value: object) -> str:
    """A value as the error shows it: strings quoted, TOML's true/false, tables and lists by kind."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, Sequence):
        return "a list"
    return f"a {type(value).__name__}"


def key_path(parts: Iterable[str | int]) -> str:
    """`["severity_tiers", 1, "level"]` -> `severity_tiers[1].level`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def describe(exc: msgspec.ValidationError, data: Any, root: type) -> tuple[Path, str]:
    """The key path and the detail of a validation error of `data` decoded as `root`."""
    m = _AT.match(str(exc))
    message, at = (m["message"], m["path"]) if m else (str(exc), "")
    path: Path = []
    for s in _SEGMENT.finditer(at):
        path.append(s["field"] if s["field"] is not None else int(s["index"]))
    tp = _type_at(root, path)
    value = _value_at(data, path)
    if u := UNKNOWN_FIELD.match(message):
        fields = _fields(tp)
        close = difflib.get_close_matches(u["name"], fields, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; expected one of {', '.join(fields)}"
        return [*path, u["name"]], f"unknown key{hint}"
    if r := MISSING_FIELD.match(message):
        return [*path, r["name"]], "required but missing"
    choices = literal_choices(tp)
    if choices is not None and (_INVALID_ENUM.match(message) or EXPECTED.match(message)):
        return path, one_of(choices, value)
    if e := EXPECTED.match(message):
        detail = f"expected {type_words(e['want'])}{e['bound']}"
        if e["got"]:
            detail += f", got {type_words(e['got'])}"
        if path == ["rule"] and e["got"] == "object":
            detail += " (write each rule as a [[rule]] table)"
        return path, detail
    return path, message


def type_words(names: str) -> str:
    """msgspec's `int | str` in words: `an integer or a string`."""
    return " or ".join(_TYPE_WORDS.get(n, n) for n in names.split(" | ") if n != "null")


def strip_optional(tp: Any) -> Any:
    """`tp` without `Annotated[...]` and without the `None` of an optional."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = strip_optional(arms[0]) if len(arms) == 1 else tp
    return tp


def literal_choices(tp: Any) -> tuple[object, ...] | None:
    """The values of a `Literal` type, else None."""
    tp = strip_optional(tp)
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _fields(tp: Any) -> list[str]:
    tp = strip_optional(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return [f.encode_name for f in msgspec.structs.fields(tp)]
    return []


def _type_at(root: type, path: Path) -> Any:
    """The declared type at `path` below `root` (None once unknown)."""
    tp: Any = root
    for part in path:
        tp = strip_optional(tp)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct) and isinstance(part, str):
            tp = {f.encode_name: f.type for f in msgspec.structs.fields(tp)}.get(part)
        elif typing.get_origin(tp) in (tuple, list) and typing.get_args(tp):
            tp = typing.get_args(tp)[0]
        else:
            return None
    return tp


def _value_at(data: Any, path: Path) -> Any:
    node = data
    for part in path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node
