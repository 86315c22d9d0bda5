"""A hostile start: the provider down or failing when the daemon starts.

The daemon must come up anyway (READY=1, `/healthz` answering "starting" and
naming what it waits for), retry the provider's REST warm-up with capped
backoff, then warm up, stream and alert exactly as a run that never saw the
fault. Each test checks that its fault really happened.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from daemon.sample import DemoMarket
from tests.daemon.feeds.replay_harness import ReplayHarness
from tests.reliability.startkit import (
    Seen,
    alerts,
    config,
    drain_notify,
    free_port,
    market,
    notify_socket,
    run_until_played,
    server,
    warmup_from,
    watch_health,
)

pytestmark = pytest.mark.reliability

OUTAGE_S = 45.0


async def _run(
    tmp: Path, m: DemoMarket, *, down_s: float = 0.0, rest_503_s: float = 0.0
) -> tuple[Seen, int, ReplayHarness]:
    """One daemon run; the server comes up after `down_s` (connection refused until
    then), and answers 503 to every REST request for the first `rest_503_s`."""
    ws_port, http_port, health_port = free_port(), free_port(), free_port()
    cfg = config(tmp, ws_port, http_port, health_port)
    seen = Seen()
    sock = notify_socket(tmp / "notify.sock")
    started, done = asyncio.Event(), asyncio.Event()
    holder: list[ReplayHarness] = []

    async def provider() -> None:
        await asyncio.sleep(down_s)
        if down_s:
            drain_notify(sock, seen)  # what systemd heard before the provider answered
        async with server(m, ws_port, http_port) as srv:
            if rest_503_s:
                srv.fail_rest(503, times=1_000_000)
            holder.append(srv)
            started.set()
            if rest_503_s:
                await asyncio.sleep(rest_503_s)
                drain_notify(sock, seen)
                srv.clear_rest_failures()
            await done.wait()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(provider())
        watcher = tg.create_task(watch_health(health_port, seen, every_s=2.0))
        ingest = await run_until_played(
            cfg, started, lambda: holder[0] if holder else None, warmup_from(m, http_port, seen),
            timeout_s=down_s + rest_503_s + 90,
        )  # fmt: skip
        watcher.cancel()
        done.set()
    drain_notify(sock, seen)
    sock.close()
    return seen, ingest.stats.bars, holder[0]


def _in(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run directory, whose `notify.sock` stands in for systemd's."""
    directory.mkdir()
    monkeypatch.setenv("NOTIFY_SOCKET", str(directory / "notify.sock"))


async def _clean_run(
    tmp: Path, m: DemoMarket, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, list[tuple[str, str, str, object]]]:
    """Bars and alerts of a run that never saw a fault."""
    _in(tmp / "clean", monkeypatch)
    _, bars, _ = await _run(tmp / "clean", m)
    return bars, alerts(tmp / "clean" / "alerts.jsonl")


def _assert_waited_and_said_so(seen: Seen, needle: str) -> None:
    starting = [h for h in seen.health if h["status"] == "starting"]
    assert starting, f"/healthz never said starting: {seen.health[:3]}"
    assert all(h["http_status"] == 503 for h in starting)
    reasons = [str(h["waiting"]) for h in starting]
    assert any("feed warm-up" in r and needle in r for r in reasons), reasons[:3]
    assert seen.health[-1]["status"] in ("ok", "degraded")  # it got past starting
    # systemd heard READY=1, and a STATUS= naming the wait, before the provider answered.
    assert seen.notify, "no sd_notify datagram"
    assert "READY=1" in seen.notify[0]
    assert any("STATUS=waiting for feed warm-up" in d and needle in d for d in seen.notify)


async def test_provider_refusing_connections_for_45_s_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = market()
    clean_bars, clean = await _clean_run(tmp_path, m, monkeypatch)
    assert clean, "the demo session alerts: a clean run must show some"
    _in(tmp_path / "faulty", monkeypatch)
    seen, bars, _ = await _run(tmp_path / "faulty", m, down_s=OUTAGE_S)
    # The fault happened: every try during the outage was refused at the TCP level.
    assert len(seen.warmup_failures) >= 5, seen.warmup_failures
    assert all("ConnectError" in f for f in seen.warmup_failures), seen.warmup_failures
    _assert_waited_and_said_so(seen, "ConnectError")
    # Then it warmed up, streamed and alerted exactly as the clean run.
    assert bars == clean_bars
    assert alerts(tmp_path / "faulty" / "alerts.jsonl") == clean


async def test_provider_rest_answering_503_for_45_s_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = market()
    clean_bars, clean = await _clean_run(tmp_path, m, monkeypatch)
    _in(tmp_path / "faulty", monkeypatch)
    seen, bars, srv = await _run(tmp_path / "faulty", m, rest_503_s=OUTAGE_S)
    # The fault happened: the server answered 503, many times, and the daemon saw it.
    assert srv.rest_failures_served >= 10, srv.rest_failures_served
    assert seen.warmup_failures and all("503" in f for f in seen.warmup_failures)
    _assert_waited_and_said_so(seen, "503")
    assert bars == clean_bars
    assert alerts(tmp_path / "faulty" / "alerts.jsonl") == clean
