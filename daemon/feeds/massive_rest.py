"""Massive (formerly Polygon.io) stocks REST: the `/v2/aggs` minute backfill.

As documented by Massive ("REST / Stocks / Custom Bars"): `GET
{rest}/v2/aggs/ticker/{sym}/range/1/minute/{from_ms}/{to_ms}
?adjusted=true&sort=asc&limit=50000` returns `{"results":[{t,o,h,l,c,v,..}],
"next_url":..}` with `t` the bar start in ms. The key travels as
`Authorization: Bearer` (as Massive's own client sends it), so no URL we
request or log carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

import httpx
import msgspec

from daemon.feeds.base import FeedError
from daemon.feeds.massive_wire import excerpt, field_problem, minute_bar, scrub
from daemon.feeds.reconnect import Received, Rejection
from daemon.feeds.rejects import BarLimits
from daemon.feeds.rest import RestClient, StatusPolicy, http_status_error, status_detail
from daemon.feeds.rest_options import RestOptions
from daemon.warmup import Fetched, Warmup, WarmupRequest, fetch_warmup
from signals.bar import Bar

DEFAULT_REST_URL: Final = "https://api.massive.com"
_STATUS: Final = StatusPolicy(fatal=(400, 403, 404))


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
    limits = BarLimits(symbols, now_s, max_future_s)
    for raw in page.results or ():
        try:
            m = msgspec.json.decode(raw, type=_RestAgg)
        except msgspec.ValidationError as exc:
            rejected.append(Rejection(field_problem(exc, "t"), f"{exc}: {excerpt(bytes(raw))}"))
            continue
        except (msgspec.DecodeError, RecursionError):
            rejected.append(Rejection("bad_message", excerpt(bytes(raw))))
            continue
        result = minute_bar(symbol, m.t, (m.o, m.h, m.l, m.c, m.v), limits=limits)
        if isinstance(result, Rejection):
            rejected.append(result)
        else:
            bars.append(result)
    return AggsPage(tuple(bars), tuple(rejected), page.next_url or None)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


class MassiveRest(RestClient):
    """The `/v2/aggs` minute backfill: one request per symbol, `next_url` pages, bounded retries.

    `http` is owned by the caller. Retries 429, 5xx and network errors a few
    times; then raises `FeedThrottled` (429), `FeedAuthFailed` (401),
    `FeedFatal` (400/403/404: the request or the plan is wrong) or
    `FeedUnavailable`. A `next_url` pointing at another host is not followed:
    the key is never sent anywhere but `rest_url`.
    """

    def __init__(self, http: httpx.AsyncClient, api_key: str, options: RestOptions) -> None:
        o = options
        self._key = api_key
        self._symbols = tuple(o.symbols)
        self._symbol_set = frozenset(self._symbols)
        self._base = (o.rest_url or DEFAULT_REST_URL).rstrip("/")
        self._now, self._max_future_s = o.now, o.max_future_s
        self._page_limit = 50_000 if o.page_limit is None else o.page_limit
        self._max_pages = 20 if o.max_pages is None else o.max_pages
        headers = {"Authorization": f"Bearer {api_key}"}
        super().__init__(http, o.name or "massive", headers, o.sleep, o.limits(32 << 20))

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

    def _status_error(self, status: int, headers: httpx.Headers, body: bytes) -> FeedError:
        detail = status_detail(status, body, ("error", "message"), self._scrub)
        return http_status_error(self._name, status, headers, detail, _STATUS)

    def _scrub(self, text: str) -> str:
        return scrub(self._key, text)


async def fetch_massive_warmup(api_key: str, request: WarmupRequest) -> Warmup:
    """The start-up history from `/v2/aggs`: daily aggregates, then minutes."""
    now = int(request.now)

    async def fetch(http: httpx.AsyncClient, first_daily: int, first_minute: int) -> Fetched:
        rest = MassiveRest(http, api_key, RestOptions(request.symbols, rest_url=request.rest_url))
        daily = await rest.bars(first_daily, now, timespan="day")
        return daily, await rest.bars(first_minute, now, timespan="minute")

    return await fetch_warmup(fetch, request)
