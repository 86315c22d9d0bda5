"""/healthz and /metrics scraped over real loopback HTTP: values pulled from the daemon's own
counters at request time, degraded states, and the tiny server's refusals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.app import IngestStats
from daemon.feeds.base import FeedStats
from daemon.health import (
    MAX_HEAD_BYTES,
    DeliveryCounters,
    HealthServer,
    ServeOptions,
    SourceFuncs,
    is_loopback,
    observer,
)
from daemon.outbox import Outbox
from daemon.sdnotify import Verdict
from signals.alerts import Alert, alert_id

NOW = 1_750_000_000.0


@dataclass
class FakeLoop:
    """A delivery loop's counters (what `DeliveryLoop` exposes)."""

    name: str
    sent: int = 0
    failed: int = 0
    rejected: int = 0


@dataclass
class FakeOutbox:
    """`depth` and `stats` as the real outbox answers them."""

    pending: dict[str, int] = field(default_factory=dict)

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(self.pending)

    def depth(self, sink: str | None = None) -> int:
        return sum(self.pending.values()) if sink is None else self.pending.get(sink, 0)


@dataclass
class Daemon:
    """The counters a running daemon would have."""

    feed: FeedStats = field(default_factory=FeedStats)
    ingest: IngestStats = field(default_factory=IngestStats)
    outbox: FakeOutbox = field(default_factory=FakeOutbox)
    loops: list[FakeLoop] = field(default_factory=list)

    def source(self) -> SourceFuncs:
        def loops() -> Sequence[DeliveryCounters]:
            return self.loops

        return SourceFuncs(
            feed=lambda: self.feed,
            ingest=lambda: self.ingest,
            outbox=lambda: self.outbox,
            deliveries=loops,
        )


def running_daemon() -> Daemon:
    d = Daemon()
    d.feed.connected = True
    d.feed.connects = 2
    d.feed.reconnects = 1
    d.feed.bars = 120
    d.feed.reject("bad_json", 2)
    d.feed.reject("high_below_low")
    d.feed.last_bar_time = int(NOW) - 75  # the bar of the minute that ended 15 s ago
    d.feed.last_bar_at = NOW - 12.5
    d.ingest.bars = 118
    d.ingest.alerts_emitted = 4
    d.ingest.alerts_duplicate = 1
    d.outbox.pending = {"telegram": 1, "mqtt": 0}
    d.loops = [FakeLoop("telegram", sent=3, failed=2), FakeLoop("mqtt", sent=4, rejected=1)]
    return d


def families(text: str) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """Family name -> {(sample name, labels): value}."""
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
    return out


async def test_healthz_ok() -> None:
    d = running_daemon()
    async with (
        HealthServer(d.source(), port=0, options=ServeOptions(clock=lambda: NOW)) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client,
    ):
        assert server.port != 0
        r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "status": "ok",
        "reasons": [],
        "feed": {
            "connected": True,
            "last_bar_age_s": 12.5,
            "last_bar_time": int(NOW) - 75,
            "reconnects": 1,
        },
        "waiting": {},
        "outbox_depth": 1,
        "sinks": {
            "mqtt": {
                "up": True, "depth": 0, "sent": 4, "failures": 0, "rejected": 1,
                "start_failures": 0,
            },
            "telegram": {
                "up": True, "depth": 1, "sent": 3, "failures": 2, "rejected": 0,
                "start_failures": 0,
            },
        },
    }  # fmt: skip


async def test_healthz_degraded_is_503() -> None:
    d = running_daemon()
    d.feed.connected = False
    verdict = Verdict(False, ("outbox stuck: 1 waiting, none settled in 901 s",))
    async with (
        HealthServer(d.source(), port=0, verdict=lambda: verdict) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client,
    ):
        r = await client.get("/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "degraded"
    assert body["reasons"] == ["feed disconnected", *verdict.reasons]


async def test_metrics_carry_the_values_and_follow_them() -> None:
    d = running_daemon()
    async with (
        HealthServer(d.source(), port=0, options=ServeOptions(clock=lambda: NOW)) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client,
    ):
        r = await client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        m = families(r.text)
        # Values are read at scrape time: the next scrape sees the daemon move on.
        d.feed.bars += 60
        d.loops[0].sent += 1
        d.outbox.pending["telegram"] = 0
        again = families((await client.get("/metrics?from=test")).text)
    p = "iwm_alerts_"
    assert m[p + "bars_received"] == {(p + "bars_received_total", ()): 120.0}
    assert m[p + "bars_rejected"] == {
        (p + "bars_rejected_total", (("reason", "bad_json"),)): 2.0,
        (p + "bars_rejected_total", (("reason", "high_below_low"),)): 1.0,
    }
    assert m[p + "feed_connected"] == {(p + "feed_connected", ()): 1.0}
    assert m[p + "feed_reconnects"] == {(p + "feed_reconnects_total", ()): 1.0}
    assert m[p + "feed_last_bar_age_seconds"] == {(p + "feed_last_bar_age_seconds", ()): 12.5}
    assert m[p + "feed_lag_seconds"] == {(p + "feed_lag_seconds", ()): 2.5}
    assert m[p + "bars_ingested"] == {(p + "bars_ingested_total", ()): 118.0}
    assert m[p + "alerts_emitted"] == {(p + "alerts_emitted_total", ()): 4.0}
    assert m[p + "alerts_sent"] == {
        (p + "alerts_sent_total", (("sink", "mqtt"),)): 4.0,
        (p + "alerts_sent_total", (("sink", "telegram"),)): 3.0,
    }
    assert m[p + "alerts_failed"][(p + "alerts_failed_total", (("sink", "telegram"),))] == 2.0
    assert m[p + "alerts_rejected"][(p + "alerts_rejected_total", (("sink", "mqtt"),))] == 1.0
    assert m[p + "outbox_depth"] == {
        (p + "outbox_depth", (("sink", "mqtt"),)): 0.0,
        (p + "outbox_depth", (("sink", "telegram"),)): 1.0,
    }
    assert m[p + "healthy"] == {(p + "healthy", ()): 1.0}
    assert again[p + "bars_received"] == {(p + "bars_received_total", ()): 180.0}
    assert again[p + "alerts_sent"][(p + "alerts_sent_total", (("sink", "telegram"),))] == 4.0
    assert again[p + "outbox_depth"][(p + "outbox_depth", (("sink", "telegram"),))] == 0.0


async def test_real_outbox_counts_configured_sinks_only(tmp_path: Path) -> None:
    bar = int(NOW)
    alert = Alert(
        id=alert_id("volume_breakout", "IWM", "1m", bar),
        rule="volume_breakout",
        symbol="IWM",
        timeframe="1m",
        bar_time=bar,
        time=bar + 60,
        title="IWM volume breakout",
    )
    with Outbox.open(tmp_path / "outbox.sqlite", ["telegram", "console", "mqtt"]) as outbox:
        outbox.record([alert], None, NOW)
    # Reopened without mqtt (taken out of the config): its rows must not count.
    with Outbox.open(tmp_path / "outbox.sqlite", ["telegram", "console"]) as outbox:
        async with (
            HealthServer(SourceFuncs(outbox=lambda: outbox), port=0) as server,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client,
        ):
            health = (await client.get("/healthz")).json()
            m = families((await client.get("/metrics")).text)
    assert health["status"] == "ok"
    assert health["feed"] is None
    assert health["outbox_depth"] == 2
    assert m["iwm_alerts_outbox_depth"] == {
        ("iwm_alerts_outbox_depth", (("sink", "console"),)): 1.0,
        ("iwm_alerts_outbox_depth", (("sink", "telegram"),)): 1.0,
    }
    assert "iwm_alerts_bars_received" not in m  # no feed, no feed metrics


async def test_other_paths_and_methods() -> None:
    async with (
        HealthServer(SourceFuncs(), port=0) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client,
    ):
        assert (await client.get("/")).status_code == 404
        assert (await client.get("/health")).status_code == 404
        assert (await client.get("/healthz/extra")).status_code == 404
        post = await client.post("/healthz", content=b"{}")
        assert post.status_code == 405
        assert post.headers["allow"] == "GET"
        assert (await client.head("/healthz")).status_code == 405


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()


async def test_malformed_and_oversized_requests() -> None:
    async with HealthServer(SourceFuncs(), port=0) as server:
        assert (await raw(server.port, b"HELLO\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        big = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * (MAX_HEAD_BYTES * 2) + b"\r\n\r\n"
        assert (await raw(server.port, big)).startswith(b"HTTP/1.1 431 ")
        # The server is still there afterwards.
        ok = await raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
        assert json.loads(ok.split(b"\r\n\r\n", 1)[1])["status"] == "ok"


async def test_a_failing_source_is_a_500_not_a_crash() -> None:
    def broken() -> FakeOutbox:
        raise RuntimeError("database is locked")

    async with (
        HealthServer(SourceFuncs(outbox=broken), port=0) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client,
    ):
        assert (await client.get("/healthz")).status_code == 500
        assert (await client.get("/metrics")).status_code == 500
        assert (await client.get("/nope")).status_code == 404


def test_non_loopback_binds_are_refused() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("example.org")
    with pytest.raises(ValueError, match="not loopback"):
        HealthServer(SourceFuncs(), host="0.0.0.0")
    HealthServer(
        SourceFuncs(), host="0.0.0.0", options=ServeOptions(allow_remote=True)
    )  # explicit: allowed
    with pytest.raises(ValueError, match="port"):
        HealthServer(SourceFuncs(), port=70000)


def test_observer_feeds_the_watchdog() -> None:
    d = running_daemon()
    observe = observer(d.source(), lambda now: NOW - 3600)
    o = observe(NOW)
    assert o.now == NOW
    assert o.session_open_at == NOW - 3600
    assert o.feed_connected
    assert o.last_bar_at == NOW - 12.5
    assert o.outbox_depth == 1
    assert o.delivered == 3 + 4 + 1  # sent plus rejected, every sink
