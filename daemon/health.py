"""`/healthz` and Prometheus `/metrics` over a tiny loopback HTTP/1.1 server.

Nothing is counted here: every request reads the daemon's own counters
through a `HealthSource` (feed stats, ingest stats, the outbox, the delivery
loops) at that moment, so there is no second set of numbers to keep in step
and no coupling to the daemon's internals beyond a few attribute names.

The server is `asyncio.start_server` with a deliberately small HTTP subset:
one `GET` per connection, the head capped at `MAX_HEAD_BYTES` and read within
`READ_TIMEOUT_S`, `Connection: close`. It binds to loopback only unless told
otherwise: the numbers are not secret, but nothing here is meant for the
internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon.sdnotify import Observation, Verdict

_log = structlog.get_logger(__name__)

MAX_HEAD_BYTES = 8192
READ_TIMEOUT_S = 5.0
_PREFIX = "iwm_alerts"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class FeedCounters(Protocol):
    """What is read of a feed's stats (`daemon.feeds.base.FeedStats` fits)."""

    @property
    def connected(self) -> bool: ...
    @property
    def connects(self) -> int: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def bars(self) -> int: ...
    @property
    def rejected(self) -> Mapping[str, int]: ...
    @property
    def last_bar_at(self) -> float | None: ...
    @property
    def last_bar_time(self) -> int | None: ...


class IngestCounters(Protocol):
    """What is read of the ingest path's stats (`daemon.app.IngestStats` fits)."""

    @property
    def bars(self) -> int: ...
    @property
    def alerts_emitted(self) -> int: ...
    @property
    def alerts_duplicate(self) -> int: ...
    @property
    def alerts_stale(self) -> int: ...


class OutboxCounters(Protocol):
    """What is read of the outbox (`daemon.outbox.Outbox` fits)."""

    @property
    def sinks(self) -> Sequence[str]: ...
    def depth(self, sink: str | None = None) -> int: ...


class DeliveryCounters(Protocol):
    """What is read of one sink's delivery loop (`daemon.delivery.DeliveryLoop` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def sent(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def rejected(self) -> int: ...


@dataclass(frozen=True)
class Startup:
    """What start-up still waits for (dependency -> last error), and when the feed
    started taking bars (None: still waiting for the provider)."""

    waiting: Mapping[str, str] = field(default_factory=dict)
    feed_started_at: float | None = 0.0
    sinks_up: Mapping[str, bool] = field(default_factory=dict)
    sink_start_failures: Mapping[str, int] = field(default_factory=dict)
    sink_problems: Mapping[str, str | None] = field(default_factory=dict)


class HealthSource(Protocol):
    """Where the endpoint reads from, at request time. None: that part is not running."""

    def feed(self) -> FeedCounters | None: ...
    def ingest(self) -> IngestCounters | None: ...
    def outbox(self) -> OutboxCounters | None: ...
    def deliveries(self) -> Sequence[DeliveryCounters]: ...
    def startup(self) -> Startup: ...


def _none() -> None:
    return None


def _no_loops() -> Sequence[DeliveryCounters]:
    return ()


def _started() -> Startup:
    return Startup()


@dataclass
class SourceFuncs:
    """A `HealthSource` made of getters, for wiring with lambdas:
    `SourceFuncs(feed=lambda: feed.stats, ingest=lambda: ingest.stats, ...)`."""

    feed: Callable[[], FeedCounters | None] = _none
    ingest: Callable[[], IngestCounters | None] = _none
    outbox: Callable[[], OutboxCounters | None] = _none
    deliveries: Callable[[], Sequence[DeliveryCounters]] = _no_loops
    startup: Callable[[], Startup] = _started


@dataclass(frozen=True)
class SinkHealth:
    """One sink: alerts waiting in the outbox, and its loop's counters since start-up."""

    depth: int = 0
    sent: int = 0
    failed: int = 0
    rejected: int = 0
    up: bool = True
    start_failures: int = 0
    problem: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything one response needs, read once at `now` (epoch seconds)."""

    now: float
    feed: FeedCounters | None
    ingest: IngestCounters | None
    sinks: Mapping[str, SinkHealth] = field(default_factory=dict)
    verdict: Verdict | None = None
    startup: Startup = field(default_factory=Startup)

    @property
    def outbox_depth(self) -> int:
        """Alerts not yet delivered nor rejected, summed over the sinks."""
        return sum(s.depth for s in self.sinks.values())

    @property
    def last_bar_age_s(self) -> float | None:
        """Seconds since the feed last handed over a bar."""
        if self.feed is None or self.feed.last_bar_at is None:
            return None
        return max(self.now - self.feed.last_bar_at, 0.0)


def take_snapshot(
    source: HealthSource, now: float, verdict: Callable[[], Verdict] | None = None
) -> Snapshot:
    """Read `source` (and the watchdog verdict, if given) once."""
    sinks: dict[str, SinkHealth] = {}
    outbox = source.outbox()
    if outbox is not None:
        # Configured sinks only: rows left by a sink no longer configured will never move.
        for sink in outbox.sinks:
            sinks[sink] = SinkHealth(depth=outbox.depth(sink))
    startup = source.startup()
    for loop in source.deliveries():
        depth = sinks.get(loop.name, SinkHealth()).depth
        sinks[loop.name] = SinkHealth(
            depth,
            loop.sent,
            loop.failed,
            loop.rejected,
            up=startup.sinks_up.get(loop.name, True),
            start_failures=startup.sink_start_failures.get(loop.name, 0),
            problem=startup.sink_problems.get(loop.name),
        )
    return Snapshot(
        now=now,
        feed=source.feed(),
        ingest=source.ingest(),
        sinks=sinks,
        verdict=None if verdict is None else verdict(),
        startup=startup,
    )


def observer(
    source: HealthSource, session_open_at: Callable[[float], float | None]
) -> Callable[[float], Observation]:
    """The watchdog's `observe(now)`, read from the same source as the endpoint.

    `session_open_at(now)` is when the current session opened, None outside
    one (`daemon.scheduler.SessionCalendar.open_since` fits).
    """

    def observe(now: float) -> Observation:
        snap = take_snapshot(source, now)
        return Observation(
            now=now,
            session_open_at=session_open_at(now),
            feed_connected=snap.feed is not None and snap.feed.connected,
            last_bar_at=None if snap.feed is None else snap.feed.last_bar_at,
            outbox_depth=snap.outbox_depth,
            delivered=sum(s.sent + s.rejected for s in snap.sinks.values()),
            feed_started_at=now
            if snap.startup.feed_started_at is None
            else snap.startup.feed_started_at,
        )

    return observe


def health_report(snap: Snapshot) -> tuple[int, dict[str, object]]:
    """`/healthz`: (HTTP status, JSON body). Starting (503) while start-up waits for the
    provider; degraded (503) when the feed is down, a dependency does not answer or the
    watchdog's verdict is unhealthy; else ok (200)."""
    reasons: list[str] = []
    feed = snap.feed
    starting = snap.startup.feed_started_at is None
    waiting = dict(snap.startup.waiting)
    reasons.extend(f"waiting for {what}: {why}" for what, why in sorted(waiting.items()))
    if feed is not None and not feed.connected and not starting:
        reasons.append("feed disconnected")
    if snap.verdict is not None:
        reasons.extend(snap.verdict.reasons)
    age = snap.last_bar_age_s
    status = "starting" if starting else "degraded" if reasons else "ok"
    body: dict[str, object] = {
        "status": status,
        "reasons": reasons,
        "waiting": waiting,
        "feed": None
        if feed is None
        else {
            "connected": feed.connected,
            "last_bar_age_s": None if age is None else round(age, 3),
            "last_bar_time": feed.last_bar_time,
            "reconnects": feed.reconnects,
        },
        "outbox_depth": snap.outbox_depth,
        "sinks": {
            name: {
                "up": s.up,
                "depth": s.depth,
                "sent": s.sent,
                "failures": s.failed,
                "rejected": s.rejected,
                "start_failures": s.start_failures,
                **({"problem": s.problem} if s.problem else {}),
            }
            for name, s in sorted(snap.sinks.items())
        },
    }
    return (503 if status != "ok" else 200), body


def metric_families(snap: Snapshot) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """`/metrics`: the snapshot as Prometheus metric families (names prefixed `iwm_alerts_`)."""
    p = _PREFIX
    feed = snap.feed
    if feed is not None:
        yield GaugeMetricFamily(
            f"{p}_feed_connected", "1 while a feed session is up.", value=int(feed.connected)
        )
        yield CounterMetricFamily(
            f"{p}_feed_connects", "Feed sessions established.", value=feed.connects
        )
        yield CounterMetricFamily(
            f"{p}_feed_reconnects", "Feed reconnects scheduled.", value=feed.reconnects
        )
        yield CounterMetricFamily(
            f"{p}_bars_received", "Bars handed over by the feed.", value=feed.bars
        )
        rejected = CounterMetricFamily(
            f"{p}_bars_rejected", "Rejected feed input, by reason.", labels=["reason"]
        )
        for reason, count in sorted(feed.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        if feed.last_bar_at is not None:
            age = snap.last_bar_age_s or 0.0
            yield GaugeMetricFamily(
                f"{p}_feed_last_bar_age_seconds", "Seconds since the last bar arrived.", value=age
            )
            if feed.last_bar_time is not None:
                # A 1-minute bar is complete 60 s after its start: lag is how late it came.
                lag = max(feed.last_bar_at - (feed.last_bar_time + 60), 0.0)
                yield GaugeMetricFamily(
                    f"{p}_feed_lag_seconds",
                    "Delay between the last bar's end and its arrival.",
                    value=lag,
                )
    ingest = snap.ingest
    if ingest is not None:
        yield CounterMetricFamily(
            f"{p}_bars_ingested", "Bars run through the engine.", value=ingest.bars
        )
        yield CounterMetricFamily(
            f"{p}_alerts_emitted", "Alerts recorded in the outbox.", value=ingest.alerts_emitted
        )
        yield CounterMetricFamily(
            f"{p}_alerts_duplicate",
            "Alerts refused as already recorded.",
            value=ingest.alerts_duplicate,
        )
        yield CounterMetricFamily(
            f"{p}_alerts_stale", "Alerts dropped as too old to send.", value=ingest.alerts_stale
        )
    per_sink = [
        ("alerts_sent", "Alerts delivered, per sink.", "sent"),
        ("alerts_failed", "Failed delivery attempts (retried), per sink.", "failed"),
        ("alerts_rejected", "Alerts a sink refused or gave up on, per sink.", "rejected"),
    ]
    for name, doc, attr in per_sink:
        family = CounterMetricFamily(f"{p}_{name}", doc, labels=["sink"])
        for sink, s in sorted(snap.sinks.items()):
            family.add_metric([sink], getattr(s, attr))
        yield family
    up = GaugeMetricFamily(f"{p}_sink_up", "1 once a sink has started.", labels=["sink"])
    starts = CounterMetricFamily(
        f"{p}_sink_start_failures", "Failed tries to start a sink, per sink.", labels=["sink"]
    )
    for sink, s in sorted(snap.sinks.items()):
        up.add_metric([sink], int(s.up))
        starts.add_metric([sink], s.start_failures)
    yield up
    yield starts
    waiting = GaugeMetricFamily(
        f"{p}_waiting", "1 while start-up waits for this dependency.", labels=["dependency"]
    )
    for what in sorted(snap.startup.waiting):
        waiting.add_metric([what], 1)
    yield waiting
    depth = GaugeMetricFamily(
        f"{p}_outbox_depth", "Alerts waiting in the outbox, per sink.", labels=["sink"]
    )
    for sink, s in sorted(snap.sinks.items()):
        depth.add_metric([sink], s.depth)
    yield depth
    status, _ = health_report(snap)
    yield GaugeMetricFamily(f"{p}_healthy", "1 when /healthz says ok.", value=int(status == 200))


class _Collector:
    """A prometheus collector that snapshots the source on every scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        return list(metric_families(self._snapshot()))


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """What a `HealthServer` rarely needs: binding beyond loopback, and another clock."""

    allow_remote: bool = False
    """Bind a host that is not loopback (refused otherwise: the endpoint has no auth)."""
    clock: Callable[[], float] = time.time
    """Epoch seconds, read for each snapshot."""


class _Refused(Exception):
    """A request answered with an error before it reaches a route."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


class HealthServer:
    """The endpoint, serving while inside `async with HealthServer(source, ...) as server`.

    `port=0` picks a free port: read it back from `server.port`. A host that
    is not loopback is refused unless `options.allow_remote`. `verdict` is the
    watchdog gate's `check` (optional): when unhealthy `/healthz` says so.
    """

    def __init__(
        self,
        source: HealthSource,
        *,
        host: str = "127.0.0.1",
        port: int = 9108,
        verdict: Callable[[], Verdict] | None = None,
        options: ServeOptions = ServeOptions(),
    ) -> None:
        if not options.allow_remote and not is_loopback(host):
            raise ValueError(
                f"health endpoint host {host!r} is not loopback;"
                " pass ServeOptions(allow_remote=True) to bind it"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0-65535, got {port}")
        self.host = host
        self._port = port
        self._source = source
        self._verdict = verdict
        self._clock = options.clock
        self.registry = CollectorRegistry(auto_describe=False)
        collector: Collector = _Collector(self.snapshot)
        self.registry.register(collector)
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    def snapshot(self) -> Snapshot:
        """Read the source now."""
        return take_snapshot(self._source, self._clock(), self._verdict)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, limit=MAX_HEAD_BYTES
        )
        _log.info("health.listening", host=self.host, port=self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await self._respond(reader)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n"
            )
            if status == 405:
                head += "Allow: GET\r\n"
            writer.write(head.encode("ascii") + b"\r\n" + body)
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the client went away: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        try:
            target = await _read_target(reader)
        except _Refused as refused:
            return _text(refused.status, refused.text)
        try:
            if target == b"/metrics":
                return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
            status, report = health_report(self.snapshot())
        except Exception:
            _log.exception("health.request_failed", path=target.decode("ascii", "replace"))
            return _text(500, "internal error\n")
        body = json.dumps(report, separators=(",", ":")).encode() + b"\n"
        return status, "application/json", body


async def _read_target(reader: asyncio.StreamReader) -> bytes:
    """The path of a well-formed `GET /healthz` or `GET /metrics`; `_Refused` otherwise."""
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _Refused(431, "request head too large\n") from None
    except asyncio.IncompleteReadError:
        raise _Refused(400, "incomplete request\n") from None
    except TimeoutError:
        raise _Refused(408, "request timeout\n") from None
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise _Refused(400, "bad request line\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method != b"GET":
        raise _Refused(405, "only GET\n")
    if target not in (b"/healthz", b"/metrics"):
        raise _Refused(404, "not found: try /healthz or /metrics\n")
    return target


def _text(status: int, text: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", text.encode()
