"""The replay server speaks Alpaca v2 to a plain websocket client, and serves REST from the same frame."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import polars as pl
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from daemon.feeds.alpaca import rfc3339
from daemon.feeds.replay import ReplaySettings
from tests.daemon.feeds.feedkit import KEY, SECRET, SYMBOLS, T0, make_frame
from tests.daemon.feeds.replay_harness import ReplayHarness


async def _recv(ws: ClientConnection) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), 2))


async def _login(ws: ClientConnection, key: str = KEY, secret: str = SECRET) -> Any:
    assert await _recv(ws) == [{"T": "success", "msg": "connected"}]
    await ws.send(json.dumps({"action": "auth", "key": key, "secret": secret}))
    return await _recv(ws)


async def test_handshake_and_minute_frames_in_alpaca_format() -> None:
    frame = make_frame(4)
    async with (
        ReplayHarness(frame, ReplaySettings(key=KEY, secret=SECRET)) as server,
        connect(server.url) as ws,
    ):
        assert server.url.startswith("ws://127.0.0.1:") and server.url.endswith("/v2/iex")
        assert await _login(ws) == [{"T": "success", "msg": "authenticated"}]
        await ws.send(
            json.dumps({"action": "subscribe", "bars": ["IWM", "SPY"], "dailyBars": ["IWM"]})
        )
        sub = await _recv(ws)
        assert sub[0]["T"] == "subscription"
        assert sub[0]["bars"] == ["IWM", "SPY"] and sub[0]["dailyBars"] == ["IWM"]
        assert sub[0]["updatedBars"] == []
        minutes = [await _recv(ws) for _ in range(4)]
    for i, msgs in enumerate(minutes):
        assert [m["S"] for m in msgs] == ["IWM", "SPY"]  # QQQ was not subscribed
        for m in msgs:
            assert m["T"] == "b" and m["t"] == rfc3339(T0 + 60 * i)
            assert set(m) == {"T", "S", "o", "h", "l", "c", "v", "t", "n", "vw"}
        assert msgs[0]["o"] == 100.0 + 0.25 * i and msgs[0]["v"] == 1000 + i


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"action": "subscribe", "bars": ["IWM"]}, 401),
        ({"action": "dance"}, 400),
    ],
)
async def test_protocol_errors_by_code(request_: dict[str, object], code: int) -> None:
    async with ReplayHarness(make_frame(2)) as server, connect(server.url) as ws:
        await _recv(ws)
        await ws.send(json.dumps(request_))
        reply = await _recv(ws)
    assert reply[0]["T"] == "error" and reply[0]["code"] == code


async def test_wrong_credentials_get_402_and_a_close() -> None:
    async with (
        ReplayHarness(make_frame(2), ReplaySettings(key=KEY, secret=SECRET)) as server,
        connect(server.url) as ws,
    ):
        assert await _login(ws, secret="wrong") == [
            {"T": "error", "code": 402, "msg": "auth failed"}
        ]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)


async def test_no_auth_in_time_gets_404() -> None:
    async with (
        ReplayHarness(make_frame(2), ReplaySettings(auth_timeout_s=0.05)) as server,
        connect(server.url) as ws,
    ):
        await _recv(ws)
        assert (await _recv(ws))[0]["code"] == 404


async def test_refuse_with_answers_auth_with_the_code_and_closes() -> None:
    async with ReplayHarness(make_frame(2)) as server:
        server.refuse_with(406)
        async with connect(server.url) as ws:
            reply = await _login(ws)
            assert reply == [{"T": "error", "code": 406, "msg": "connection limit exceeded"}]
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 2)
        server.refuse_with(None)
        async with connect(server.url) as ws:
            assert (await _login(ws))[0]["msg"] == "authenticated"


async def test_speed_is_minutes_per_second() -> None:
    async with (
        ReplayHarness(make_frame(11), ReplaySettings(speed=40.0)) as server,
        connect(server.url) as ws,
    ):
        await _login(ws)
        await ws.send(json.dumps({"action": "subscribe", "bars": ["*"]}))
        await _recv(ws)
        started = time.monotonic()
        for _ in range(11):
            assert len(await _recv(ws)) == 3
        elapsed = time.monotonic() - started
    assert 0.2 <= elapsed <= 1.5  # ten intervals of 1/40 s


async def test_kill_silence_and_raw_hooks() -> None:
    async with (
        ReplayHarness(make_frame(400), ReplaySettings(speed=200.0)) as server,
        connect(server.url) as ws,
    ):
        await _login(ws)
        await ws.send(json.dumps({"action": "subscribe", "bars": list(SYMBOLS)}))
        await _recv(ws)
        await _recv(ws)
        server.go_silent()
        await asyncio.sleep(0.05)
        while True:  # drain what was already in flight
            try:
                await asyncio.wait_for(ws.recv(), 0.05)
            except TimeoutError:
                break
        played = server.minutes_played
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.1)
        assert server.minutes_played > played  # the timeline goes on
        assert await server.send_raw('[{"T":"hello"}]') == 1
        assert await _recv(ws) == [{"T": "hello"}]
        assert server.kill_connections() == 1
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)


async def test_rest_serves_only_what_was_played_with_pages() -> None:
    frame = make_frame(30)
    async with (
        ReplayHarness(frame, ReplaySettings(speed=5.0, key=KEY, secret=SECRET)) as server,
        httpx.AsyncClient() as http,
    ):
        url = f"{server.rest_url}/v2/stocks/bars"
        headers = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
        params = {
            "symbols": "IWM,QQQ",
            "timeframe": "1Min",
            "start": rfc3339(T0),
            "end": rfc3339(T0 + 86400),
        }
        before = (await http.get(url, params=params, headers=headers)).json()
        assert before == {"bars": {}, "next_page_token": None}
        server.start()
        await server.wait_played(2)
        first = server.played_until
        rows: list[tuple[str, str]] = []
        token = None
        pages = 0
        while True:
            page = await http.get(
                url,
                params={**params, "limit": "4", **({"page_token": token} if token else {})},
                headers=headers,
            )
            body = page.json()
            rows += [(sym, bar["t"]) for sym, bars in body["bars"].items() for bar in bars]
            pages += 1
            token = body["next_page_token"]
            if token is None:
                break
        last = server.played_until
        assert first is not None and last is not None and last < T0 + 60 * 29
        assert 2 * ((first - T0) // 60 + 1) <= len(rows) <= 2 * ((last - T0) // 60 + 1)
        assert pages == -(-len(rows) // 4)
        assert rows == sorted(rows)  # symbol, then time, like Alpaca
        assert (await http.get(url, params=params)).status_code == 401
        assert (
            await http.get(url, params={**params, "timeframe": "1Day"}, headers=headers)
        ).status_code == 400
        assert (await http.get(f"{server.rest_url}/v2/other", headers=headers)).status_code == 404
        server.fail_rest(503)
        assert (await http.get(url, params=params, headers=headers)).status_code == 503
        assert (await http.get(url, params=params, headers=headers)).status_code == 200


def test_loopback_only_and_frame_checked() -> None:
    with pytest.raises(ValueError, match="loopback"):
        ReplayHarness(make_frame(1), ReplaySettings(host="0.0.0.0"))
    with pytest.raises(ValueError, match="missing"):
        ReplayHarness(pl.DataFrame({"symbol": ["IWM"], "time": [T0]}))
    with pytest.raises(ValueError, match="speed"):
        ReplayHarness(make_frame(1), ReplaySettings(speed=-1.0))
