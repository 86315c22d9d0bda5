"""Hostile input in config files: one bad key at a time, and `check-config` on the command line.

A valid base config (the example file with every optional section on) is
mutated once per example: a wrong type, an out-of-range value, a semantic
error a type cannot express, an unknown key, or broken TOML. Loading must fail
with a `ConfigError` naming the file and the key, and no library internals.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import Config, load_config
from daemon.config_errors import ConfigError
from signals.score import SIGNALS
from tests.reliability.hostile import HypothesisPick, Pick
from tests.reliability.scale import scale

pytestmark = pytest.mark.reliability

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config.example.toml"
CONFIG_EXAMPLES = scale(300, 2_000)
TomlValue = str | int | float | bool | list[object] | dict[str, object]
LEAKED = ("Traceback", "msgspec", "ValidationError", "tomllib", "TOMLDecodeError", "$.")


def _base_config() -> dict[str, object]:
    """The example file with every optional section switched on, so all of them get fuzzed."""
    raw: dict[str, object] = tomllib.loads(EXAMPLE_CONFIG.read_text())
    sinks = raw["sinks"]
    engine = raw["engine"]
    assert isinstance(sinks, dict) and isinstance(engine, dict)
    sinks["jsonl"] = {"path": "alerts.jsonl"}
    sinks["mqtt"] = {"url": "mqtt://127.0.0.1:1883", "username": "iwm", "qos": 1}
    sinks["telegram"] = {"access": "allowlist", "allowed_user_ids": [42], "rate_per_chat_s": 1.0}
    engine["symbols"] = {"IWM": {"benchmark": "SPY", "comparator": "QQQ"}}
    return raw


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _to_toml(raw: dict[str, object], prefix: tuple[str, ...] = ()) -> str:
    """TOML text for `raw`: scalars and arrays first, then one `[table]` per sub-table."""
    scalars = [(k, v) for k, v in raw.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in raw.items() if isinstance(v, dict)]
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars]
    text = ""
    if prefix and (lines or not tables):
        text += "[" + ".".join(_toml_key(p) for p in prefix) + "]\n"
    text += "".join(line + "\n" for line in lines)
    for k, v in tables:
        assert isinstance(v, dict)
        text += "\n" + _to_toml(v, (*prefix, k))
    return text


def _key_path(parts: Sequence[str | int]) -> str:
    """The documented key notation: `a.b[0]`, with non-bare keys quoted (`engine.symbols."X.Y"`)."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += f".{name}" if out else name
    return out


def _schema(path: Sequence[str]) -> msgspec.inspect.Type:
    """The declared type at `path` in `Config`, optionals unwrapped."""
    node: msgspec.inspect.Type = msgspec.inspect.type_info(Config)
    for part in path:
        node = _unwrap(node)
        if isinstance(node, msgspec.inspect.StructType):
            node = next(f.type for f in node.fields if f.encode_name == part)
        elif isinstance(node, msgspec.inspect.DictType):
            node = node.value_type
        else:
            raise AssertionError(f"no table at {path}")
    return _unwrap(node)


def _unwrap(node: msgspec.inspect.Type) -> msgspec.inspect.Type:
    if isinstance(node, msgspec.inspect.UnionType):
        arms = [t for t in node.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(arms) == 1:
            return arms[0]
    return node


def _paths(raw: dict[str, object], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key of `raw` (tables and leaves), depth first."""
    out: list[tuple[str, ...]] = []
    for key, value in raw.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += _paths(value, (*prefix, key))
    return out


def _wrong_types(node: msgspec.inspect.Type) -> list[TomlValue]:
    """TOML values msgspec must refuse for `node` (ints are fine where floats are)."""
    table: dict[str, object] = {"zz": 1}
    if isinstance(node, msgspec.inspect.BoolType):
        return ["yes", 1, 0.5, [True], table]
    if isinstance(node, msgspec.inspect.IntType):
        return ["7", True, 2.5, [7], table]
    if isinstance(node, msgspec.inspect.FloatType):
        return ["1.0", False, [1.0], table]
    if isinstance(node, msgspec.inspect.StrType | msgspec.inspect.LiteralType):
        return [7, 2.5, True, ["x"], table]
    if isinstance(node, msgspec.inspect.CustomType):  # Path
        return [7, 2.5, True, ["x"], table, ""]
    if isinstance(node, msgspec.inspect.VarTupleType | msgspec.inspect.ListType):
        return ["x", 7, table]
    if isinstance(node, msgspec.inspect.StructType | msgspec.inspect.DictType):
        return ["x", 7, [1]]
    raise AssertionError(f"unhandled schema node {node}")


def _out_of_range(node: msgspec.inspect.Type) -> list[TomlValue]:
    if isinstance(node, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        bad: list[TomlValue] = []
        if node.gt is not None:
            bad += [node.gt, node.gt - 1]
        if node.ge is not None:
            bad += [node.ge - 1]
        if node.le is not None:
            bad += [node.le + 1, 10**6]
        if isinstance(node, msgspec.inspect.FloatType) and node.gt is not None:
            bad += [-1e300]
        return bad
    if isinstance(node, msgspec.inspect.LiteralType):
        return ["bogus", str(node.values[0]).upper(), ""]
    return []


# Semantic checks a type cannot express: (path, bad value, key the error must name).
SEMANTIC: tuple[tuple[tuple[str, ...], TomlValue, str], ...] = (
    (("feed", "symbols"), ["iwm", "SPY", "QQQ"], "feed.symbols[0]"),
    (("feed", "symbols"), ["IWM", "SPY", "SPY", "QQQ"], "feed.symbols[2]"),
    (("feed", "symbols"), ["IWM", "SPY", "QQQ", "A" * 11], "feed.symbols[3]"),
    (("feed", "symbols"), [], "feed.symbols"),
    (("rates", "url"), "ftp://example.com/x.csv", "rates.url"),
    (("rates", "url"), "https://exa mple.com", "rates.url"),
    (("rates", "proxy_symbol"), "shy", "rates.proxy_symbol"),
    (("health", "host"), "local host", "health.host"),
    (("engine", "benchmark"), "DIA", "engine.benchmark"),
    (("engine", "comparator"), "qqq", "engine.comparator"),
    (("sinks", "mqtt", "url"), "http://127.0.0.1:1883", "sinks.mqtt.url"),
    (("sinks", "mqtt", "url"), "mqtt://127.0.0.1:99999", "sinks.mqtt.url"),
    (("sinks", "mqtt", "base_topic"), "iwm/#", "sinks.mqtt.base_topic"),
    (("sinks", "telegram", "api_base_url"), "ws://127.0.0.1/bot", "sinks.telegram.api_base_url"),
    (("sinks", "telegram", "allowed_user_ids"), [-5], "sinks.telegram.allowed_user_ids[0]"),
    (("engine", "symbols", "IWM", "benchmark"), "DIA", "engine.symbols.IWM.benchmark"),
)


def _put(raw: dict[str, object], path: Sequence[str], value: object) -> None:
    node = raw
    for part in path[:-1]:
        child = node[part]
        assert isinstance(child, dict)
        node = child
    node[path[-1]] = value


def _check_config_error(path: Path, key: str | None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert info.value.file == path and message.startswith(f"{path}: ")
    assert info.value.key == key, message
    if key is not None:
        assert message.startswith(f"{path}: {key}: ")
    assert not any(word in message for word in LEAKED), message
    return message


def _broken_toml(text: str, pick: Pick) -> str:
    lines = text.splitlines()
    settings_at = [i for i, line in enumerate(lines) if re.match(r"^[a-z_]+ = ", line)]
    i = pick.choice(settings_at)
    kind = pick.integer(0, 5)
    if kind == 0:
        lines[i] = lines[i].replace(" = ", " ", 1)  # no `=`
    elif kind == 1:
        lines.insert(i, lines[i])  # the same key twice
    elif kind == 2:
        lines[i] = lines[i].split(" = ")[0] + ' = "unterminated'
    elif kind == 3:
        lines[i] = lines[i].split(" = ")[0] + " = 01x"
    elif kind == 4:
        lines.insert(i, "[[[feed")
    else:
        lines.insert(i, "[feed]")  # the same table twice
    return "\n".join(lines) + "\n"


def test_fuzzed_config_files_fail_with_the_key_and_file_named(tmp_path: Path) -> None:
    base = _base_config()
    good = tmp_path / "good.toml"
    good.write_text(_to_toml(base))
    load_config(good)  # the base is valid: every failure below is the mutation's
    leaves = _paths(base)
    tables = [()] + [p for p in leaves if isinstance(_lookup(base, p), dict)]
    counts: Counter[str] = Counter()

    @settings(
        max_examples=CONFIG_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        pick = HypothesisPick(data)
        raw = copy.deepcopy(base)
        path = tmp_path / "fuzzed.toml"
        kind = pick.choice(
            ("wrong_type", "wrong_type", "out_of_range", "semantic", "unknown", "toml")
        )
        key: str | None
        if kind == "toml":
            path.write_text(_broken_toml(EXAMPLE_CONFIG.read_text(), pick))
            message = _check_config_error(path, None)
            assert "invalid TOML" in message and "line" in message
            counts[kind] += 1
            return
        if kind == "semantic":
            where, value, key = pick.choice(SEMANTIC)
            _put(raw, where, value)
        elif kind == "unknown":
            table = pick.choice(tables)
            name = data.draw(
                st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
                | st.sampled_from(["with space", "dot.ted", "ünï", "UPPER", "1st"])
            )
            node = _schema(table) if table else msgspec.inspect.type_info(Config)
            here = _lookup(base, table)
            assert isinstance(here, dict)
            known = set(here)
            if isinstance(node, msgspec.inspect.StructType):
                known |= {f.encode_name for f in node.fields}
            if table == ("engine", "weights"):
                known |= set(SIGNALS)
            if name in known:
                counts["skipped"] += 1
                return
            _put(raw, (*table, name), 1)
            key = _key_path([*table, name])
        else:
            where = pick.choice(leaves)
            node = _schema(where)
            candidates = _wrong_types(node) if kind == "wrong_type" else _out_of_range(node)
            if not candidates:
                counts["skipped"] += 1
                return
            value = pick.choice(candidates)
            key = _key_path(where)
            if isinstance(node, msgspec.inspect.VarTupleType) and pick.integer(0, 1):
                value = [7] if not isinstance(node.item_type, msgspec.inspect.IntType) else ["x"]
                key += "[0]"
            _put(raw, where, value)
        path.write_text(_to_toml(raw))
        _check_config_error(path, key)
        counts[kind] += 1

    fuzz()
    print(f"\nconfig cases: {dict(counts)}")
    assert sum(v for k, v in counts.items() if k != "skipped") >= CONFIG_EXAMPLES // 2
    assert all(counts[k] > 0 for k in ("wrong_type", "out_of_range", "semantic", "unknown", "toml"))


def _lookup(raw: dict[str, object], path: Sequence[str]) -> dict[str, object] | object:
    node: object = raw
    for part in path:
        assert isinstance(node, dict)
        node = node[part]
    return node


def test_check_config_exits_non_zero_with_the_key_and_no_traceback(tmp_path: Path) -> None:
    base = _base_config()
    cases: list[tuple[str, str]] = []
    for name, where, value, key in (
        ("type", ("health", "port"), "9108", "health.port"),
        ("unknown", ("sinks", "mqtt", "pasword_file"), "x", "sinks.mqtt.pasword_file"),
        ("range", ("engine", "min_signals"), 99, "engine.min_signals"),
    ):
        raw = copy.deepcopy(base)
        _put(raw, where, value)
        path = tmp_path / f"{name}.toml"
        path.write_text(_to_toml(raw))
        cases.append((str(path), key))
    broken = tmp_path / "broken.toml"
    broken.write_text(
        EXAMPLE_CONFIG.read_text().replace('provider = "alpaca"', 'provider = "alpaca')
    )
    cases.append((str(broken), "invalid TOML"))
    cli = Path(sys.executable).with_name("iwm-alerts")
    procs = [
        subprocess.Popen(
            [str(cli), "check-config", "--config", path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path, _ in cases
    ]
    for proc, (file, needle) in zip(procs, cases, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (out, err)
        assert f"{file}: {needle}" in err and "Traceback" not in err + out, err
        assert err.startswith("iwm-alerts: config error: ") and err.count("\n") == 1, err
