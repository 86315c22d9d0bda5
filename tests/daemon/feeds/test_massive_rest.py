"""The Massive `/v2/aggs` backfill: request shape, `next_url` pages, retries, error classes."""

from __future__ import annotations

import httpx
import pytest

from daemon.feeds.base import (
    FeedAuthFailed,
    FeedFatal,
    FeedForbidden,
    FeedThrottled,
    FeedUnavailable,
)
from daemon.feeds.massive import MassiveRest
from daemon.feeds.rest_options import RestOptions
from tests.daemon.feeds.feedkit import SYMBOLS, T0, FakeClock, keys_of, make_frame
from tests.daemon.feeds.massive_server import MassiveServer

KEY = "mAsSiVe-KEY-0123456789abcdef"
BASE = "https://api.example.test"


def _row(minute: int) -> dict[str, object]:
    return {
        "v": 100,
        "vw": 1.1,
        "o": 1.0,
        "c": 1.5,
        "h": 2.0,
        "l": 0.5,
        "t": (T0 + 60 * minute) * 1000,
    }


def _rest(
    handler: httpx.MockTransport, clock: FakeClock, **kwargs: object
) -> tuple[MassiveRest, httpx.AsyncClient]:
    http = httpx.AsyncClient(transport=handler)
    rest = MassiveRest(
        http,
        KEY,
        RestOptions(
            SYMBOLS,
            rest_url=BASE,
            now=clock.now,
            sleep=clock.sleep,
            **kwargs,  # type: ignore[arg-type]
        ),
    )
    return rest, http


async def test_one_request_per_symbol_with_the_key_in_a_header_and_next_url_followed() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        symbol = request.url.path.split("/")[4]
        if symbol == "IWM" and "cursor" not in request.url.params:
            nxt = f"{BASE}{request.url.path}?cursor=p2&limit=2&sort=asc"
            return httpx.Response(200, json={"results": [_row(0), _row(1)], "next_url": nxt})
        if symbol == "IWM":
            return httpx.Response(200, json={"results": [_row(2)], "status": "OK"})
        if symbol == "SPY":
            return httpx.Response(200, json={"resultsCount": 0, "status": "OK"})
        return httpx.Response(200, json={"results": [_row(5), _row(20)], "status": "DELAYED"})

    clock = FakeClock(T0 + 3600)
    rest, http = _rest(httpx.MockTransport(handler), clock)
    async with http:
        got = await rest.bars(T0, T0 + 599)
    bars = [b for _, group in got.batches for b in group]
    assert [(b.symbol, b.time) for b in bars] == [
        ("IWM", T0),
        ("IWM", T0 + 60),
        ("IWM", T0 + 120),
        ("QQQ", T0 + 300),
    ]
    assert [r.reason for r in got.rejected] == ["outside_window"]  # QQQ T0+1200 > end
    assert {kind for kind, _ in got.batches} == {"backfill"}
    first = seen[0]
    assert first.url.path == f"/v2/aggs/ticker/IWM/range/1/minute/{T0 * 1000}/{(T0 + 599) * 1000}"
    assert dict(first.url.params) == {"adjusted": "true", "sort": "asc", "limit": "50000"}
    assert seen[1].url.params["cursor"] == "p2"
    assert [r.url.path.split("/")[4] for r in seen] == ["IWM", "IWM", "SPY", "QQQ"]
    for request in seen:
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        assert KEY not in str(request.url)


async def test_a_next_url_on_another_host_is_not_followed() -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(
            200, json={"results": [_row(0)], "next_url": "https://evil.example/steal?x=1"}
        )

    clock = FakeClock(T0 + 3600)
    rest, http = _rest(httpx.MockTransport(handler), clock)
    async with http:
        got = await rest.bars(T0, T0 + 59)
    assert set(hosts) == {"api.example.test"}
    assert [r.reason for r in got.rejected] == ["backfill_truncated"] * 3


async def test_429_waits_retry_after_then_succeeds() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            return httpx.Response(429, headers={"Retry-After": "7"}, json={"status": "ERROR"})
        return httpx.Response(200, json={"results": [_row(0)]})

    clock = FakeClock(T0 + 3600)
    rest, http = _rest(httpx.MockTransport(handler), clock)
    async with http:
        got = await rest.bars(T0, T0 + 59)
    assert clock.slept == [7.0, 7.0]
    assert len(got.batches[0][1]) == 3


@pytest.mark.parametrize(
    ("status", "kind", "retried"),
    [
        (401, FeedAuthFailed, False),
        (403, FeedForbidden, False),  # a FeedFatal that names the keys
        (400, FeedFatal, False),
        (404, FeedFatal, False),
        (429, FeedThrottled, True),
        (500, FeedUnavailable, True),
        (503, FeedUnavailable, True),
    ],
)
async def test_http_errors_are_classified_without_leaking_the_key(
    status: int, kind: type[Exception], retried: bool
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(status, json={"status": "ERROR", "error": f"key {KEY} is wrong"})

    clock = FakeClock(T0)
    rest, http = _rest(httpx.MockTransport(handler), clock, max_retries=2)
    async with http:
        with pytest.raises(kind) as info:
            await rest.bars(T0, T0 + 59)
    assert type(info.value) is kind
    assert calls == (3 if retried else 1)
    assert str(status) in str(info.value) and KEY not in str(info.value)


async def test_network_errors_are_unavailable_and_bodies_are_capped() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    clock = FakeClock(T0)
    rest, http = _rest(httpx.MockTransport(refused), clock, max_retries=1)
    async with http:
        with pytest.raises(FeedUnavailable, match="ConnectError"):
            await rest.bars(T0, T0 + 59)
    assert clock.slept == [1.0]

    def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b" " * 5000)

    rest, http = _rest(httpx.MockTransport(huge), clock, max_retries=0, max_body_bytes=4096)
    async with http:
        with pytest.raises(FeedUnavailable, match="larger than 4096"):
            await rest.bars(T0, T0 + 59)


async def test_page_count_is_bounded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"results": [], "next_url": f"{BASE}/again"})

    clock = FakeClock(T0)
    rest, http = _rest(httpx.MockTransport(handler), clock, max_pages=4)
    async with http:
        got = await rest.bars(T0, T0 + 59)
    assert [r.reason for r in got.rejected] == ["backfill_truncated"] * 3


async def test_real_http_against_the_local_server_with_pages() -> None:
    frame = make_frame(40)
    async with MassiveServer(frame, api_key=KEY, page_size=7) as server:
        server.start()  # play without a websocket client
        await server.wait_played(30)
        clock = FakeClock(T0 + 7200)
        async with httpx.AsyncClient() as http:
            rest = MassiveRest(http, KEY, RestOptions(
                SYMBOLS, rest_url=server.rest_url,
                now=clock.now, sleep=clock.sleep,
            ))  # fmt: skip
            got = await rest.bars(T0 + 300, T0 + 7200)
            played = server.played_until
            assert played is not None
            wanted = {k for k in keys_of(frame) if T0 + 300 <= k[1] <= played}
            assert {(b.symbol, b.time) for _, g in got.batches for b in g} == wanted
            assert got.rejected == ()
            assert any("cursor=" in r[0].query for r in server.rest_requests)  # paged
            assert all(KEY not in r[0].geturl() for r in server.rest_requests)

            wrong = MassiveRest(
                http, "wrong-key-000", RestOptions(SYMBOLS, rest_url=server.rest_url)
            )
            with pytest.raises(FeedAuthFailed, match="401"):
                await wrong.bars(T0, T0 + 60)


async def test_repr_hides_the_key() -> None:
    async with httpx.AsyncClient() as http:
        assert KEY not in repr(MassiveRest(http, KEY, RestOptions(SYMBOLS)))
