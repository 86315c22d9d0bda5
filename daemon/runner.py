"""`iwm-alerts run`, `replay` and `demo`: config, logging and signals around `run_daemon`."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import aiomqtt
import msgspec
import structlog

from daemon.app import SESSIONS_FROM, Ingest, IngestStats, build_sinks
from daemon.bars import load_bars
from daemon.calendar import xnys_sessions
from daemon.config import Config, load_config
from daemon.config_errors import ConfigError
from daemon.fatal import ExitCode, Fatal, find_fatal
from daemon.feeds.registry import FEEDS
from daemon.feeds.replay import ReplayServer, ReplaySettings
from daemon.logs import configure_logging
from daemon.outbox import Outbox
from daemon.rules_file import load_rules
from daemon.sample import demo_market
from daemon.secrets import SecretError, Secrets
from daemon.service import run_daemon
from daemon.sinks.base import SinkAuthFailed
from daemon.sinks.mqtt import MqttSink
from daemon.warmup import Warmup, WarmupRequest

_log = structlog.get_logger(__name__)


def _install_signal_handlers(stop: asyncio.Event, ingests: list[Ingest]) -> None:
    """SIGTERM/SIGINT stop the daemon; SIGHUP re-reads the rules file (as /reload does)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_rules, ingests)


def _reload_rules(ingests: list[Ingest]) -> None:
    # Runs on the event loop, so between two bars, like the bot's /reload.
    backend = ingests[0].backend if ingests else None
    if backend is None:
        _log.warning("rules.reload_failed", error="the daemon is still starting")
        return
    try:
        summary = backend.reload_rules()
    except ValueError as exc:  # RuleError too: it names the file and the key
        _log.warning("rules.reload_failed", error=str(exc))
        return
    _log.info("rules.reload_signal", summary=summary)


def _setup_logging(config: Config, secrets: Secrets) -> None:
    configure_logging(json=config.log.json, level=config.log.level, secrets=secrets.all())


async def run(config_path: Path) -> int:
    """The daemon on its configured feed, until SIGTERM/SIGINT, resuming from its snapshot;
    SIGHUP re-reads the rules file.

    With `feed.provider = "replay"` the feed is a long-lived replay server at
    `feed.url` and the daemon runs in feed time: alerts are judged by bar time
    (never dropped as stale), the market is always open, and a restart resumes
    from the last snapshot and backfills from its last minute, exactly as a live
    restart does.
    """
    config = load_config(config_path)
    provider = FEEDS[config.feed.provider]
    if provider.feed_time and config.feed.url is None:
        raise ConfigError(
            config_path,
            "feed.url",
            f'run with provider = "{config.feed.provider}" needs the replay server\'s url',
        )
    secrets = Secrets.load(config)
    _setup_logging(config, secrets)
    stop = asyncio.Event()
    ingests: list[Ingest] = []
    _install_signal_handlers(stop, ingests)
    # Fetched only when no snapshot can be resumed; 0 days is the documented "none".
    history = _history(config, secrets) if config.feed.warmup_days else None
    realtime = not provider.feed_time
    await run_daemon(
        config,
        secrets,
        stop,
        warmup=history,
        realtime=realtime,
        snapshots=True,
        on_ingest=ingests.append,
    )
    return 0


def _history(config: Config, secrets: Secrets) -> Callable[[], Awaitable[Warmup]] | None:
    """The provider's start-up warm-up over REST, if it has one."""
    fetch = FEEDS[config.feed.provider].history
    if fetch is None:
        return None
    f = config.feed

    async def history() -> Warmup:
        sessions = xnys_sessions(SESSIONS_FROM, date.today() + timedelta(days=366))
        request = WarmupRequest(
            symbols=f.symbols, sessions=sessions, now=time.time(), rest_url=f.rest_url,
            daily_days=f.warmup_days,
        )  # fmt: skip
        return await fetch(f, secrets, request)

    return history


async def _replay_until_done(
    config: Config,
    secrets: Secrets,
    server: ReplayServer,
    *,
    warmup: Warmup | None = None,
    duration_s: float | None = None,
) -> IngestStats:
    """Run the daemon against a local replay server until the replay is played and ingested."""
    last_minute = server.last_minute
    stop = asyncio.Event()
    ingest_ref: list[Ingest] = []
    _install_signal_handlers(stop, ingest_ref)

    async def watch() -> None:
        await server.wait_played(server.minutes_total)
        while not ingest_ref or ingest_ref[0].stats.last_bar_time != last_minute:
            await asyncio.sleep(0.05)
        stop.set()

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(watch(), name="replay-watch")
        if duration_s is not None:
            asyncio.get_running_loop().call_later(duration_s, stop.set)
        stats = await run_daemon(
            config, secrets, stop, warmup=warmup, realtime=False, on_ingest=ingest_ref.append
        )
        watcher.cancel()
    return stats


async def replay(config_path: Path, bar_files: Sequence[Path], speed: float) -> int:
    """The full daemon fed from files through a local Alpaca-protocol replay server.
    `[feed]` is ignored but for its symbols: no provider keys are needed."""
    config = load_config(config_path, replay=True)
    secrets = Secrets.load(config)
    _setup_logging(config, secrets)
    bars = load_bars(bar_files).frame
    async with ReplayServer(bars, ReplaySettings(speed=speed)) as server:
        config = _pointed_at(config, server)
        stats = await _replay_until_done(config, secrets, server)
    print(f"replayed {stats.bars} bars, {stats.alerts_emitted} alerts", file=sys.stderr)
    return 0


def _pointed_at(config: Config, server: ReplayServer) -> Config:
    feed = msgspec.structs.replace(
        config.feed, provider="replay", url=server.url, rest_url=server.rest_url
    )
    return msgspec.structs.replace(config, feed=feed)


DEMO_CONFIG = """
[feed]
provider = "replay"
symbols = ["IWM", "SPY", "QQQ"]

[sinks.console]
enabled = true

[sinks.jsonl]
path = {jsonl}

[state]
dir = {state}

[health]
enabled = false

[log]
level = "{level}"
"""

# The demo's own MQTT identity: a device "iwm-alerts-demo" in Home Assistant next to
# (never instead of) the daemon's "iwm-alerts", and a client id that cannot take over
# the daemon's session on the same broker.
DEMO_MQTT_NAME = "iwm-alerts-demo"
CLEAR_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DemoMqtt:
    """`demo --mqtt URL [--mqtt-user U] [--mqtt-qos Q] [--mqtt-ca FILE]`; the password
    comes from MQTT_PASSWORD, as for the daemon."""

    url: str
    username: str | None = None
    qos: int | None = None
    ca_file: Path | None = None

    def toml(self) -> str:
        lines = [
            "[sinks.mqtt]",
            f"url = {_toml_str(self.url)}",
            f"base_topic = {_toml_str(DEMO_MQTT_NAME)}",
            f"client_id = {_toml_str(DEMO_MQTT_NAME)}",
        ]
        if self.username is not None:
            lines.append(f"username = {_toml_str(self.username)}")
        if self.qos is not None:
            lines.append(f"qos = {self.qos}")
        if self.ca_file is not None:
            lines.append(f"ca_file = {_toml_str(self.ca_file.resolve().as_posix())}")
        return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a TOML basic string


async def demo(
    speed: float,
    duration_s: float | None,
    mqtt: DemoMqtt | None,
    out: Path | None,
    log_level: str = "warning",
) -> int:
    """The embedded default: a synthetic IWM/SPY/QQQ session replayed through the whole daemon.

    Every run starts from a fresh state (the session's alerts are new each time); `out`
    keeps `alerts.jsonl`. With `mqtt` it publishes under its own base topic and Home
    Assistant device (`iwm-alerts-demo`) and removes every retained message it left
    (discovery, states, status) on the way out. Prints how many alerts each sink
    delivered; a sink that delivered none of them raises `Fatal` (exit 2), a refused
    broker login ends it with exit 3.
    """
    with tempfile.TemporaryDirectory(prefix="iwm-alerts-demo-") as tmp:
        out_dir = out or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        state_dir = Path(tmp) / "state"
        config_path = Path(tmp) / "demo.toml"
        text = DEMO_CONFIG.format(
            jsonl=_toml_str((out_dir / "alerts.jsonl").as_posix()),
            state=_toml_str(state_dir.as_posix()),
            level=log_level,
        )
        config_path.write_text(text + ("" if mqtt is None else "\n" + mqtt.toml()))
        config, secrets = _demo_config(config_path)
        _setup_logging(config, secrets)
        market = demo_market()
        print(
            f"iwm-alerts demo: replaying a synthetic {market.day} session of IWM, SPY and QQQ "
            f"at {speed:g} bar-minutes per second (no keys, no network)...",
            file=sys.stderr,
        )
        failure: Fatal | None = None
        stats = IngestStats()
        try:
            async with ReplayServer(market.today, ReplaySettings(speed=speed)) as server:
                config = _pointed_at(config, server)
                warmup = Warmup(market.daily, market.history)
                stats = await _replay_until_done(
                    config, secrets, server, warmup=warmup, duration_s=duration_s
                )
        except (Fatal, BaseExceptionGroup) as exc:
            failure = exc if isinstance(exc, Fatal) else find_fatal(exc)
            if failure is None:
                raise
        print(
            f"iwm-alerts demo: {stats.bars} bars, {stats.alerts_emitted} alerts"
            + (f"; alerts also in {out_dir / 'alerts.jsonl'}" if out else ""),
            file=sys.stderr,
        )
        delivered = _delivered(state_dir / "outbox.sqlite", config)
        if delivered:
            counts = ", ".join(f"{name} {n}" for name, n in delivered.items())
            print(f"iwm-alerts demo: {counts} alerts delivered", file=sys.stderr)
        if mqtt is not None and (failure is None or failure.code != ExitCode.CREDENTIALS):
            # Also the deterministic check of the login: the sink's own start-up check can
            # miss a refusal while the warm-up holds the event loop, and then the run just
            # delivers nothing to MQTT.
            refused = await _clear_mqtt(config, secrets)
            if refused is not None and failure is None:
                failure = Fatal(str(refused), ExitCode.CREDENTIALS)
    if failure is not None:
        if failure.code == ExitCode.CREDENTIALS and mqtt is not None:
            raise Fatal(
                f"{failure} (for the demo: --mqtt-user, the password in MQTT_PASSWORD)",
                failure.code,
            )
        raise failure
    silent = [name for name, n in delivered.items() if n == 0]
    if stats.alerts_emitted and silent:
        raise Fatal(
            f"demo: {' and '.join(silent)} delivered none of the {stats.alerts_emitted} alerts;"
            f"{_hints(silent)} the warnings above say why",
            ExitCode.CONFIG,
        )
    return 0


# The demo's command-line flags, by the config key they set.
_DEMO_FLAGS = {
    "sinks.mqtt.url": "--mqtt",
    "sinks.mqtt.username": "--mqtt-user",
    "sinks.mqtt.qos": "--mqtt-qos",
    "sinks.mqtt.ca_file": "--mqtt-ca",
}


def _demo_config(path: Path) -> tuple[Config, Secrets]:
    """The generated config and its secrets; a problem is named by the flag behind it."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        key = _DEMO_FLAGS.get(exc.key or "", exc.key)
        raise Fatal(f"demo: {key}: {exc.detail}", ExitCode.CONFIG) from None
    try:
        return config, Secrets.load(config)
    except SecretError:
        raise Fatal(
            "demo: --mqtt-user needs the password in the MQTT_PASSWORD environment variable",
            ExitCode.CONFIG,
        ) from None


def _delivered(outbox_path: Path, config: Config) -> dict[str, int]:
    """Alerts each configured sink delivered, from the run's outbox (in sink order)."""
    s = config.sinks
    names = [
        name
        for name, on in (
            ("console", s.console.enabled),
            ("jsonl", s.jsonl is not None),
            ("mqtt", s.mqtt is not None),
        )
        if on
    ]
    if not outbox_path.exists():
        return dict.fromkeys(names, 0)
    with Outbox.open(outbox_path, names) as outbox:
        stats = outbox.stats()
    return {name: stats[name]["delivered"] for name in names}


def _hints(silent: Sequence[str]) -> str:
    hints = {
        "mqtt": "is a broker listening at the --mqtt URL (for mqtts://, with --mqtt-ca)?",
        "jsonl": "can --out be written?",
    }
    return "".join(f" {hints[name]}" for name in silent if name in hints)


async def _clear_mqtt(config: Config, secrets: Secrets) -> SinkAuthFailed | None:
    """Remove every retained message the demo's MQTT sink left on the broker; the broker's
    refusal of the login, if it refused it."""
    settings = config.sinks.mqtt
    assert settings is not None
    specs = load_rules(config.rules.file)
    sinks = build_sinks(config, secrets, [spec.name for spec in specs if spec.enabled])
    mqtt = next(sink for sink in sinks if isinstance(sink, MqttSink))
    try:
        async with asyncio.timeout(CLEAR_TIMEOUT_S):
            cleared = await mqtt.clear_retained()
    except SinkAuthFailed as exc:
        return exc  # then it published nothing either
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        why = str(exc) or "timed out"
        password = secrets.get("MQTT_PASSWORD")
        if password is not None and password.reveal():
            why = why.replace(password.reveal(), "***")
        node = DEMO_MQTT_NAME.replace("-", "_")
        print(
            f"iwm-alerts demo: could not remove the retained MQTT messages it may have left "
            f"({why}): they would be under {settings.base_topic}/ and "
            f"{settings.discovery_prefix}/+/{node}_*/config",
            file=sys.stderr,
        )
        return None
    print(
        f"iwm-alerts demo: removed its {cleared} retained MQTT messages (nothing left behind)",
        file=sys.stderr,
    )
    return None
