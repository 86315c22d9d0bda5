"""Massive (formerly Polygon.io) stocks REST: the `/v2/aggs` minute backfill.

As documented by Massive ("REST / Stocks / Custom Bars"): `GET
{rest}/v2/aggs/ticker/{sym}/range/1/minute/{from_ms}/{to_ms}
?adjusted=true&sort=asc&limit=50000` returns `{"results":[{t,o,h,l,c,v,..}],
"next_url":..}` with `t` the bar start in ms. The key travels as
`Authorization: Bearer` (as Massive's own client sends it), so no URL we
request or log carries it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

import httpx
import msgspec

from daemon.feeds.base import (
    FeedAuthFailed,
    FeedError,
    FeedFatal,
    FeedThrottled,
    FeedUnavailable,
)
from daemon.feeds.massive_wire import DETAIL_CHARS, excerpt, field_problem, minute_bar, scrub
from daemon.feeds.reconnect import Received, Rejection
from daemon.feeds.wserrors import retry_after_s
from signals.bar import Bar

DEFAULT_REST_URL: Final = "https://api.massive.com"


class _RestAgg(msgspec.Struct):
    t: int
    o: float
    h: float
    l: float  # noqa: E741 - the wire name
    c: float
    v: float


class _RestPage(msgspec.Struct):
    results: list[msgspec.Raw] | None = None
    next_url: str | None = None


@dataclass(frozen=True)
class AggsPage:
    """One decoded REST page: valid bars, rejections, and the URL of the next page."""

    bars: tuple[Bar, ...]
    rejected: tuple[Rejection, ...]
    next_url: str | None


def parse_aggs_page(
    body: bytes, symbol: str, symbols: frozenset[str], now_s: float, max_future_s: float = 300.0
) -> AggsPage:
    """Decode a `/v2/aggs` response for `symbol`. Never raises: a bad envelope is one rejection."""
    try:
        page = msgspec.json.decode(body, type=_RestPage)
    except (msgspec.DecodeError, RecursionError) as exc:
        return AggsPage((), (Rejection("bad_response", f"{exc}: {excerpt(body)}"),), None)
    bars: list[Bar] = []
    rejected: list[Rejection] = []
    for raw in page.results or ():
        try:
            m = msgspec.json.decode(raw, type=_RestAgg)
        except msgspec.ValidationError as exc:
            rejected.append(Rejection(field_problem(exc, "t"), f"{exc}: {excerpt(bytes(raw))}"))
            continue
        except (msgspec.DecodeError, RecursionError):
            rejected.append(Rejection("bad_message", excerpt(bytes(raw))))
            continue
        result = minute_bar(
            symbol,
            m.t,
            (m.o, m.h, m.l, m.c, m.v),
            symbols=symbols,
            now_s=now_s,
            max_future_s=max_future_s,
        )
        if isinstance(result, Rejection):
            rejected.append(result)
        else:
            bars.append(result)
    return AggsPage(tuple(bars), tuple(rejected), page.next_url or None)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


class MassiveRest:
    """The `/v2/aggs` minute backfill: one request per symbol, `next_url` pages, bounded retries.

    `http` is owned by the caller. Retries 429, 5xx and network errors a few
    times; then raises `FeedThrottled` (429), `FeedAuthFailed` (401),
    `FeedFatal` (400/403/404: the request or the plan is wrong) or
    `FeedUnavailable`. A `next_url` pointing at another host is not followed:
    the key is never sent anywhere but `rest_url`.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_key: str,
        symbols: Sequence[str],
        rest_url: str = DEFAULT_REST_URL,
        name: str = "massive",
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_future_s: float = 300.0,
        page_limit: int = 50_000,
        max_pages: int = 20,
        max_retries: int = 3,
        max_retry_wait_s: float = 60.0,
        max_body_bytes: int = 32 << 20,
    ) -> None:
        self._http, self._name, self._key = http, name, api_key
        self._symbols = tuple(symbols)
        self._symbol_set = frozenset(self._symbols)
        self._base = rest_url.rstrip("/")
        self._now, self._sleep, self._max_future_s = now, sleep, max_future_s
        self._page_limit, self._max_pages = page_limit, max_pages
        self._max_retries, self._max_retry_wait_s = max_retries, max_retry_wait_s
        self._max_body_bytes = max_body_bytes

    def __repr__(self) -> str:
        return f"MassiveRest(url={self._base!r}, symbols={self._symbols!r})"

    async def bars(
        self, start_s: int, end_s: int, *, timespan: Literal["minute", "day"] = "minute"
    ) -> Received:
        """Bars with start in `[start_s, end_s]` for every symbol, as kind `backfill`.

        `timespan="day"`: daily bars, which Massive stamps at midnight New York.
        """
        bars: list[Bar] = []
        rejected: list[Rejection] = []
        for symbol in self._symbols:
            url = (
                f"{self._base}/v2/aggs/ticker/{symbol}/range/1/{timespan}/"
                f"{start_s * 1000}/{end_s * 1000}"
            )
            params: dict[str, str] | None = {
                "adjusted": "true",
                "sort": "asc",
                "limit": str(self._page_limit),
            }
            for _ in range(self._max_pages):
                body = await self._get(url, params)
                page = parse_aggs_page(
                    body, symbol, self._symbol_set, self._now(), self._max_future_s
                )
                rejected.extend(Rejection(r.reason, self._scrub(r.detail)) for r in page.rejected)
                for bar in page.bars:
                    if start_s <= bar.time <= end_s:
                        bars.append(bar)
                    else:  # a forming minute would shadow the complete live bar
                        rejected.append(Rejection("outside_window", f"{symbol} {bar.time}"))
                if page.next_url is None:
                    break
                if _origin(page.next_url) != _origin(self._base):
                    rejected.append(Rejection("backfill_truncated", "next_url on another host"))
                    break
                url, params = page.next_url, None  # next_url carries the query
            else:
                rejected.append(
                    Rejection(
                        "backfill_truncated", f"{symbol}: stopped after {self._max_pages} pages"
                    )
                )
        return Received((("backfill", tuple(bars)),), tuple(rejected))

    async def _get(self, url: str, params: dict[str, str] | None) -> bytes:
        attempt = 0
        while True:
            try:
                return await self._get_once(url, params)
            except (FeedUnavailable, FeedThrottled) as exc:
                if attempt >= self._max_retries:
                    raise
                wait = exc.retry_after_s if isinstance(exc, FeedThrottled) else None
                await self._sleep(
                    min(self._max_retry_wait_s, wait if wait is not None else 2.0**attempt)
                )
                attempt += 1

    async def _get_once(self, url: str, params: dict[str, str] | None) -> bytes:
        headers = {"Authorization": f"Bearer {self._key}"}
        try:
            async with self._http.stream("GET", url, params=params, headers=headers) as resp:
                if resp.status_code == 200:
                    return await self._read(resp, self._max_body_bytes)
                body = await self._read(resp, 64 << 10)
                raise self._status_error(resp.status_code, resp.headers, body)
        except httpx.InvalidURL as exc:
            raise FeedFatal(self._name, self._scrub(f"invalid REST URL: {exc}")) from exc
        except httpx.HTTPError as exc:
            raise FeedUnavailable(
                self._name, self._scrub(f"REST {type(exc).__name__}: {exc}")
            ) from exc

    async def _read(self, resp: httpx.Response, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise FeedUnavailable(self._name, f"REST response larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _status_error(self, status: int, headers: httpx.Headers, body: bytes) -> FeedError:
        try:
            fields = msgspec.json.decode(body, type=dict[str, object])
            message = str(fields.get("error") or fields.get("message") or "")
        except (msgspec.DecodeError, RecursionError):
            message = ""
        detail = self._scrub(f"REST HTTP {status} {message[:DETAIL_CHARS]}".rstrip())
        if status == 429:
            return FeedThrottled(self._name, detail, retry_after_s(headers.multi_items()))
        if status == 401:
            return FeedAuthFailed(self._name, detail)
        if status in (400, 403, 404):  # a bad request, or a plan without this data
            return FeedFatal(self._name, detail)
        return FeedUnavailable(self._name, detail)

    def _scrub(self, text: str) -> str:
        return scrub(self._key, text)
