"""Finnhub REST: the `/stock/candle` minute backfill.

As documented by Finnhub: `GET {rest}/api/v1/stock/candle?symbol=..&resolution=1&from=..&to=..`
(epoch seconds) returns `{"s":"ok","t":[..],"o":[..],"h","l","c","v"}` or
`{"s":"no_data"}`; on many plans it is premium and answers 403 ("You don't
have access to this resource"): then backfill is logged once as
unavailable and the feed runs on without it. The token goes in the
`X-Finnhub-Token` header, so no REST URL carries it.
"""

from __future__ import annotations

from typing import Final

import httpx
import msgspec
import structlog

from daemon.feeds.base import FeedError, FeedFatal
from daemon.feeds.finnhub_wire import excerpt, scrub
from daemon.feeds.reconnect import Received, Rejection
from daemon.feeds.rest import RestClient, StatusPolicy, http_status_error, status_detail
from daemon.feeds.rest_options import RestOptions
from signals.bar import Bar, BarRejected

_log = structlog.get_logger(__name__)

DEFAULT_REST_URL: Final = "https://finnhub.io"
# 403 (a plan without the data) is `_NoAccess`, told apart before this applies.
_STATUS: Final = StatusPolicy(fatal=(400, 404))


class _Candles(msgspec.Struct):
    s: str
    t: list[int] = []
    o: list[float] = []
    h: list[float] = []
    l: list[float] = []  # noqa: E741 - the wire name
    c: list[float] = []
    v: list[float] = []


def parse_candles(
    body: bytes, symbol: str, symbols: frozenset[str], now_s: float, max_future_s: float = 300.0
) -> tuple[list[Bar], list[Rejection]]:
    """Decode a `/stock/candle` response for `symbol`. Never raises: a bad body is one rejection."""
    try:
        page = msgspec.json.decode(body, type=_Candles)
    except (msgspec.DecodeError, RecursionError) as exc:
        return [], [Rejection("bad_response", f"{exc}: {excerpt(body)}")]
    if page.s == "no_data":
        return [], []
    columns = (page.t, page.o, page.h, page.l, page.c, page.v)
    if page.s != "ok" or len({len(col) for col in columns}) != 1:
        return [], [Rejection("bad_response", f"s={page.s[:20]!r} or ragged arrays")]
    bars: list[Bar] = []
    rejected: list[Rejection] = []
    for start, o, h, low, c, v in zip(*columns, strict=True):
        if start < 0 or start % 60:
            rejected.append(Rejection("bad_time", f"{symbol}: {start} is not a minute start"))
        elif start > now_s + max_future_s:
            rejected.append(Rejection("future_time", f"{symbol}: {start} is ahead of the clock"))
        elif symbol not in symbols:
            rejected.append(Rejection("unsubscribed_symbol", f"{symbol[:12]!r} was not asked for"))
        else:
            try:
                bars.append(Bar(symbol, start, o, h, low, c, v))
            except BarRejected as exc:
                rejected.append(Rejection(exc.reason, str(exc)))
    return bars, rejected


class _NoAccess(FeedFatal):
    """HTTP 403: the plan does not include candles."""


class FinnhubRest(RestClient):
    """The `/stock/candle` minute backfill: one request per symbol, bounded retries.

    `http` is owned by the caller. A 403 (candles are premium on many plans)
    turns backfill off for good: logged once as `feed.backfill_unavailable`,
    every later call returns nothing at once. Otherwise retries 429, 5xx and
    network errors a few times, then raises `FeedThrottled`, `FeedAuthFailed`
    (401), `FeedFatal` (400/404) or `FeedUnavailable`.
    """

    def __init__(self, http: httpx.AsyncClient, token: str, options: RestOptions) -> None:
        o = options
        self._token = token
        self._symbols = tuple(o.symbols)
        self._symbol_set = frozenset(self._symbols)
        self._url = f"{(o.rest_url or DEFAULT_REST_URL).rstrip('/')}/api/v1/stock/candle"
        self._now, self._max_future_s = o.now, o.max_future_s
        headers = {"X-Finnhub-Token": token}
        super().__init__(http, o.name or "finnhub", headers, o.sleep, o.limits(8 << 20))
        self.available = True
        """False once the server said the plan has no candles (HTTP 403)."""

    def __repr__(self) -> str:
        return f"FinnhubRest(url={self._url!r}, symbols={self._symbols!r})"

    async def bars(self, start_s: int, end_s: int, *, resolution: str = "1") -> Received:
        """Minute bars (`resolution="D"`: daily) with start in `[start_s, end_s]` for every
        symbol, as kind `backfill`."""
        if not self.available:
            return Received()
        bars: list[Bar] = []
        rejected: list[Rejection] = []
        for symbol in self._symbols:
            params = {
                "symbol": symbol,
                "resolution": resolution,
                "from": str(start_s),
                "to": str(end_s),
            }
            try:
                body = await self._get(self._url, params)
            except _NoAccess as exc:
                self.available = False
                _log.warning("feed.backfill_unavailable", feed=self._name, detail=exc.detail)
                return Received()
            got, bad = parse_candles(
                body, symbol, self._symbol_set, self._now(), self._max_future_s
            )
            rejected.extend(bad)
            for bar in got:
                if start_s <= bar.time <= end_s:
                    bars.append(bar)
                else:  # a forming minute would shadow the complete live bar
                    rejected.append(Rejection("outside_window", f"{symbol} {bar.time}"))
        return Received((("backfill", tuple(bars)),), tuple(rejected))

    def _status_error(self, status: int, headers: httpx.Headers, body: bytes) -> FeedError:
        detail = status_detail(status, body, ("error",), self._scrub)
        if status == 403:
            return _NoAccess(self._name, detail)
        return http_status_error(self._name, status, headers, detail, _STATUS)

    def _scrub(self, text: str) -> str:
        return scrub(self._token, text)
