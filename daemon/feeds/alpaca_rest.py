"""Alpaca market data v2 REST: the `/v2/stocks/bars` backfill.

As documented by Alpaca ("Historical bars"): `GET {rest}/v2/stocks/bars?symbols=..
&timeframe=1Min&start=..&end=..&limit=..&feed=..&page_token=..` with
`APCA-API-KEY-ID` / `APCA-API-SECRET-KEY` headers returns
`{"bars":{sym:[{t,o,h,l,c,v,n,vw}]},"next_page_token":str|null}`, sorted by
symbol then time; 429 when rate limited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import httpx
import msgspec

from daemon.feeds.alpaca_wire import RestBar, bar_or_rejection, excerpt, field_problem, scrub
from daemon.feeds.base import FeedError
from daemon.feeds.reconnect import Received, Rejection
from daemon.feeds.rejects import BarLimits
from daemon.feeds.rest import RestClient, StatusPolicy, http_status_error, status_detail
from daemon.feeds.rest_options import RestOptions
from daemon.warmup import Fetched, Warmup, WarmupRequest, fetch_warmup
from signals.bar import Bar

DEFAULT_REST_URL: Final = "https://data.alpaca.markets"


class _RestPage(msgspec.Struct):
    bars: dict[str, list[msgspec.Raw]] | None = None
    next_page_token: str | None = None


@dataclass(frozen=True)
class BarsPage:
    """One decoded REST page: valid bars, rejections, and the token of the next page."""

    bars: tuple[Bar, ...]
    rejected: tuple[Rejection, ...]
    next_page_token: str | None


def parse_bars_page(
    body: bytes, symbols: frozenset[str], now_s: float, max_future_s: float = 300.0
) -> BarsPage:
    """Decode a `/v2/stocks/bars` response body. Never raises: a bad envelope is one rejection."""
    try:
        page = msgspec.json.decode(body, type=_RestPage)
    except (msgspec.DecodeError, RecursionError) as exc:
        return BarsPage((), (Rejection("bad_response", f"{exc}: {excerpt(body)}"),), None)
    bars: list[Bar] = []
    rejected: list[Rejection] = []
    limits = BarLimits(symbols, now_s, max_future_s)
    for symbol, rows in (page.bars or {}).items():
        for raw in rows:
            try:
                msg = msgspec.json.decode(raw, type=RestBar)
            except msgspec.ValidationError as exc:
                rejected.append(Rejection(field_problem(exc), f"{exc}: {excerpt(bytes(raw))}"))
                continue
            except (msgspec.DecodeError, RecursionError):
                rejected.append(Rejection("bad_message", excerpt(bytes(raw))))
                continue
            result = bar_or_rejection(symbol, msg, minute=True, limits=limits)
            if isinstance(result, Rejection):
                rejected.append(result)
            else:
                bars.append(result)
    return BarsPage(tuple(bars), tuple(rejected), page.next_page_token or None)


def rfc3339(epoch_s: int) -> str:
    """`2024-01-02T14:31:00Z` for an epoch second."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AlpacaRest(RestClient):
    """The `/v2/stocks/bars` backfill: pagination, bounded retries on 429 and 5xx, typed errors.

    `http` is owned by the caller. Errors: `FeedThrottled` (429 after the
    retries), `FeedAuthFailed` (401), `FeedFatal` (400/403/404/422: the request
    or the plan is wrong), `FeedUnavailable` (5xx, network, oversized body).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        key: str,
        secret: str,
        options: RestOptions,
        *,
        feed: str = "iex",
    ) -> None:
        o = options
        self._key, self._secret = key, secret
        self._symbols = tuple(o.symbols)
        self._symbol_set = frozenset(self._symbols)
        self._url = f"{(o.rest_url or DEFAULT_REST_URL).rstrip('/')}/v2/stocks/bars"
        self._feed = feed
        self._now, self._max_future_s = o.now, o.max_future_s
        self._page_limit = 10_000 if o.page_limit is None else o.page_limit
        self._max_pages = 100 if o.max_pages is None else o.max_pages
        headers = {"APCA-API-KEY-ID": key, "APCA-API-SECRET-KEY": secret}
        super().__init__(http, o.name or "alpaca", headers, o.sleep, o.limits(32 << 20))

    def __repr__(self) -> str:
        return f"AlpacaRest(url={self._url!r}, symbols={self._symbols!r})"

    async def bars(
        self, start_s: int, end_s: int, timeframe: Literal["1Min", "1Day"] = "1Min"
    ) -> Received:
        """Bars with start in `[start_s, end_s]` for every symbol, as kind `backfill`.

        Daily bars (`1Day`, for warm-up) keep Alpaca's time, midnight in New York.
        """
        params = {
            "symbols": ",".join(self._symbols),
            "timeframe": timeframe,
            "start": rfc3339(start_s),
            "end": rfc3339(end_s),
            "limit": str(self._page_limit),
            "feed": self._feed,
            "adjustment": "raw",
            "sort": "asc",
        }
        bars: list[Bar] = []
        rejected: list[Rejection] = []
        token: str | None = None
        for _ in range(self._max_pages):
            query = params if token is None else {**params, "page_token": token}
            body = await self._get(self._url, query)
            page = parse_bars_page(body, self._symbol_set, self._now(), self._max_future_s)
            bars.extend(page.bars)
            rejected.extend(Rejection(r.reason, self._scrub(r.detail)) for r in page.rejected)
            token = page.next_page_token
            if token is None:
                break
        else:
            rejected.append(
                Rejection("backfill_truncated", f"stopped after {self._max_pages} pages")
            )
        return Received((("backfill", tuple(bars)),), tuple(rejected))

    def _status_error(self, status: int, headers: httpx.Headers, body: bytes) -> FeedError:
        detail = status_detail(status, body, ("message",), self._scrub)
        policy = StatusPolicy(fatal=(400, 403, 404, 422), now=self._now)
        return http_status_error(self._name, status, headers, detail, policy)

    def _scrub(self, text: str) -> str:
        return scrub(self._key, self._secret, text)


async def fetch_alpaca_warmup(
    key: str, secret: str, request: WarmupRequest, *, feed: str = "iex"
) -> Warmup:
    """The start-up history from `/v2/stocks/bars`: daily bars, then minutes."""
    now = int(request.now)

    async def fetch(http: httpx.AsyncClient, first_daily: int, first_minute: int) -> Fetched:
        options = RestOptions(request.symbols, rest_url=request.rest_url)
        rest = AlpacaRest(http, key, secret, options, feed=feed)
        daily = await rest.bars(first_daily, now, timeframe="1Day")
        return daily, await rest.bars(first_minute, now, timeframe="1Min")

    return await fetch_warmup(fetch, request)
