"""The FRED DGS2 fetch against a local HTTP server: parse, retry on 5xx / 429 / network
errors with backoff, and errors classified as unavailable (retry later) or rejected."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
import structlog

from daemon.rates_fetch import (
    MAX_BODY_BYTES,
    RatesFetcher,
    RatesFetchOptions,
    RatesRejected,
    RatesUnavailable,
)
from daemon.retry import parse_retry_after

FRED_CSV = """observation_date,DGS2
2024-07-01,4.75
2024-07-02,4.74
2024-07-03,4.71
2024-07-04,
2024-07-05,4.60
"""


@dataclass(frozen=True)
class Reply:
    status: int
    body: str = ""
    headers: Sequence[tuple[str, str]] = ()


@dataclass
class FredServer:
    """A loopback HTTP server answering each request with the next scripted reply."""

    replies: list[Reply]
    paths: list[str] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.paths.append(head.split(b" ")[1].decode())
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        body = reply.body.encode()
        lines = [f"HTTP/1.1 {reply.status} X", f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in reply.headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graph/fredgraph.csv?id=DGS2"


@asynccontextmanager
async def fred(*replies: Reply) -> AsyncIterator[FredServer]:
    server = FredServer(list(replies))
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield server


class Sleeps:
    """Records the backoff instead of waiting it out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


def ts(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())


async def test_fetch_parses_the_csv() -> None:
    async with (
        fred(Reply(200, FRED_CSV, [("Content-Type", "text/csv")])) as server,
        RatesFetcher(server.url) as fetcher,
    ):
        series = await fetcher.fetch()
    assert server.paths == ["/graph/fredgraph.csv?id=DGS2"]
    assert len(series) == 4  # the holiday's blank is dropped
    values = series.asof([ts("2024-07-02"), ts("2024-07-04") + 3600, ts("2024-07-06")])
    np.testing.assert_allclose(values, [4.74, 4.71, 4.60])


async def test_503_then_200_is_retried() -> None:
    sleeps = Sleeps()
    async with (
        fred(Reply(503, "busy"), Reply(200, FRED_CSV)) as server,
        RatesFetcher(
            server.url, RatesFetchOptions(backoff_initial_s=2.0, sleep=sleeps, rng=random.Random(1))
        ) as fetcher,
    ):
        with structlog.testing.capture_logs() as logs:
            series = await fetcher.fetch()
    assert len(series) == 4
    assert len(server.paths) == 2
    assert len(sleeps.delays) == 1
    assert 1.0 <= sleeps.delays[0] <= 2.0  # 2 s less up to half of it (jitter)
    retry = next(e for e in logs if e["event"] == "rates.fetch_retry")
    assert retry["error"] == "HTTP 503"
    assert [e["event"] for e in logs][-1] == "rates.fetched"


async def test_5xx_until_attempts_run_out_is_unavailable() -> None:
    sleeps = Sleeps()
    async with (
        fred(Reply(502)) as server,
        RatesFetcher(
            server.url, RatesFetchOptions(attempts=3, sleep=sleeps, rng=random.Random(7))
        ) as fetcher,
    ):
        with pytest.raises(RatesUnavailable, match=r"HTTP 502 \(after 3 attempts\)") as err:
            await fetcher.fetch()
    assert len(server.paths) == 3
    # 2 s then 4 s (doubling from backoff_initial_s), each less up to half of itself.
    jitter = random.Random(7)
    assert sleeps.delays == [2.0 * (1 - 0.5 * jitter.random()), 4.0 * (1 - 0.5 * jitter.random())]
    assert "id=DGS2" not in str(err.value)  # never the query (an API key would sit there)


async def test_429_honours_retry_after_up_to_the_cap() -> None:
    sleeps = Sleeps()
    async with (
        fred(Reply(429, "", [("Retry-After", "30")]), Reply(200, FRED_CSV)) as server,
        RatesFetcher(
            server.url, RatesFetchOptions(backoff_initial_s=1.0, backoff_max_s=20.0, sleep=sleeps)
        ) as fetcher,
    ):
        await fetcher.fetch()
    assert sleeps.delays == [20.0]


async def test_503_honours_an_http_date_retry_after_on_the_injected_clock() -> None:
    sleeps = Sleeps()
    now = datetime(2024, 7, 8, 12, 0, 0, tzinfo=UTC).timestamp()
    date = "Mon, 08 Jul 2024 12:00:15 GMT"
    async with (
        fred(Reply(503, "", [("Retry-After", date)]), Reply(200, FRED_CSV)) as server,
        RatesFetcher(
            server.url,
            RatesFetchOptions(
                backoff_initial_s=1.0, backoff_max_s=20.0, sleep=sleeps, clock=lambda: now
            ),
        ) as fetcher,
    ):
        await fetcher.fetch()
    assert sleeps.delays == [15.0]


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_4xx_is_rejected_at_once(status: int) -> None:
    sleeps = Sleeps()
    async with (
        fred(Reply(status, "no such series")) as server,
        RatesFetcher(server.url, RatesFetchOptions(sleep=sleeps)) as fetcher,
    ):
        with pytest.raises(RatesRejected, match=f"HTTP {status}"):
            await fetcher.fetch()
    assert len(server.paths) == 1
    assert sleeps.delays == []


async def test_a_body_that_is_not_the_csv_is_rejected() -> None:
    async with (
        fred(Reply(200, "<html>maintenance</html>")) as server,
        RatesFetcher(server.url) as fetcher,
    ):
        with pytest.raises(RatesRejected, match="not a DGS2 CSV"):
            await fetcher.fetch()


async def test_connection_refused_is_retried_then_unavailable() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()  # nothing listens on `port` now
    sleeps = Sleeps()
    async with RatesFetcher(
        f"http://127.0.0.1:{port}/x.csv", RatesFetchOptions(attempts=2, sleep=sleeps)
    ) as f:
        with pytest.raises(RatesUnavailable, match="ConnectError"):
            await f.fetch()
    assert len(sleeps.delays) == 1


async def test_a_server_that_never_answers_times_out() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # keep the connection open, say nothing

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        async with RatesFetcher(
            f"http://127.0.0.1:{port}/x.csv",
            RatesFetchOptions(timeout_s=0.2, attempts=2, sleep=Sleeps()),
        ) as f:
            with pytest.raises(RatesUnavailable, match="ReadTimeout"):
                await f.fetch()
        for w in accepted:
            w.close()
    assert len(accepted) == 2


async def test_an_oversized_body_is_rejected() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"observation_date,DGS2\n" + b"x" * MAX_BODY_BYTES)

    async with RatesFetcher(
        "https://fred.example/x.csv", RatesFetchOptions(transport=httpx.MockTransport(handler))
    ) as f:
        with pytest.raises(RatesRejected, match="over"):
            await f.fetch()


async def test_fetch_needs_the_context_manager() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await RatesFetcher().fetch()


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="http"):
        RatesFetcher("ftp://fred.example/x.csv")
    with pytest.raises(ValueError, match="attempts"):
        RatesFetchOptions(attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        RatesFetchOptions(backoff_initial_s=10, backoff_max_s=1)


def test_retry_after_forms() -> None:
    assert parse_retry_after("12", 0.0) == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", 1445412480.0) == 30.0
    assert parse_retry_after("soon", 0.0) is None
    assert parse_retry_after(None, 0.0) is None
