"""Shared pieces of the hostile start-up tests: a daemon on the demo market, warmed up
over REST from a local Alpaca-protocol server that may be down or failing at first."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from daemon.app import Ingest
from daemon.config import load_config
from daemon.feeds.alpaca_rest import fetch_alpaca_warmup
from daemon.feeds.replay import ReplaySettings
from daemon.retry import RetryPolicy
from daemon.sample import DemoMarket, demo_market
from daemon.secrets import Secrets
from daemon.service import run_daemon
from daemon.warmup import Warmup, WarmupRequest
from tests.daemon.daemon_config import write_config
from tests.daemon.feeds.replay_harness import ReplayHarness
from tests.daemon.sinks.mosquitto import free_port

KEY, SECRET = "PKTESTKEY", "test-secret-value"
FAST = RetryPolicy(base_s=0.5, cap_s=5.0, jitter=0.5)
SPEED = 120.0  # bar-minutes per second: the demo session in about 3 s


@dataclass
class Seen:
    """What the test saw while the daemon ran."""

    warmup_failures: list[str] = field(default_factory=list)
    health: list[dict[str, object]] = field(default_factory=list)
    notify: list[str] = field(default_factory=list)


def market() -> DemoMarket:
    return demo_market()


def server(m: DemoMarket, ws_port: int = 0, http_port: int = 0) -> ReplayHarness:
    return ReplayHarness(m.today, ReplaySettings(speed=SPEED, key=KEY, secret=SECRET, port=ws_port, http_port=http_port), history=m.history, daily=m.daily)  # fmt: skip


def config(tmp: Path, ws_port: int, http_port: int, health_port: int, extra: str = "") -> Path:
    feed = f'url = "ws://127.0.0.1:{ws_port}/v2/iex"\nrest_url = "http://127.0.0.1:{http_port}"'
    health = f'[health]\nenabled = true\nhost = "127.0.0.1"\nport = {health_port}\n'
    return write_config(
        tmp, feed=feed, provider="alpaca", backoff_s=(0.5, 4.0), health=True,
        extra=health + extra,
    )  # fmt: skip


def secrets_env(**more: str) -> dict[str, str]:
    return {"ALPACA_API_KEY": KEY, "ALPACA_API_SECRET": SECRET, **more}


def warmup_from(m: DemoMarket, http_port: int, seen: Seen) -> Callable[[], Awaitable[Warmup]]:
    """The warm-up `run` does for Alpaca, at the demo session's open, counting failures."""
    now = float(m.today["time"].min()) - 60.0  # type: ignore[arg-type]

    async def fetch() -> Warmup:
        try:
            return await fetch_alpaca_warmup(KEY, SECRET, WarmupRequest(
                symbols=["IWM", "SPY", "QQQ"], sessions=m.sessions,
                now=now, rest_url=f"http://127.0.0.1:{http_port}", daily_days=120,
            ))  # fmt: skip
        except Exception as exc:
            seen.warmup_failures.append(f"{type(exc).__name__}: {exc}")
            raise

    return fetch


async def watch_health(port: int, seen: Seen, every_s: float = 1.0) -> None:
    """Keep `/healthz` bodies (once the endpoint listens) until cancelled."""
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            try:
                r = await http.get(f"http://127.0.0.1:{port}/healthz")
                body = r.json()
                body["http_status"] = r.status_code
                seen.health.append(body)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(every_s)


def notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


def drain_notify(sock: socket.socket, seen: Seen) -> None:
    while True:
        try:
            seen.notify.append(sock.recv(4096).decode())
        except BlockingIOError:
            return


def alerts(path: Path) -> list[tuple[str, str, str, object]]:
    """(id, rule, symbol, values) of every alert in a JSONL file, in order."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["id"], r["rule"], r["symbol"], r["values"]) for r in rows]


async def run_until_played(
    config_path: Path,
    srv_started: asyncio.Event,
    srv: Callable[[], ReplayHarness | None],
    warmup: Callable[[], Awaitable[Warmup]],
    *,
    timeout_s: float,
    env: dict[str, str] | None = None,
    sink_backoff: RetryPolicy = FAST,
) -> Ingest:
    """`run_daemon` until the server (started by the test when it likes) has played
    everything and the daemon ingested the last minute."""
    cfg = load_config(config_path)
    stop = asyncio.Event()
    ingests: list[Ingest] = []

    async def finish() -> None:
        await srv_started.wait()
        server = srv()
        assert server is not None
        await server.wait_played(server.minutes_total)
        last = server.played_until
        while not ingests or ingests[0].stats.last_bar_time != last:
            await asyncio.sleep(0.05)
        stop.set()

    async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tg:
        tg.create_task(finish())
        await run_daemon(
            cfg, Secrets.load(cfg, env=env or secrets_env(), credentials_dir=None), stop,
            warmup=warmup, realtime=False, on_ingest=ingests.append, snapshots=False,
            sink_backoff=sink_backoff,
        )  # fmt: skip
    return ingests[0]


__all__ = ["free_port"]
