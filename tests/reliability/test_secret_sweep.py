"""Canary secrets: run the whole daemon with a canary for every secret it knows, then sweep
everything it wrote or said for them.

Every secret in `daemon.secrets.SECRET_NAMES` gets a recognisable canary (some
with `+`, `/` and `=`, so their URL-encoded and base64 forms differ from the
raw text). The daemon runs in-process against real local servers: the Alpaca
replay server, a real Mosquitto with password auth, the local Telegram Bot
API, the Finnhub stand-in (its stream URL carries the token in the query
string). Then the failure paths that like to print secrets: a refused feed
key, a wrong MQTT password, a Telegram 401, a refused Finnhub token, a config
that pastes secrets into URLs (in-process and through the CLI). The sweep
reads every log line (structlog JSON and the stdlib logging of httpx,
httpcore, websockets, aiomqtt and python-telegram-bot, all at DEBUG), every
exception's full traceback text, every file under the state directories (raw
bytes: SQLite pages and WAL), every MQTT message a `#` subscriber saw, every
request the Bot API server received, the health endpoint's bodies and the
CLI's output, and asserts no canary appears in any of its forms. Each source
must also be non-trivial, so the sweep can fail.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import aiomqtt
import httpx
import polars as pl
import pytest
import structlog

from daemon.app import Ingest
from daemon.config import load_config
from daemon.config_errors import ConfigError
from daemon.feeds.replay import ReplayServer, ReplaySettings, frame_from_rows
from daemon.logs import configure_logging
from daemon.secrets import SECRET_NAMES, Secrets
from daemon.service import run_daemon
from daemon.telegram.subscribers import SubscriberStore
from tests.daemon.daemon_config import write_config
from tests.daemon.feeds.finnhub_server import FinnhubServer, make_tape
from tests.daemon.minute_market import minute_market
from tests.daemon.sinks.mosquitto import Mosquitto, free_port
from tests.daemon.telegram.botapi import BotApiServer
from tests.reliability.scale import scale

pytestmark = pytest.mark.reliability

CANARIES: dict[str, str] = {
    "ALPACA_API_KEY": "PKCANARY7Q2W9E4R1T6Y",
    "ALPACA_API_SECRET": "cnrySECRETalpaca/8d7f+6g5h=4j3k2l1",
    "MASSIVE_API_KEY": "cnryMASSIVEkey0a9s8d7f6g5h4",
    "FINNHUB_API_KEY": "cnry+FINNHUB/tok=9z8y7x6w",
    "TELEGRAM_BOT_TOKEN": "987654321:AAcnryTELEGRAMtokenCANARY_0123456789ab",
    "MQTT_PASSWORD": "cnry/MQTT+pw=5t4r3e2w1q",
}
TELEGRAM_SECRET_PART = CANARIES["TELEGRAM_BOT_TOKEN"].split(":", 1)[1]
USER = 2002
MQTT_USER, WATCHER, WATCHER_PW = "iwm", "watcher", "watcher-pw-0000"
SESSIONS = scale(1, 3)

RULES = """
[[rule]]
name = "px_up"
operator = "crossing_up"
timeframe = "1m"
value = "close"
threshold = {level}
sessions = "extended"
"""


def forms(secret: str) -> set[str]:
    """The canary as text, URL-encoded both ways, and base64 at each of the three alignments."""
    out = {secret, quote(secret, safe=""), quote_plus(secret)}
    raw = secret.encode()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for shift in range(3):
            text = encode(b"x" * shift + raw).decode()
            # Drop the characters that also depend on the bytes around the secret.
            out.add(text[4 if shift else 0 : -4])
    return {f for f in out if len(f) >= 12}


ALL_FORMS: dict[str, set[str]] = {
    name: forms(value) | (forms(TELEGRAM_SECRET_PART) if name == "TELEGRAM_BOT_TOKEN" else set())
    for name, value in CANARIES.items()
}


@dataclass
class Sweep:
    """Everything collected, by source: name -> texts (bytes decoded as latin-1, so any byte
    sequence survives and ASCII canaries still match)."""

    sources: dict[str, list[str]] = field(default_factory=dict)

    def add(self, source: str, item: str | bytes) -> None:
        text = item.decode("latin-1") if isinstance(item, bytes) else item
        self.sources.setdefault(source, []).append(text)

    def add_files(self, source: str, root: Path) -> None:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                self.add(source, path.read_bytes())

    def add_exception(self, source: str, exc: BaseException) -> None:
        self.add(source, "".join(traceback.format_exception(exc)))

    def leaks(self) -> list[tuple[str, str, str]]:
        found = []
        for source, items in self.sources.items():
            for item in items:
                for name, variants in ALL_FORMS.items():
                    found += [(source, name, v) for v in variants if v in item]
        return found

    def size(self, source: str) -> int:
        return len(self.sources.get(source, []))


@pytest.fixture
def debug_logs() -> Iterator[io.StringIO]:
    """The daemon's logging at DEBUG for every logger (httpx too) into a buffer; restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    names = ("httpx", "httpcore", "websockets", "aiomqtt", "telegram", "telegram.ext")
    levels = {name: logging.getLogger(name).level for name in names}
    buffer = io.StringIO()
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def _start_logging(buffer: io.StringIO, secrets: Secrets) -> None:
    """What `iwm-alerts run` does, at DEBUG, with even httpx's request lines let through."""
    configure_logging(json=True, level="debug", secrets=secrets.all(), stream=buffer)
    structlog.configure(cache_logger_on_first_use=False)
    for name in ("httpx", "httpcore", "websockets", "aiomqtt", "telegram", "telegram.ext"):
        logging.getLogger(name).setLevel(logging.DEBUG)


def _config(tmp: Path, feed: str, extra: str = "", provider: str = "alpaca") -> Path:
    """Health on (its body is swept), debug logs, the rules the caller wrote to tmp/rules.toml."""
    return write_config(
        tmp,
        feed=feed,
        provider=provider,
        rules=tmp / "rules.toml",
        backoff_s=(0.2, 0.5),
        alerts=tmp / "state" / "alerts.jsonl",
        health=True,
        log="debug",
        extra=extra,
    )


async def _run(
    path: Path,
    until: Callable[[Ingest], bool] | None,
    during: Callable[[], Awaitable[None]] | None = None,
    timeout_s: float = 120.0,
) -> Ingest | None:
    """Run the daemon on the config at `path` until `until(ingest)` holds; a failure raises."""
    config = load_config(path)
    stop = asyncio.Event()
    ingests: list[Ingest] = []

    async def watch() -> None:
        if during is not None:
            await during()
        while until is not None and not (ingests and until(ingests[0])):
            await asyncio.sleep(0.05)
        if until is not None:
            stop.set()

    try:
        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tg:
            watcher = tg.create_task(watch())
            try:
                await run_daemon(
                    config, Secrets.load(config), stop, realtime=False, on_ingest=ingests.append
                )
            finally:
                watcher.cancel()
    except TimeoutError:
        # Say where it stood: a slow machine and a stalled feed look different here.
        ingest = ingests[0] if ingests else None
        feed = None if ingest is None or ingest.backend is None else ingest.backend.feed
        raise AssertionError(
            f"the daemon run did not finish in {timeout_s} s: ingest {ingest and ingest.stats}, "
            f"feed {feed and feed.stats}"
        ) from None
    return ingests[0] if ingests else None


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def test_no_canary_secret_leaks_anywhere(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    debug_logs: io.StringIO,
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert set(CANARIES) == set(SECRET_NAMES)  # a new secret must get a canary here
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    sweep = Sweep()
    df, _ = minute_market(n_sessions=SESSIONS)
    level = float(df.filter(pl.col("symbol") == "IWM")["close"].median())  # type: ignore[arg-type]
    last = int(df["time"].max())  # type: ignore[arg-type]
    mqtt_seen: list[aiomqtt.Message] = []
    passwords = {MQTT_USER: CANARIES["MQTT_PASSWORD"], WATCHER: WATCHER_PW}
    with Mosquitto(tmp_path / "broker", passwords=passwords) as broker:

        async def watch_mqtt(ready: asyncio.Event) -> None:
            async with aiomqtt.Client(
                "127.0.0.1", broker.port, username=WATCHER, password=WATCHER_PW, identifier="sweep"
            ) as client:
                await client.subscribe("#", qos=1)
                ready.set()
                async for message in client.messages:
                    mqtt_seen.append(message)

        async with asyncio.TaskGroup() as tg:
            ready = asyncio.Event()
            watcher = tg.create_task(watch_mqtt(ready))
            await asyncio.wait_for(ready.wait(), 10)
            await _happy_run(tmp_path / "happy", broker.port, df, level, last, sweep, debug_logs)
            await _failure_runs(tmp_path, broker.port, sweep, debug_logs)
            await asyncio.sleep(0.3)
            watcher.cancel()
    for message in mqtt_seen:
        payload = message.payload
        body = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
        sweep.add("mqtt", str(message.topic).encode() + b" " + bytes(body))
    for state in sorted(tmp_path.rglob("state")):
        sweep.add_files("state", state)
    sweep.add_files("broker", tmp_path / "broker")
    _cli_runs(tmp_path / "cli", sweep)
    sweep.sources["log"] = debug_logs.getvalue().splitlines()
    out, err = capfd.readouterr()
    sweep.add("stdio", out + err)

    leaks = sweep.leaks()
    assert leaks == [], leaks[:5]
    log = debug_logs.getvalue()
    sizes = {name: sweep.size(name) for name in sweep.sources}
    print(f"\nsweep sources: {sizes}, log bytes {len(log)}")
    # The sweep saw real traffic and the faults really happened.
    assert sweep.size("log") > 500 and sweep.size("mqtt") > 20 and sweep.size("state") >= 4
    assert sweep.size("telegram") >= 3 and sweep.size("health") == 2
    assert sweep.size("exception") >= 4 and sweep.size("cli") >= 2
    for event in ('"feed.fatal"', '"mqtt.login_refused"', '"telegram.started"'):
        assert event in log, event
    assert '"logger": "websockets.client"' in log and '"logger": "httpx"' in log
    assert '"logger": "telegram' in log and "token=***" in log  # redacted, not absent


async def _happy_run(
    tmp: Path,
    port: int,
    df: pl.DataFrame,
    level: float,
    last: int,
    sweep: Sweep,
    logs: io.StringIO,
) -> None:
    """The Alpaca feed, MQTT with a password, Telegram and the health endpoint, all working."""
    health_port = free_port()
    key, secret = CANARIES["ALPACA_API_KEY"], CANARIES["ALPACA_API_SECRET"]
    token = CANARIES["TELEGRAM_BOT_TOKEN"]
    async with (
        ReplayServer(df, ReplaySettings(speed=400.0, key=key, secret=secret)) as server,
        BotApiServer(token) as api,
    ):
        (tmp / "state").mkdir(parents=True)
        (tmp / "rules.toml").write_text(RULES.format(level=level))
        with SubscriberStore.open(tmp / "state" / "subscribers.sqlite") as store:
            store.subscribe(USER, USER)
        extra = f"""
[sinks.mqtt]
url = "mqtt://127.0.0.1:{port}"
username = "{MQTT_USER}"

[sinks.telegram]
api_base_url = "{api.base_url}"
rate_per_chat_s = 0.01

[health]
enabled = true
host = "127.0.0.1"
port = {health_port}
"""
        path = _config(tmp, f'url = "{server.url}"\nrest_url = "{server.rest_url}"', extra)
        _start_logging(logs, Secrets.load(load_config(path)))

        async def during() -> None:
            await server.wait_played(server.minutes_total // 2)
            api.push_message("/start", chat_id=USER + 1, user_id=USER + 1)
            api.push_message("/score IWM", chat_id=USER, user_id=USER)
            async with httpx.AsyncClient() as http:
                for what in ("healthz", "metrics"):
                    reply = await http.get(f"http://127.0.0.1:{health_port}/{what}")
                    sweep.add("health", reply.content)

        ingest = await _run(path, lambda i: i.stats.last_bar_time == last, during)
        assert ingest is not None and ingest.stats.alerts_emitted > 0
        await asyncio.sleep(0.2)
        for call in api.calls:
            sweep.add("telegram", f"{call.method} {call.params} {call.files!r}")
        assert len(api.sent(USER)) >= ingest.stats.alerts_emitted


async def _failure_runs(tmp: Path, port: int, sweep: Sweep, logs: io.StringIO) -> None:
    """Refused feed key with a wrong MQTT password; a Telegram 401; Finnhub, then its token refused."""
    one_bar = frame_from_rows([("IWM", 1_704_205_800, 1.0, 1.0, 1.0, 1.0, 1.0)])
    async with ReplayServer(
        one_bar, ReplaySettings(key="other-key", secret="other-secret")
    ) as server:
        (tmp / "refused").mkdir()
        (tmp / "refused" / "rules.toml").write_text(RULES.format(level=1e9))
        extra = f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{port}"\nusername = "nobody"\n[health]\nenabled = false\n'
        path = _config(
            tmp / "refused", f'url = "{server.url}"\nrest_url = "{server.rest_url}"', extra
        )
        with pytest.raises(BaseException) as refused:
            await _run(path, None)
        sweep.add_exception("exception", refused.value)
        # Both are refused; whichever answers first ends the daemon, naming what to check.
        end = str(_leaf(refused.value))
        assert "refused the login" in end or "consecutive authentication failures" in end, end

    async with BotApiServer("111111111:AAsomeOtherBotTokenThatIsNotOurs_000") as api:
        (tmp / "tg401").mkdir()
        (tmp / "tg401" / "rules.toml").write_text(RULES.format(level=1e9))
        extra = f'[sinks.telegram]\napi_base_url = "{api.base_url}"\n[health]\nenabled = false\n'
        path = _config(tmp / "tg401", 'url = "ws://127.0.0.1:9/x"', extra, provider="replay")
        with pytest.raises(BaseException) as refused_bot:
            await _run(path, None)
        sweep.add_exception("exception", refused_bot.value)
        assert "refused the bot token" in str(_leaf(refused_bot.value))
        assert any(c.status == 401 for c in api.calls)
        for call in api.calls:
            sweep.add("telegram", f"{call.method} {call.params}")

    tape, token = make_tape(3), CANARIES["FINNHUB_API_KEY"]
    for name, server_token in (("finnhub", token), ("finnhub401", "some-other-token")):
        async with FinnhubServer(tape, token=server_token, minute_s=0.02) as fh:
            fh.rest_unavailable = True
            (tmp / name).mkdir()
            (tmp / name / "rules.toml").write_text(RULES.format(level=1e9))
            feed = f'url = "{fh.url}"\nrest_url = "{fh.rest_url}"'
            path = _config(tmp / name, feed, "[health]\nenabled = false\n", provider="finnhub")
            if name == "finnhub":
                ingest = await _run(path, lambda i: i.stats.bars >= 6)
                assert ingest is not None and ingest.stats.bars >= 6
            else:
                with pytest.raises(BaseException) as refused_fh:
                    await _run(path, None)
                sweep.add_exception("exception", refused_fh.value)
                assert "HTTP 401" in str(_leaf(refused_fh.value))

    bad = tmp / "badconfig.toml"
    bad.write_text(_secret_config(port))
    with pytest.raises(ConfigError) as config_error:
        load_config(bad)
    sweep.add_exception("exception", config_error.value)
    assert "secrets are not read from the config file" in str(config_error.value)


def _secret_config(port: int) -> str:
    """A config with the secrets pasted where people paste them: URLs."""
    return f"""
[feed]
provider = "alpaca"
url = "wss://stream.data.alpaca.markets/v2/iex?apikey={quote_plus(CANARIES["ALPACA_API_KEY"])}"

[sinks.mqtt]
url = "mqtt://iwm:{quote(CANARIES["MQTT_PASSWORD"], safe="")}@127.0.0.1:{port}"

[sinks.telegram]
api_base_url = "https://api.telegram.org/bot{CANARIES["TELEGRAM_BOT_TOKEN"]}/"
"""


def _cli_runs(tmp: Path, sweep: Sweep) -> None:
    """`check-config` and `run` on configs holding secrets, in the CLI's own processes."""
    tmp.mkdir()
    cli = str(Path(sys.executable).with_name("iwm-alerts"))
    env = {**os.environ, **CANARIES}
    cases = []
    for name, text in (
        ("url_secrets", _secret_config(1883)),
        (
            "token_value",
            f'[feed]\nprovider = "alpaca"\n[rates]\nurl = "https://x.test/{CANARIES["TELEGRAM_BOT_TOKEN"]}"\n',
        ),
    ):
        path = tmp / f"{name}.toml"
        path.write_text(text)
        cases += [[cli, "check-config", "--config", str(path)], [cli, "run", "--config", str(path)]]
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for args in cases
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and b"Traceback" not in err, err
        assert b"secrets are not read from the config file" in err or b"Telegram bot token" in err
        sweep.add("cli", out + err)


def test_the_sweep_finds_every_canary_in_each_form_it_checks() -> None:
    sweep = Sweep()
    for name, value in CANARIES.items():
        raw = value.encode()
        sweep.add("plain", f"x{value}y")
        sweep.add("quoted", f"?k={quote(value, safe='')}&")
        sweep.add("plus", f"?k={quote_plus(value)}&")
        sweep.add("b64", base64.b64encode(b"user:" + raw + b"\n"))
        sweep.add("b64url", base64.urlsafe_b64encode(b"ab" + raw))
        found = {(source, leaked) for source, leaked, _ in sweep.leaks()}
        assert {(s, name) for s in ("plain", "quoted", "plus", "b64", "b64url")} <= found
        sweep.sources.clear()
