"""Config: one TOML file into frozen typed sections; every error names the file and the key."""

from __future__ import annotations

import io
import re
import typing
from collections.abc import Mapping
from pathlib import Path

import msgspec
import pytest

from daemon.config import (
    FRED_DGS2_URL,
    MIB,
    Config,
    EngineSettings,
    FeedSettings,
    HealthSettings,
    JsonlSinkSettings,
    LogSettings,
    MqttSinkSettings,
    RatesSettings,
    RulesSettings,
    SinksSettings,
    StateSettings,
    TelegramSinkSettings,
    check_config_main,
    load_config,
)
from daemon.config_errors import ConfigError
from signals.engine import EngineConfig, Links
from signals.score import SIGNALS

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "config.example.toml"
MINIMAL = '[feed]\nprovider = "alpaca"\n'
CANARY = "Zq8canary41secretvalue"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def _load(tmp_path: Path, text: str) -> Config:
    return load_config(_write(tmp_path, text))


def _error(tmp_path: Path, text: str) -> ConfigError:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    return info.value


# -- good files -------------------------------------------------------------------


def test_minimal_file_gets_every_default(tmp_path: Path) -> None:
    config = _load(tmp_path, MINIMAL)
    assert config == Config(feed=FeedSettings(provider="alpaca"))
    feed = config.feed
    assert feed.symbols == ("IWM", "SPY", "QQQ")
    assert (feed.url, feed.rest_url, feed.alpaca_feed, feed.replay_files) == (None, None, "iex", ())
    assert (feed.replay_speed, feed.max_frame_bytes, feed.warmup_days) == (1.0, MIB, 120)
    assert (feed.silence_timeout_s, feed.backoff_initial_s, feed.backoff_max_s) == (90, 1, 60)
    assert config.engine == EngineSettings()
    assert (config.engine.benchmark, config.engine.comparator) == ("SPY", "QQQ")
    assert (config.engine.weights, config.engine.min_signals) == ({}, 5)
    assert config.rules == RulesSettings(file=None)
    assert config.sinks == SinksSettings()
    assert config.sinks.enabled() == ["console"]
    assert (config.sinks.jsonl, config.sinks.mqtt, config.sinks.telegram) == (None, None, None)
    assert config.state == StateSettings(dir=Path("./state"))
    assert config.health == HealthSettings(enabled=True, host="127.0.0.1", port=9108)
    assert config.rates == RatesSettings(source="none", url=FRED_DGS2_URL, proxy_symbol="SHY")
    assert config.log == LogSettings(level="info", format="auto")
    assert config.log.json is None


def test_sections_are_frozen(tmp_path: Path) -> None:
    config = _load(tmp_path, MINIMAL)
    with pytest.raises(AttributeError):
        config.feed.provider = "finnhub"  # type: ignore[misc]


def test_example_covers_every_key_and_loads_to_the_defaults() -> None:
    config = load_config(EXAMPLE)
    # The example spells each weight out, which weighs the same as leaving them out.
    assert config.engine == EngineSettings(weights=dict.fromkeys(SIGNALS, 1.0))
    assert config == Config(feed=FeedSettings(provider="alpaca"), engine=config.engine)
    text = EXAMPLE.read_text()
    for name in _leaf_keys(Config):
        assert re.search(rf"^(# )?{name} = ", text, re.MULTILINE), f"{name} missing from example"
    assert "[engine.weights]" in text and "# [engine.symbols.TNA]" in text


def _leaf_keys(struct: type[msgspec.Struct]) -> set[str]:
    """Every key of every section, through optional sections; map-valued keys are tables."""
    names = set()
    for field in msgspec.structs.fields(struct):
        arms = typing.get_args(field.type) or (field.type,)
        nested = [a for a in arms if isinstance(a, type) and issubclass(a, msgspec.Struct)]
        if nested:
            names |= _leaf_keys(nested[0])
        elif typing.get_origin(field.type) is not Mapping:
            names.add(field.name)
    return names


def test_example_commented_sink_sections_load(tmp_path: Path) -> None:
    """Uncommenting the sink blocks (minus files that must exist) gives their defaults."""
    lines, in_sinks = [], False
    for line in EXAMPLE.read_text().splitlines():
        in_sinks = (in_sinks or line.startswith(("[sinks.", "# [sinks."))) and line != "[state]"
        m = re.fullmatch(r"# (\[sinks\.\w+\]|[a-z_]+ = .*)", line)
        uncomment = in_sinks and m and not re.match(r"(ca|cert|key)_file", m[1])
        lines.append(m[1] if uncomment and m else line)
    config = _load(tmp_path, "\n".join(lines))
    assert config.sinks.telegram == TelegramSinkSettings()
    mqtt = config.sinks.mqtt
    assert mqtt == MqttSinkSettings(url="mqtt://127.0.0.1:1883", username="iwm-alerts")
    assert (mqtt.host, mqtt.port, mqtt.tls) == ("127.0.0.1", 1883, False)
    assert config.sinks.jsonl == JsonlSinkSettings(path=Path("alerts.jsonl"))
    assert config.sinks.enabled() == ["console", "jsonl", "mqtt", "telegram"]


def test_full_file(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text("")
    (tmp_path / "a.csv").write_text("")
    for name in ("ca.pem", "c.pem", "c.key"):
        (tmp_path / name).write_text("")
    config = _load(
        tmp_path,
        f"""
[feed]
provider = "replay"
url = "ws://127.0.0.1:8765/stream"
rest_url = "http://127.0.0.1:8766"
symbols = ["IWM", "SPY", "QQQ", "TNA", "BRK.B", "SHY"]
replay_files = ["{tmp_path}/a.csv"]
replay_speed = 60
backoff_max_s = 30
warmup_days = 0

[engine]
min_signals = 4
[engine.symbols.TNA]
benchmark = "IWM"
[engine.symbols."BRK.B"]
comparator = ""
[engine.weights]
rates = 0
fib = 0.5

[rules]
file = "{tmp_path}/rules.toml"

[sinks.console]
enabled = false
[sinks.jsonl]
path = "alerts.jsonl"
[sinks.mqtt]
url = "mqtts://broker.example:8884"
base_topic = "home/iwm"
username = "ha"
ca_file = "{tmp_path}/ca.pem"
cert_file = "{tmp_path}/c.pem"
key_file = "{tmp_path}/c.key"
qos = 2
[sinks.telegram]
api_base_url = "http://127.0.0.1:8081/bot"
access = "allowlist"
admin_user_ids = [12345]

[state]
dir = "/var/lib/iwm-alerts"
[health]
enabled = false
port = 0
[rates]
source = "proxy"
[log]
level = "debug"
format = "json"
""",
    )
    assert config.feed.replay_speed == 60.0
    assert config.feed.replay_files == (tmp_path / "a.csv",)
    assert config.rules.file == tmp_path / "rules.toml"
    assert config.sinks.enabled() == ["jsonl", "mqtt", "telegram"]
    mqtt = config.sinks.mqtt
    assert mqtt is not None and (mqtt.host, mqtt.port, mqtt.tls, mqtt.qos) == (
        "broker.example",
        8884,
        True,
        2,
    )
    assert config.state.dir == Path("/var/lib/iwm-alerts")
    assert config.log.json is True
    assert config.engine.links_for("TNA") == ("IWM", "QQQ")
    assert config.engine.links_for("BRK.B") == ("SPY", "")
    assert config.engine.links_for("IWM") == ("SPY", "QQQ")


def test_engine_config(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        MINIMAL
        + """symbols = ["IWM", "SPY", "QQQ", "TNA"]
[engine]
comparator = ""
min_signals = 4
[engine.symbols.TNA]
benchmark = "IWM"
[engine.weights]
rsi = 2
""",
    )
    daily = config.engine.engine_config(intraday=False)
    assert daily == EngineConfig(
        intraday=False,
        links=Links("SPY", None),
        symbol_links={"TNA": Links("IWM", None)},
        weights={"rsi": 2.0},
        min_signals=4,
    )
    assert config.engine.engine_config(intraday=True).intraday
    assert daily.links_for("TNA") == Links("IWM", None)
    assert daily.links_for("IWM") == Links("SPY", None)


def test_check_config_main_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPACA_API_KEY", CANARY)
    monkeypatch.delenv("ALPACA_API_SECRET", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = _write(tmp_path, MINIMAL)
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(path, out=out, err=err) == 0
    text = out.getvalue()
    assert text.startswith(f"{path}: OK")
    assert "feed: alpaca (iex), symbols IWM, SPY, QQQ" in text
    assert "ALPACA_API_KEY (set)" in text
    assert "ALPACA_API_SECRET (not set here)" in text
    assert CANARY not in text
    assert err.getvalue() == ""


def test_check_config_main_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "TELEGRAM_BOT_TOKEN").mkdir()  # unreadable as a file
    path = _write(
        tmp_path,
        """[feed]
provider = "replay"
symbols = ["IWM", "SPY", "QQQ", "SHY"]
[engine]
comparator = ""
[sinks.console]
enabled = false
[sinks.mqtt]
url = "mqtts://broker.lan"
[sinks.telegram]
[health]
enabled = false
[rates]
source = "proxy"
""",
    )
    out = io.StringIO()
    assert check_config_main(path, out=out, err=io.StringIO()) == 0
    assert out.getvalue().splitlines()[1:] == [
        "  feed: replay, symbols IWM, SPY, QQQ, SHY",
        "  engine: benchmark SPY, comparator none, min_signals 5",
        "  rules: built-in defaults",
        "  sinks: mqtt (broker.lan:8883, TLS), telegram",
        "  rates: proxy (SHY)",
        "  state: state",
        "  health: off",
        "  secrets: TELEGRAM_BOT_TOKEN (unreadable)",
    ]


def test_check_config_main_bad(tmp_path: Path) -> None:
    path = _write(tmp_path, '[feed]\nprovider = "nope"\n')
    out, err = io.StringIO(), io.StringIO()
    assert check_config_main(path, out=out, err=err) == 2
    assert out.getvalue() == ""
    assert err.getvalue() == f"iwm-alerts: config error: {path}: feed.provider: " + (
        'expected one of "alpaca", "massive", "finnhub", "replay"\n'
    )


def test_check_config_main_defaults_to_sys_streams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_config_main(tmp_path / "missing.toml") == 2
    assert "missing.toml: cannot read" in capsys.readouterr().err


# -- errors name the key and the file ----------------------------------------------


def test_missing_file_and_missing_feed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read"):
        load_config(tmp_path / "nope.toml")
    err = _error(tmp_path, "")
    assert (err.key, err.detail) == ("feed", "required but missing")
    assert _error(tmp_path, "[feed]\n").key == "feed.provider"


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    err = _error(tmp_path, f'[feed]\nprovider = "alpaca"\nsymbols = [IWM {CANARY}]\n')
    assert err.key is None
    assert "invalid TOML" in str(err) and "line 3" in str(err)
    assert CANARY not in str(err)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ('timezone = "UTC"\n' + MINIMAL, "timezone", "unknown key; expected one of feed, engine"),
        (MINIMAL + "provder = 1\n", "feed.provder", "unknown key (did you mean provider?)"),
        (MINIMAL + "[sinks.mqtt]\nurl = 'mqtt://h'\nbase = 'x'\n", "sinks.mqtt.base", "unknown"),
        (
            MINIMAL + "[engine.symbols.SPY]\nbenchmrk = 'Q'\n",
            "engine.symbols.SPY.benchmrk",
            "unknown key (did",
        ),
        (MINIMAL + "[sinks.kafka]\n", "sinks.kafka", "unknown key"),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, key: str, detail: str) -> None:
    err = _error(tmp_path, text)
    assert err.key == key
    assert err.detail.startswith(detail)
    assert f": {key}: " in str(err)


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ('max_frame_bytes = "big"', "feed.max_frame_bytes", "expected an integer, got a string"),
        ('replay_speed = "fast"', "feed.replay_speed", "expected a number, got a string"),
        ("symbols = 3", "feed.symbols", "expected a list, got an integer"),
        ("symbols = ['IWM', 3]", "feed.symbols[1]", "expected a string, got an integer"),
        ("warmup_days = 1.5", "feed.warmup_days", "expected an integer, got a number"),
        ("url = 5", "feed.url", "expected a string, got an integer"),
        ("replay_files = 'a.csv'", "feed.replay_files", "expected a list, got a string"),
        ("replay_files = [1]", "feed.replay_files[0]", "expected a non-empty path string"),
        ("[health]\nport = true", "health.port", "expected an integer, got a boolean"),
        ("[health]\nenabled = 'yes'", "health.enabled", "expected a boolean, got a string"),
        ("[sinks]\nconsole = true", "sinks.console", "expected a table, got a boolean"),
        ("[engine.weights]\nrsi = 'high'", "engine.weights.rsi", "expected a number, got a string"),
        ("[engine.symbols]\nSPY = 1", "engine.symbols.SPY", "expected a table, got an integer"),
        (
            "[sinks.telegram]\nattach_chart = 'yes'",
            "sinks.telegram.attach_chart",
            "expected a boolean, got a string",
        ),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, key: str, detail: str) -> None:
    err = _error(tmp_path, MINIMAL + text + "\n")
    assert (err.key, err.detail) == (key, detail)


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ("replay_speed = 0", "feed.replay_speed", "expected a number > 0.0"),
        ("max_frame_bytes = -1", "feed.max_frame_bytes", "expected an integer >= 1"),
        ("warmup_days = -1", "feed.warmup_days", "expected an integer >= 0"),
        ("silence_timeout_s = 0", "feed.silence_timeout_s", "expected a number > 0.0"),
        ("backoff_initial_s = 10\nbackoff_max_s = 5", "feed.backoff_max_s", "must be >= back"),
        ("[health]\nport = 70000", "health.port", "expected an integer <= 65535"),
        ("[engine]\nmin_signals = 9", "engine.min_signals", "expected an integer <= 8"),
        ("[engine.weights]\nrsi = -1", "engine.weights.rsi", "expected a number >= 0.0"),
        ("[engine.weights]\nrsi = inf", "engine.weights.rsi", "expected a finite number"),
        ("[engine.weights]\nvix = 1", "engine.weights.vix", "unknown signal; expected one of rsi"),
        ("[sinks.telegram]\nrate_per_chat_s = 0", "sinks.telegram.rate_per_chat_s", "expected"),
        ("[sinks.telegram]\nadmin_user_ids = [-5]", "sinks.telegram.admin_user_ids[0]", "expec"),
        ("[sinks.telegram]\naccess = 'allowlist'", "sinks.telegram.allowed_user_ids", "access"),
        ("[health]\nhost = ''", "health.host", "expected a host name or IP address"),
        ("[sinks.jsonl]\npath = ''", "sinks.jsonl.path", "expected a non-empty path string"),
        ("[sinks.mqtt]\nqos = 1", "sinks.mqtt.url", "required but missing"),
        ("[sinks.mqtt]\nurl = 'mqtt://h'\nbase_topic = 'a/#'", "sinks.mqtt.base_topic", "exp"),
        (
            "[sinks.mqtt]\nurl = 'mqtt://h'\ndiscovery_prefix = '/ha'",
            "sinks.mqtt.discovery_pre",
            "",
        ),
        ("[sinks.mqtt]\nurl = 'mqtt://h'\nclient_id = ''", "sinks.mqtt.client_id", "expected"),
        ("[sinks.mqtt]\nurl = 'mqtt://h'\nca_file = 'ca.pem'", "sinks.mqtt.ca_file", "TLS files"),
        ("[sinks.mqtt]\nurl = 'mqtts://h'\nkey_file = 'k'", "sinks.mqtt.key_file", "a client key"),
    ],
)
def test_out_of_range(tmp_path: Path, text: str, key: str, detail: str) -> None:
    err = _error(tmp_path, MINIMAL + text + "\n")
    assert err.key is not None and err.key.startswith(key)
    assert err.detail.startswith(detail)


@pytest.mark.parametrize(
    ("text", "key", "choices"),
    [
        ('[feed]\nprovider = "polygon"', "feed.provider", '"alpaca", "massive", "finnhub"'),
        (MINIMAL + 'alpaca_feed = "pro"', "feed.alpaca_feed", '"iex", "sip", "test"'),
        (MINIMAL + "[sinks.mqtt]\nurl = 'mqtt://h'\nqos = 3", "sinks.mqtt.qos", "0, 1, 2"),
        (MINIMAL + "[sinks.telegram]\naccess = 'closed'", "sinks.telegram.access", '"open"'),
        (MINIMAL + "[rates]\nsource = 'ecb'", "rates.source", '"fred", "proxy", "none"'),
        (MINIMAL + "[log]\nlevel = 'trace'", "log.level", '"debug", "info"'),
        (MINIMAL + "[log]\nformat = 'xml'", "log.format", '"auto", "json", "console"'),
    ],
)
def test_bad_enum_values(tmp_path: Path, text: str, key: str, choices: str) -> None:
    err = _error(tmp_path, text + "\n")
    assert err.key == key
    assert err.detail.startswith("expected one of ") and choices in err.detail


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("symbols = ['IWM', 'spy']", "feed.symbols[1]"),
        ("symbols = ['IWM', 'TOOLONGSYMBOL']", "feed.symbols[1]"),
        ("symbols = ['IWM', 'I W M']", "feed.symbols[1]"),
        ("symbols = ['IWM', '$SPX']", "feed.symbols[1]"),
        ("symbols = []", "feed.symbols"),
        ("symbols = ['IWM', 'SPY', 'IWM']", "feed.symbols[2]"),
        ("[engine]\nbenchmark = 'spy'", "engine.benchmark"),
        ("[engine.symbols.iwm]\nbenchmark = 'SPY'", "engine.symbols.iwm"),
        ("[engine.symbols.IWM]\ncomparator = 'q q'", "engine.symbols.IWM.comparator"),
        ("[rates]\nproxy_symbol = 'shy'", "rates.proxy_symbol"),
    ],
)
def test_bad_symbols(tmp_path: Path, text: str, key: str) -> None:
    err = _error(tmp_path, MINIMAL + text + "\n")
    assert err.key == key


def test_links_and_proxy_must_be_tracked(tmp_path: Path) -> None:
    err = _error(tmp_path, MINIMAL + "[engine]\nbenchmark = 'DIA'\n")
    assert (err.key, err.detail.split(":")[0]) == ("engine.benchmark", "DIA is not in feed.symbols")
    assert _error(tmp_path, MINIMAL + "[engine.symbols.TNA]\n").key == "engine.symbols.TNA"
    err = _error(tmp_path, MINIMAL + "[engine.symbols.IWM]\ncomparator = 'DIA'\n")
    assert err.key == "engine.symbols.IWM.comparator"
    assert _error(tmp_path, MINIMAL + "[rates]\nsource = 'proxy'\n").key == "rates.proxy_symbol"
    symbols = MINIMAL.replace('"alpaca"\n', '"alpaca"\nsymbols = ["IWM"]\n')
    assert _load(tmp_path, symbols + "[engine]\nbenchmark = ''\ncomparator = ''\n")


def test_min_signals_must_be_reachable(tmp_path: Path) -> None:
    # rates none, no comparator, atr weighted 0: only 5 left for everyone...
    base = MINIMAL + "[engine]\ncomparator = ''\n[engine.weights]\natr = 0\n"
    assert _load(tmp_path, base).engine.min_signals == 5
    # ...and 4 for a symbol whose benchmark is itself.
    err = _error(tmp_path, base + "[engine.symbols.SPY]\n")
    assert (err.key, "for SPY" in err.detail) == ("engine.min_signals", True)
    err = _error(tmp_path, base.replace("atr = 0", "atr = 0\nrsi = 0"))
    assert err.key == "engine.min_signals" and "only 4 signals" in err.detail


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        (
            "url = 'https://stream.example'",
            "feed.url",
            "expected a URL starting with ws:// or wss://",
        ),
        (
            "url = 'stream.example'",
            "feed.url",
            "expected a URL starting with ws:// or wss://, got no",
        ),
        ("url = 'wss://'", "feed.url", "expected a URL with a host"),
        ("url = 'wss://a b'", "feed.url", "expected a URL with a host and no spaces"),
        ("url = 'wss://h:99999'", "feed.url", "the URL's port is not a number"),
        ("url = 'wss://[::1'", "feed.url", "not a valid URL"),
        ("rest_url = 'ftp://data.example'", "feed.rest_url", "expected a URL starting with http"),
        (
            "[sinks.mqtt]\nurl = 'tcp://broker'",
            "sinks.mqtt.url",
            "expected a URL starting with mqtt",
        ),
        ("[sinks.mqtt]\nurl = 'mqtt://u@broker'", "sinks.mqtt.url", "no user in the URL"),
        ("[sinks.mqtt]\nurl = 'mqtt://broker/x'", "sinks.mqtt.url", "expected mqtt[s]://host"),
        ("[sinks.telegram]\napi_base_url = 'ws://t'", "sinks.telegram.api_base_url", "expected"),
        ("[rates]\nurl = 'file:///tmp/x.csv'", "rates.url", "expected a URL starting with https"),
    ],
)
def test_bad_urls(tmp_path: Path, text: str, key: str, detail: str) -> None:
    err = _error(tmp_path, MINIMAL + text + "\n")
    assert (err.key, err.detail[: len(detail)]) == (key, detail)


def test_input_files_must_exist(tmp_path: Path) -> None:
    err = _error(tmp_path, MINIMAL + "[rules]\nfile = 'nope.toml'\n")
    assert (err.key, err.detail) == ("rules.file", "no such file: nope.toml")
    err = _error(tmp_path, MINIMAL + "replay_files = ['nope.csv']\n")
    assert err.key == "feed.replay_files[0]"
    err = _error(tmp_path, MINIMAL + "[sinks.mqtt]\nurl = 'mqtts://h'\nca_file = 'ca.pem'\n")
    assert err.key == "sinks.mqtt.ca_file"


# -- secrets are refused, never echoed ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        (MINIMAL + f'api_key = "{CANARY}"', "feed.api_key", "ALPACA_API_KEY / ALPACA_API_SECRET"),
        (MINIMAL + f'secret = "{CANARY}"', "feed.secret", "ALPACA_API_KEY"),
        (f'[feed]\nprovider = "finnhub"\ntoken = "{CANARY}"', "feed.token", "FINNHUB_API_KEY"),
        (f'[feed]\nprovider = "massive"\napiKey = "{CANARY}"', "feed.apiKey", "MASSIVE_API_KEY"),
        (f'ALPACA_API_KEY = "{CANARY}"\n' + MINIMAL, "ALPACA_API_KEY", "ALPACA_API_KEY"),
        (MINIMAL + f"[sinks.telegram]\ntoken = '{CANARY}'", "sinks.telegram.token", "TELEGRAM_BOT"),
        (MINIMAL + f"[sinks.telegram]\nbot-token = '{CANARY}'", "sinks.telegram.bot-token", "TELE"),
        (MINIMAL + f"[sinks.mqtt]\npassword = '{CANARY}'", "sinks.mqtt.password", "MQTT_PASSWORD"),
        (MINIMAL + f"[sinks.mqtt]\nurl = 'mqtt://u:{CANARY}@h'", "sinks.mqtt.url", "MQTT_PASSWORD"),
        (MINIMAL + f"[health]\npasswd = '{CANARY}'", "health.passwd", "TELEGRAM_BOT_TOKEN"),
        (MINIMAL + f"[engine.symbols.SPY]\nkey = '{CANARY}'", "engine.symbols.SPY.key", "ALPACA"),
        (
            MINIMAL
            + f"[sinks.telegram]\napi_base_url = 'https://t.example/bot123456789:{CANARY * 2}'",
            "sinks.telegram.api_base_url",
            "TELEGRAM_BOT_TOKEN",
        ),
        (
            f'[feed]\nprovider = "finnhub"\nurl = "wss://ws.finnhub.io?token={CANARY}"',
            "feed.url",
            "FINNHUB_API_KEY",
        ),
        (
            MINIMAL + f"rest_url = 'https://api.example/v2?apiKey={CANARY}'",
            "feed.rest_url",
            "ALPACA_API_KEY",
        ),
    ],
)
def test_secrets_in_the_file_are_refused_without_echo(
    tmp_path: Path, text: str, key: str, hint: str
) -> None:
    err = _error(tmp_path, text + "\n")
    assert err.key == key
    assert "secrets are not read from the config file" in err.detail
    assert hint in err.detail and "systemd credential" in err.detail
    assert CANARY not in str(err) and CANARY not in repr(err)
    assert err.__cause__ is None or CANARY not in str(err.__cause__)


def test_private_key_in_the_file_is_refused_without_echo(tmp_path: Path) -> None:
    pem = f"-----BEGIN PRIVATE KEY-----\n{CANARY}\n-----END PRIVATE KEY-----"
    err = _error(tmp_path, MINIMAL + f'[sinks.mqtt]\nurl = "mqtts://h"\nkey_file = """{pem}"""\n')
    assert err.key == "sinks.mqtt.key_file"
    assert "private key" in err.detail and "give its path" in err.detail
    assert CANARY not in str(err)


def test_long_bad_values_are_not_echoed(tmp_path: Path) -> None:
    """A key pasted into the wrong place is described, not printed."""
    err = _error(tmp_path, MINIMAL + f"symbols = ['{CANARY.upper()}']\n")
    assert err.key == "feed.symbols[0]"
    assert CANARY.upper() not in str(err)
    assert "22-character string" in err.detail


def test_no_real_key_looks_like_a_secret(tmp_path: Path) -> None:
    """Real keys (key_file, access, ...) pass the secret filter and fail later, as unknown keys."""
    text = "\n".join(f"{name} = 1" for name in sorted(_leaf_keys(Config) - {"provider"}))
    err = _error(tmp_path, MINIMAL + text)
    assert "secrets are not read" not in err.detail
