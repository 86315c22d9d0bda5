"""Expected failures of `iwm-alerts run`, as a real process: one clear line, a documented
exit code (daemon.fatal.ExitCode), no traceback and no asyncio noise.

Each peer is real and on loopback: the replay server speaking Alpaca's REST and
websocket protocols, the Bot API double, a Mosquitto with a password file, a
socket holding the health port.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from daemon.fatal import ExitCode
from daemon.feeds.replay import ReplayServer, ReplaySettings
from daemon.sample import demo_market
from tests.daemon.daemon_config import write_config
from tests.daemon.sinks.mosquitto import Mosquitto, free_port
from tests.daemon.telegram.botapi import BotApiServer
from tests.daemon.telegram.kit import TOKEN

pytestmark = pytest.mark.reliability

NOISE = ("Traceback", "never retrieved", "Task was destroyed", "Unclosed", "Exception ignored")


async def _run(config: Path, timeout_s: float = 60.0, **env: str) -> tuple[int, str, str]:
    """`iwm-alerts run --config CONFIG` to its end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _assert_one_clear_line(rc: int, out: str, err: str, code: ExitCode, line: str) -> None:
    assert rc == code, (rc, err[-3000:])
    last = [x for x in err.splitlines() if x.strip()][-1]
    assert last == f"iwm-alerts: {line}", err[-3000:]
    for noise in NOISE:
        assert noise not in out and noise not in err, (noise, err[-3000:])


def _alpaca_config(tmp: Path, server: ReplayServer, extra: str = "") -> Path:
    feed = f'url = "{server.url}"\nrest_url = "{server.rest_url}"'
    return write_config(tmp, feed=feed, provider="alpaca", log="info", extra=extra)


async def test_wrong_keys_on_the_rest_warm_up(tmp_path: Path) -> None:
    m = demo_market()
    async with ReplayServer(
        m.today, ReplaySettings(key="right-key", secret="right-secret")
    ) as server:
        config = _alpaca_config(tmp_path, server)
        rc, out, err = await _run(config, ALPACA_API_KEY="wrong-key", ALPACA_API_SECRET="wrong")
        assert server.rest_requests >= 1  # the fault happened: the REST said 401
    _assert_one_clear_line(
        rc, out, err, ExitCode.CREDENTIALS,
        "alpaca: the provider refused the credentials (REST HTTP 401 unauthorized.): "
        "check ALPACA_API_KEY and ALPACA_API_SECRET",
    )  # fmt: skip
    assert '"feed.fatal"' in err  # and the log says so too, as the README promises
    assert "wrong-key" not in err and "right-key" not in err


async def test_wrong_keys_on_the_websocket(tmp_path: Path) -> None:
    m = demo_market()
    async with ReplayServer(
        m.today, ReplaySettings(key="right-key", secret="right-secret")
    ) as server:
        # No warm-up: the keys meet the websocket first, which answers 402.
        config = _alpaca_config(tmp_path, server, extra="")
        text = config.read_text().replace("[feed]\n", "[feed]\nwarmup_days = 0\n", 1)
        config.write_text(text)
        rc, out, err = await _run(config, ALPACA_API_KEY="wrong-key", ALPACA_API_SECRET="wrong")
        assert server.auth_attempts >= 3  # the fault happened: each auth was refused
    _assert_one_clear_line(
        rc, out, err, ExitCode.CREDENTIALS,
        "alpaca: the provider refused the credentials (server error 402 (auth failed) "
        "(3 consecutive authentication failures)): check ALPACA_API_KEY and ALPACA_API_SECRET",
    )  # fmt: skip


async def test_telegram_token_refused(tmp_path: Path) -> None:
    async with BotApiServer("111111111:AAsomeOtherBotTokenThatIsNotOurs_000") as api:
        extra = f'[sinks.telegram]\napi_base_url = "{api.base_url}"\n'
        config = write_config(tmp_path, feed='url = "ws://127.0.0.1:9/x"', log="info", extra=extra)
        rc, out, err = await _run(config, TELEGRAM_BOT_TOKEN=TOKEN)
        assert any(c.status == 401 for c in api.calls)  # the fault happened
    _assert_one_clear_line(
        rc, out, err, ExitCode.CREDENTIALS,
        "telegram: the Bot API refused the bot token (check TELEGRAM_BOT_TOKEN)",
    )  # fmt: skip
    assert TOKEN not in out and TOKEN not in err


async def test_broker_refuses_the_login(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker", passwords={"alice": "right-password"}) as broker:
        extra = f'[sinks.mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\nusername = "alice"\n'
        config = write_config(tmp_path, feed='url = "ws://127.0.0.1:9/x"', log="info", extra=extra)
        rc, out, err = await _run(config, MQTT_PASSWORD="wrong-password")
        log = broker.log_path.read_text()
    assert "not authorised" in log.lower()  # the fault happened: mosquitto refused it
    _assert_one_clear_line(
        rc, out, err, ExitCode.CREDENTIALS,
        "mqtt: the broker refused the login (Not authorized): "
        "check sinks.mqtt.username and MQTT_PASSWORD",
    )  # fmt: skip
    assert "wrong-password" not in err


async def test_health_port_in_use(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        extra = f'[health]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
        config = write_config(tmp_path, feed='url = "ws://127.0.0.1:9/x"', log="info", extra=extra)
        rc, out, err = await _run(config)
    _assert_one_clear_line(
        rc, out, err, ExitCode.LOCAL,
        f"health.port {port} on 127.0.0.1 is already in use: stop what holds it, "
        "or set [health] port",
    )  # fmt: skip


async def test_state_dir_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the state directory should be")
    config = write_config(
        tmp_path, feed='url = "ws://127.0.0.1:9/x"', log="info",
        extra=f'[state]\ndir = "{blocker}/state"\n',
    )  # fmt: skip
    text = config.read_text()
    first = text.index("[state]")
    config.write_text(text[:first] + text[first:].split("\n", 2)[2])  # drop write_config's [state]
    rc, out, err = await _run(config)
    _assert_one_clear_line(
        rc, out, err, ExitCode.LOCAL,
        f"state.dir {blocker}/state is not a writable directory (Not a directory)",
    )  # fmt: skip


async def test_version() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", "--version", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().startswith("iwm-alerts ")
