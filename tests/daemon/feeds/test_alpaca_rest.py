"""The REST backfill: pagination, retry-after, error classes; on a swapped transport and on real HTTP."""

from __future__ import annotations

import httpx
import pytest

from daemon.feeds.alpaca import AlpacaRest, rfc3339
from daemon.feeds.base import (
    FeedAuthFailed,
    FeedFatal,
    FeedForbidden,
    FeedThrottled,
    FeedUnavailable,
)
from daemon.feeds.replay import ReplaySettings
from daemon.feeds.rest_options import RestOptions
from tests.daemon.feeds.feedkit import KEY, SECRET, SYMBOLS, T0, FakeClock, keys_of, make_frame
from tests.daemon.feeds.replay_harness import ReplayHarness


def _row(minute: int) -> dict[str, object]:
    return {
        "t": rfc3339(T0 + 60 * minute),
        "o": 1.0,
        "h": 2.0,
        "l": 0.5,
        "c": 1.5,
        "v": 100,
        "n": 3,
        "vw": 1.1,
    }


def _rest(
    handler: httpx.MockTransport | None, clock: FakeClock, **kwargs: object
) -> tuple[AlpacaRest, httpx.AsyncClient]:
    http = httpx.AsyncClient(transport=handler)
    rest = AlpacaRest(
        http,
        KEY,
        SECRET,
        RestOptions(
            SYMBOLS,
            rest_url="https://data.example.test",
            now=clock.now,
            sleep=clock.sleep,
            **kwargs,  # type: ignore[arg-type]
        ),
    )
    return rest, http


async def test_pages_are_followed_and_requests_are_well_formed() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        token = request.url.params.get("page_token")
        if token is None:
            return httpx.Response(
                200, json={"bars": {"IWM": [_row(0), _row(1)]}, "next_page_token": "p2"}
            )
        if token == "p2":
            return httpx.Response(200, json={"bars": {"SPY": [_row(0)]}, "next_page_token": "p3"})
        return httpx.Response(200, json={"bars": {"QQQ": [_row(5)]}, "next_page_token": None})

    clock = FakeClock(T0 + 3600)
    rest, http = _rest(httpx.MockTransport(handler), clock, page_limit=2)
    async with http:
        got = await rest.bars(T0, T0 + 599)
    bars = [b for _, group in got.batches for b in group]
    assert [(b.symbol, b.time) for b in bars] == [
        ("IWM", T0),
        ("IWM", T0 + 60),
        ("SPY", T0),
        ("QQQ", T0 + 300),
    ]
    assert {kind for kind, _ in got.batches} == {"backfill"}
    first = seen[0]
    assert first.url.path == "/v2/stocks/bars"
    assert dict(first.url.params) == {
        "symbols": "IWM,SPY,QQQ",
        "timeframe": "1Min",
        "start": "2024-01-02T14:30:00Z",
        "end": "2024-01-02T14:39:59Z",
        "limit": "2",
        "feed": "iex",
        "adjustment": "raw",
        "sort": "asc",
    }
    assert first.headers["APCA-API-KEY-ID"] == KEY
    assert first.headers["APCA-API-SECRET-KEY"] == SECRET
    assert [r.url.params.get("page_token") for r in seen] == [None, "p2", "p3"]


async def test_429_waits_retry_after_then_succeeds() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            return httpx.Response(
                429, headers={"Retry-After": "7"}, json={"message": "too many requests"}
            )
        return httpx.Response(200, json={"bars": {"IWM": [_row(0)]}, "next_page_token": None})

    clock = FakeClock(T0 + 3600)
    rest, http = _rest(httpx.MockTransport(handler), clock)
    async with http:
        got = await rest.bars(T0, T0 + 59)
    assert clock.slept == [7.0, 7.0]
    assert len(got.batches[0][1]) == 1


async def test_429_uses_the_rate_limit_reset_header_and_gives_up_as_throttled() -> None:
    clock = FakeClock(T0)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"X-RateLimit-Reset": str(int(clock.t) + 12)})

    rest, http = _rest(httpx.MockTransport(handler), clock, max_retries=2)
    async with http:
        with pytest.raises(FeedThrottled) as info:
            await rest.bars(T0, T0 + 59)
    assert clock.slept == [12.0, 12.0]
    assert info.value.retry_after_s == 12.0


@pytest.mark.parametrize(
    ("status", "kind", "retried"),
    [
        (401, FeedAuthFailed, False),
        (403, FeedForbidden, False),  # a FeedFatal that names the keys
        (400, FeedFatal, False),
        (404, FeedFatal, False),
        (500, FeedUnavailable, True),
        (503, FeedUnavailable, True),
    ],
)
async def test_http_errors_are_classified(
    status: int, kind: type[Exception], retried: bool
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(status, json={"message": f"nope, {SECRET} is wrong"})

    clock = FakeClock(T0)
    rest, http = _rest(httpx.MockTransport(handler), clock, max_retries=2)
    async with http:
        with pytest.raises(kind) as info:
            await rest.bars(T0, T0 + 59)
    assert type(info.value) is kind
    assert calls == (3 if retried else 1)
    assert str(status) in str(info.value)
    assert SECRET not in str(info.value) and KEY not in str(info.value)


async def test_network_errors_are_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    clock = FakeClock(T0)
    rest, http = _rest(httpx.MockTransport(handler), clock, max_retries=1)
    async with http:
        with pytest.raises(FeedUnavailable, match="ConnectError"):
            await rest.bars(T0, T0 + 59)
    assert clock.slept == [1.0]


async def test_an_oversized_body_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b" " * 5000)

    clock = FakeClock(T0)
    rest, http = _rest(httpx.MockTransport(handler), clock, max_retries=0, max_body_bytes=4096)
    async with http:
        with pytest.raises(FeedUnavailable, match="larger than 4096"):
            await rest.bars(T0, T0 + 59)


async def test_page_count_is_bounded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"bars": {}, "next_page_token": "again"})

    clock = FakeClock(T0)
    rest, http = _rest(httpx.MockTransport(handler), clock, max_pages=5)
    async with http:
        got = await rest.bars(T0, T0 + 59)
    assert [r.reason for r in got.rejected] == ["backfill_truncated"]


async def test_real_http_against_the_replay_rest_endpoint() -> None:
    frame = make_frame(40)
    async with ReplayHarness(frame, ReplaySettings(key=KEY, secret=SECRET)) as server:
        server.start()  # play without a websocket client
        await server.wait_played(30)
        clock = FakeClock(T0 + 7200)
        async with httpx.AsyncClient() as http:
            rest = AlpacaRest(http, KEY, SECRET, RestOptions(
                SYMBOLS, rest_url=server.rest_url,
                now=clock.now, sleep=clock.sleep, page_limit=7,
            ))  # fmt: skip
            got = await rest.bars(T0 + 60 * 5, T0 + 7200)
            played = server.played_until
            assert played is not None
            wanted = {k for k in keys_of(frame) if T0 + 300 <= k[1] <= played}
            assert {(b.symbol, b.time) for _, g in got.batches for b in g} == wanted
            assert got.rejected == ()
            assert server.rest_requests >= len(wanted) // 7

            server.fail_rest(429, times=1, retry_after_s=3)
            await rest.bars(T0, T0 + 60)
            assert clock.slept == [3.0]

            wrong = AlpacaRest(
                http,
                "PKWRONGKEY",
                "wrong-secret",
                RestOptions(SYMBOLS, rest_url=server.rest_url),
            )
            with pytest.raises(FeedAuthFailed, match="401"):
                await wrong.bars(T0, T0 + 60)


async def test_repr_hides_credentials() -> None:
    async with httpx.AsyncClient() as http:
        rest = AlpacaRest(http, KEY, SECRET, RestOptions(SYMBOLS))
        assert KEY not in repr(rest) and SECRET not in repr(rest)
