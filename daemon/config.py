"""The daemon's configuration: one TOML file, decoded once into frozen, typed sections.

`load_config` reads the file, refuses anything that looks like a secret
(secrets come from the environment or systemd credentials, see
`daemon.secrets`), decodes it with msgspec (unknown keys rejected, types
checked) and runs the semantic checks each section declares in
`__post_init__`. Every failure is one `ConfigError` whose message names the
file and the dotted key (`feed.provider`, `engine.symbols.TNA.benchmark`,
`feed.symbols[2]`).

Relative paths are kept as written: they resolve against the daemon's working
directory (systemd `WorkingDirectory=`), not the config file's directory.
Each component receives its own section (`config.feed`, `config.sinks.mqtt`...).
"""

from __future__ import annotations

import json
import math
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO
from urllib.parse import parse_qsl, urlsplit

import msgspec
from msgspec import Meta

from daemon.config_errors import ConfigError, translate
from daemon.config_errors import Invalid as _Invalid
from daemon.config_errors import dotted as _dotted
from daemon.feeds.registry import FEEDS
from daemon.secrets import (
    MQTT_PASSWORD,
    PROVIDER_SECRETS,
    SECRET_NAMES,
    TELEGRAM_BOT_TOKEN,
    TELEGRAM_TOKEN_SHAPE,
    SecretError,
    load_secret,
    required_secrets,
)
from signals.engine import EngineConfig, Links
from signals.score import MIN_SIGNALS, SIGNALS

SYMBOL = re.compile(r"[A-Z0-9.-]{1,10}")
DEFAULT_SYMBOLS: tuple[str, ...] = ("IWM", "SPY", "QQQ")
FRED_DGS2_URL = "https://fred.stlouisfed.org/graph/fredgraph.csv?id=DGS2"
MIB = 1 << 20

# Key names that can only mean a secret. Matched on the lower-cased key with
# `-` read as `_`, so `ALPACA_API_KEY = ...` pasted from an env file is caught.
_SECRET_KEY = re.compile(
    r"secret|token|passw(or)?d|passphrase|api_?key|access_?key|private_?key|credential"
    r"|^key$|^pass$|^pwd$"
)
_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")

PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]


def _show(value: str) -> str:
    """A value for an error message; long strings are described, not echoed (could be a key)."""
    return repr(value) if len(value) <= 12 else f"a {len(value)}-character string"


def _check_symbol(value: str, *key: str | int) -> None:
    if not SYMBOL.fullmatch(value):
        raise _Invalid(*key, detail=f"{_show(value)} is not a symbol (1-10 of A-Z 0-9 . -)")


def _check_url(url: str, schemes: tuple[str, ...], *key: str) -> None:
    expected = " or ".join(f"{s}://" for s in schemes)
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed [IPv6] host
        raise _Invalid(*key, detail="not a valid URL") from None
    if parts.scheme not in schemes:
        got = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise _Invalid(*key, detail=f"expected a URL starting with {expected}, got {got}")
    if not parts.hostname or any(c.isspace() for c in url):
        raise _Invalid(*key, detail="expected a URL with a host and no spaces")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise _Invalid(*key, detail="the URL's port is not a number in 0-65535") from None


def _check_topic(value: str, *key: str) -> None:
    # The base of every topic we publish: MQTT forbids wildcards there.
    if not value or value.startswith("/") or value.endswith("/") or any(c in value for c in "+#\0"):
        raise _Invalid(*key, detail="expected a topic without +, #, or a leading/trailing /")


def _link(value: str) -> str | None:
    return value or None


class FeedSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[feed]`: where bars come from, which symbols, and the reconnect policy."""

    provider: str
    """A name in the feed registry (`daemon.feeds.registry.FEEDS`)."""
    url: str | None = None
    rest_url: str | None = None
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    alpaca_feed: Literal["iex", "sip", "test"] = "iex"
    replay_files: tuple[Path, ...] = ()
    replay_speed: PositiveFloat = 1.0
    max_frame_bytes: PositiveInt = MIB
    silence_timeout_s: PositiveFloat = 90.0
    backoff_initial_s: PositiveFloat = 1.0
    backoff_max_s: PositiveFloat = 60.0
    warmup_days: Annotated[int, Meta(ge=0)] = 120

    def __post_init__(self) -> None:
        if self.provider not in FEEDS:
            choices = ", ".join(json.dumps(name) for name in FEEDS)
            raise _Invalid("provider", detail=f"expected one of {choices}")
        if self.url is not None:
            _check_url(self.url, ("ws", "wss"), "url")
        if self.rest_url is not None:
            _check_url(self.rest_url, ("http", "https"), "rest_url")
        if not self.symbols:
            raise _Invalid("symbols", detail="expected at least one symbol")
        for i, symbol in enumerate(self.symbols):
            _check_symbol(symbol, "symbols", i)
            if symbol in self.symbols[:i]:
                raise _Invalid("symbols", i, detail=f"{symbol} is listed twice")
        if self.backoff_max_s < self.backoff_initial_s:
            raise _Invalid("backoff_max_s", detail="must be >= backoff_initial_s")


class SymbolLinks(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[engine.symbols.SYM]`: this symbol's benchmark / comparator; unset inherits, "" drops."""

    benchmark: str | None = None
    comparator: str | None = None

    def __post_init__(self) -> None:
        for name in ("benchmark", "comparator"):
            value = getattr(self, name)
            if value:
                _check_symbol(value, name)


class EngineSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[engine]`: score links and weights. `benchmark = ""` drops the rs signal."""

    benchmark: str = "SPY"
    comparator: str = "QQQ"
    symbols: Mapping[str, SymbolLinks] = {}
    weights: Mapping[str, Annotated[float, Meta(ge=0)]] = {}
    min_signals: Annotated[int, Meta(ge=1, le=len(SIGNALS))] = MIN_SIGNALS

    def __post_init__(self) -> None:
        for name in ("benchmark", "comparator"):
            value = getattr(self, name)
            if value:
                _check_symbol(value, name)
        for symbol in self.symbols:
            _check_symbol(symbol, "symbols", symbol)
        for signal, weight in self.weights.items():
            if signal not in SIGNALS:
                raise _Invalid(
                    "weights",
                    signal,
                    detail=f"unknown signal; expected one of {', '.join(SIGNALS)}",
                )
            if not math.isfinite(weight):
                raise _Invalid("weights", signal, detail="expected a finite number")

    def links_for(self, symbol: str) -> tuple[str, str]:
        """The effective (benchmark, comparator) of `symbol`; "" means none."""
        own = self.symbols.get(symbol, SymbolLinks())
        return (
            self.benchmark if own.benchmark is None else own.benchmark,
            self.comparator if own.comparator is None else own.comparator,
        )

    def engine_config(self, intraday: bool) -> EngineConfig:
        """The signals engine's config for the daily (`intraday=False`) or 1-minute timeframe."""
        symbol_links = {}
        for symbol in self.symbols:
            benchmark, comparator = self.links_for(symbol)
            symbol_links[symbol] = Links(_link(benchmark), _link(comparator))
        return EngineConfig(
            intraday=intraday,
            links=Links(_link(self.benchmark), _link(self.comparator)),
            symbol_links=symbol_links,
            weights=dict(self.weights),
            min_signals=self.min_signals,
        )


class RulesSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[rules]`: a rules TOML file, or None for the built-in default rules."""

    file: Path | None = None


class ConsoleSinkSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[sinks.console]`: alerts printed to stdout."""

    enabled: bool = True


class JsonlSinkSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[sinks.jsonl]`: alerts appended to a JSON-lines file."""

    path: Path


class MqttSinkSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[sinks.mqtt]`: an MQTT broker, with Home Assistant discovery. Password: MQTT_PASSWORD."""

    url: str
    base_topic: str = "iwm-alerts"
    discovery_prefix: str = "homeassistant"
    username: str | None = None
    client_id: str = "iwm-alerts"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    qos: Literal[0, 1, 2] = 2
    protocol: Literal["3.1.1", "5"] = "3.1.1"

    def __post_init__(self) -> None:
        _check_url(self.url, ("mqtt", "mqtts"), "url")
        parts = urlsplit(self.url)
        if parts.username is not None:
            raise _Invalid(
                "url",
                detail="no user in the URL: set sinks.mqtt.username (password: MQTT_PASSWORD)",
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise _Invalid("url", detail="expected mqtt[s]://host[:port] with no path or query")
        _check_topic(self.base_topic, "base_topic")
        _check_topic(self.discovery_prefix, "discovery_prefix")
        if not self.client_id:
            raise _Invalid("client_id", detail="expected a non-empty client id")
        if self.username == "":
            raise _Invalid("username", detail="expected a non-empty user name (or leave it out)")
        for name in ("ca_file", "cert_file", "key_file"):
            if getattr(self, name) is not None and not self.tls:
                raise _Invalid(name, detail="TLS files need an mqtts:// url")
        if self.key_file is not None and self.cert_file is None:
            raise _Invalid("key_file", detail="a client key needs cert_file too")

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (`mqtts://`)."""
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        """The broker's host name."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The broker's port: as given, else 8883 with TLS and 1883 without."""
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


class TelegramSinkSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[sinks.telegram]`: the bot. Token: TELEGRAM_BOT_TOKEN.

    `access = "open"` lets anyone /start; `"allowlist"` only `allowed_user_ids`
    and `admin_user_ids`. Admin commands always need `admin_user_ids`.
    `rate_per_chat_s` is the minimum gap between two messages to one chat;
    `rate_global_per_s` the most messages per second overall. `attach_chart`
    sends each alert as the /chart picture of its symbol with the alert as
    the caption (a text message when the alert is too long for a caption).
    """

    api_base_url: str = "https://api.telegram.org/bot"
    access: Literal["open", "allowlist"] = "open"
    allowed_user_ids: tuple[int, ...] = ()
    admin_user_ids: tuple[int, ...] = ()
    rate_per_chat_s: PositiveFloat = 1.0
    rate_global_per_s: PositiveFloat = 30.0
    attach_chart: bool = False

    def __post_init__(self) -> None:
        # http is for a self-hosted Bot API server on the same machine.
        _check_url(self.api_base_url, ("https", "http"), "api_base_url")
        for name in ("allowed_user_ids", "admin_user_ids"):
            for i, user_id in enumerate(getattr(self, name)):
                if user_id <= 0:
                    raise _Invalid(name, i, detail="expected a positive Telegram user id")
        if self.access == "allowlist" and not (self.allowed_user_ids or self.admin_user_ids):
            raise _Invalid(
                "allowed_user_ids", detail='access = "allowlist" needs at least one user id'
            )


class SinksSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[sinks]`: console is on by default; jsonl, mqtt and telegram are on when present."""

    console: ConsoleSinkSettings = ConsoleSinkSettings()
    jsonl: JsonlSinkSettings | None = None
    mqtt: MqttSinkSettings | None = None
    telegram: TelegramSinkSettings | None = None

    def enabled(self) -> list[str]:
        """Names of the enabled sinks."""
        names = ["console"] if self.console.enabled else []
        names += [n for n in ("jsonl", "mqtt", "telegram") if getattr(self, n) is not None]
        return names


class StateSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[state]`: where the outbox, subscribers and snapshots live.

    `snapshot_every_s` is feed time (bar time), not wall time: live the two
    agree, while a replay snapshots as often per replayed hour as live would.
    """

    dir: Path = Path("state")
    snapshot_every_s: PositiveFloat = 900.0


class HealthSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[health]`: the `/healthz` and `/metrics` endpoint (port 0: any free port)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 9108

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() or c == "/" for c in self.host):
            raise _Invalid("host", detail="expected a host name or IP address")


class RatesSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[rates]`: the 2-year yield for the rates signal: FRED CSV, a proxy ETF, or none."""

    source: Literal["fred", "proxy", "none"] = "none"
    url: str = FRED_DGS2_URL
    proxy_symbol: str = "SHY"

    def __post_init__(self) -> None:
        _check_url(self.url, ("https", "http"), "url")
        _check_symbol(self.proxy_symbol, "proxy_symbol")


class LogSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[log]`: level and format; "auto" is JSON unless stderr is a terminal."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"

    @property
    def json(self) -> bool | None:
        """The `json` argument of `daemon.logs.configure_logging`."""
        return None if self.format == "auto" else self.format == "json"


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole file. Only `[feed]` (with `provider`) is required."""

    feed: FeedSettings
    engine: EngineSettings = EngineSettings()
    rules: RulesSettings = RulesSettings()
    sinks: SinksSettings = SinksSettings()
    state: StateSettings = StateSettings()
    health: HealthSettings = HealthSettings()
    rates: RatesSettings = RatesSettings()
    log: LogSettings = LogSettings()

    def __post_init__(self) -> None:
        # The engine needs a benchmark's bars to compute rs: it must be fed.
        tracked = set(self.feed.symbols)
        engine = self.engine
        for name in ("benchmark", "comparator"):
            value = getattr(engine, name)
            if value and value not in tracked:
                raise _Invalid(
                    "engine",
                    name,
                    detail=f'{value} is not in feed.symbols: add it there, or set "" to drop the signal',
                )
        for symbol, own in engine.symbols.items():
            if symbol not in tracked:
                raise _Invalid("engine", "symbols", symbol, detail="not in feed.symbols")
            for name in ("benchmark", "comparator"):
                value = getattr(own, name)
                if value and value not in tracked:
                    raise _Invalid(
                        "engine", "symbols", symbol, name, detail=f"{value} is not in feed.symbols"
                    )
        if self.rates.source == "proxy" and self.rates.proxy_symbol not in tracked:
            raise _Invalid(
                "rates", "proxy_symbol", detail="not in feed.symbols: the feed must carry it"
            )
        for whom in (None, *engine.symbols):
            possible = self._possible_signals(whom)
            if possible < engine.min_signals:
                whose = f" for {whom}" if whom else ""
                raise _Invalid(
                    "engine",
                    "min_signals",
                    detail=f"only {possible} signals can ever be available{whose}; "
                    "the score would stay 'warming up'",
                )

    def _possible_signals(self, symbol: str | None) -> int:
        """How many signals have a positive weight and a source, for `symbol` (None: default)."""
        if symbol is None:
            benchmark, comparator = self.engine.benchmark, self.engine.comparator
        else:
            benchmark, comparator = self.engine.links_for(symbol)
        dropped = {
            "rs": not benchmark or benchmark == symbol,
            "breadth": not comparator or comparator == symbol,
            "rates": self.rates.source == "none",
        }
        weights = self.engine.weights
        return sum(1 for s in SIGNALS if weights.get(s, 1.0) > 0 and not dropped.get(s, False))


# -- loading ---------------------------------------------------------------------


def load_config(path: Path, *, replay: bool = False) -> Config:
    """Read, check and decode the config file at `path`; `ConfigError` on any problem.

    `replay` (the `replay` command): the bars come from files, so `[feed]` is
    optional and ignored but for its `symbols`; no provider secret is needed."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not UTF-8 text") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message gives line and column, never the offending text.
        raise ConfigError(path, None, f"invalid TOML: {exc}") from exc
    _refuse_secrets(raw, (), path, raw)
    if replay:
        raw = _as_replay(raw)
    try:
        config = msgspec.convert(raw, Config, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        raise translate(exc, raw, path, Config, _decode_path) from None
    _check_files(config, path)
    return config


def _as_replay(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with `[feed]` replaced by a replay feed of the same symbols."""
    feed = raw.get("feed")
    replay: dict[str, Any] = {"provider": "replay"}
    if isinstance(feed, dict) and "symbols" in feed:
        replay["symbols"] = feed["symbols"]
    return {**raw, "feed": replay}


def _decode_path(tp: type, obj: Any) -> Any:
    if tp is Path:
        if isinstance(obj, str) and obj:
            return Path(obj)
        raise TypeError("expected a non-empty path string")
    raise NotImplementedError(f"no decoder for {tp}")


def _check_files(config: Config, file: Path) -> None:
    """Input files must exist now, not when the daemon first reaches for them."""
    files: list[tuple[tuple[str | int, ...], Path | None]] = [
        (("rules", "file"), config.rules.file),
        *((("feed", "replay_files", i), p) for i, p in enumerate(config.feed.replay_files)),
    ]
    if config.sinks.mqtt is not None:
        files += [
            (("sinks", "mqtt", name), getattr(config.sinks.mqtt, name))
            for name in ("ca_file", "cert_file", "key_file")
        ]
    for key, p in files:
        if p is not None and not p.is_file():
            raise ConfigError(file, _dotted(key), f"no such file: {p}")


def _secret_hint(key: tuple[str | int, ...], raw: Mapping[str, Any]) -> str:
    """Which variables to use instead, by where the secret was written."""
    names: tuple[str, ...] = SECRET_NAMES
    if key[:2] == ("sinks", "telegram"):
        names = (TELEGRAM_BOT_TOKEN,)
    elif key[:2] == ("sinks", "mqtt"):
        names = (MQTT_PASSWORD,)
    elif key[:1] == ("feed",):
        feed = raw.get("feed")
        provider = feed.get("provider") if isinstance(feed, dict) else None
        names = PROVIDER_SECRETS.get(provider, ()) if isinstance(provider, str) else ()
        names = names or SECRET_NAMES
    return (
        f"secrets are not read from the config file; remove it and set {' / '.join(names)} "
        "in the environment or as a systemd credential (LoadCredential=)"
    )


def _refuse_secrets(
    node: Any, key: tuple[str | int, ...], file: Path, raw: Mapping[str, Any]
) -> None:
    """Fail on a secret-looking key or value anywhere. Messages never carry the value."""
    if isinstance(node, dict):
        for name, value in node.items():
            # Keys of [engine.symbols] are ticker symbols, not setting names.
            if key != ("engine", "symbols") and _SECRET_KEY.search(name.lower().replace("-", "_")):
                raise ConfigError(file, _dotted((*key, name)), _secret_hint((*key, name), raw))
            _refuse_secrets(value, (*key, name), file, raw)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_secrets(value, (*key, i), file, raw)
    elif isinstance(node, str):
        if _PEM_PRIVATE_KEY.search(node):
            raise ConfigError(
                file,
                _dotted(key),
                "holds a private key; secrets are not read from the config file: "
                "put it in a file only the service can read and give its path",
            )
        problem = None
        if TELEGRAM_TOKEN_SHAPE.search(node):
            problem = "looks like a Telegram bot token"
        elif "://" in node:
            try:
                parts = urlsplit(node)
            except ValueError:  # not a URL after all; the section's own check reports it
                return
            if parts.password is not None:
                problem = "the URL holds a password"
            elif any(_SECRET_KEY.search(k.lower()) for k, _ in parse_qsl(parts.query)):
                problem = "the URL's query holds a key or token"
        if problem:
            raise ConfigError(file, _dotted(key), f"{problem}: {_secret_hint(key, raw)}")


# -- check-config ----------------------------------------------------------------


def summary_lines(config: Config) -> list[str]:
    """A few lines describing what the daemon would run with."""
    feed, engine, sinks = config.feed, config.engine, config.sinks
    label = FEEDS[feed.provider].label
    source = feed.provider if label is None else label(feed)
    links = f"benchmark {engine.benchmark or 'none'}, comparator {engine.comparator or 'none'}"
    overrides = f", overrides for {', '.join(engine.symbols)}" if engine.symbols else ""
    sink_names = sinks.enabled()
    if sinks.mqtt is not None:
        broker = f"{sinks.mqtt.host}:{sinks.mqtt.port}{', TLS' if sinks.mqtt.tls else ''}"
        sink_names[sink_names.index("mqtt")] = f"mqtt ({broker})"
    rates: str = config.rates.source
    if rates == "proxy":
        rates += f" ({config.rates.proxy_symbol})"
    health = f"http://{config.health.host}:{config.health.port}" if config.health.enabled else "off"
    return [
        f"feed: {source}, symbols {', '.join(feed.symbols)}",
        f"engine: {links}{overrides}, min_signals {engine.min_signals}",
        f"rules: {config.rules.file or 'built-in defaults'}",
        f"sinks: {', '.join(sink_names) or 'none'}",
        f"rates: {rates}",
        f"state: {config.state.dir}",
        f"health: {health}",
    ]


def check_config_main(path: Path, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`iwm-alerts check-config`: 0 and a summary for a good file, 2 and the error for a bad one.

    Also says which secrets the config needs and whether this environment has
    them (never their values); a missing one is not an error here, because the
    service may get it from systemd credentials this shell cannot see.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"iwm-alerts: config error: {exc}", file=err)
        return 2
    print(f"{path}: OK", file=out)
    for line in summary_lines(config):
        print(f"  {line}", file=out)
    needed = required_secrets(config)
    if needed:
        states = []
        for name in needed:
            try:
                state = "set" if load_secret(name) is not None else "not set here"
            except SecretError:
                state = "unreadable"
            states.append(f"{name} ({state})")
        print(f"  secrets: {', '.join(states)}", file=out)
    else:
        print("  secrets: none needed", file=out)
    return 0
