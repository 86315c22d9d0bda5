"""The 2-year Treasury yield (FRED series DGS2) fetched as CSV over HTTP.

`RatesFetcher` is an async context manager around one `httpx.AsyncClient`:
`await fetcher.fetch()` downloads the CSV, retrying network errors, 429 and
5xx with a capped exponential backoff, and parses it with
`daemon.fred.parse_fred_csv` into a `RatesSeries`. Failures are classified by
what the caller should do:

- `RatesUnavailable`: the server or the network failed and retries ran out;
  try again at the next scheduled fetch, keep the series you have.
- `RatesRejected`: the answer itself is wrong (404, 403, a body that is not a
  FRED CSV, too large); retrying will not help, fix the URL.

Messages never carry more of the URL than its host and path (a FRED API key
would sit in the query).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
import structlog

from daemon.config import FRED_DGS2_URL
from daemon.fred import RatesFileError, parse_fred_csv
from daemon.retry import RetryPolicy, parse_retry_after
from signals.rates import RatesSeries

_log = structlog.get_logger(__name__)

Sleep = Callable[[float], Coroutine[Any, Any, None]]

# The whole DGS2 history (since 1976) is ~250 KB; anything far larger is not it.
MAX_BODY_BYTES = 8 << 20
_USER_AGENT = "iwm-alerts (rates fetch)"


class RatesFetchError(Exception):
    """Base of rates fetch errors; `url` is the fetched URL without its query."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"{url}: {detail}")
        self.url = url
        self.detail = detail


class RatesUnavailable(RatesFetchError):
    """Network error, timeout, 429 or 5xx, still failing after the retries: try again later."""


class RatesRejected(RatesFetchError):
    """A 4xx answer or a body that is not the expected CSV: retrying cannot help."""


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


@dataclass(frozen=True, kw_only=True)
class RatesFetchOptions:
    """How a `RatesFetcher` fetches, besides where.

    `attempts` is the total number of tries; between them the delay doubles
    from `backoff_initial_s` up to `backoff_max_s`, less up to half of itself
    at random, and a server's `Retry-After` is honoured when longer (up to
    `backoff_max_s`): the daemon's `RetryPolicy` with a jitter of 0.5.
    `timeout_s` bounds each phase of one request (connect, read...).
    `transport` swaps the network for tests; `sleep` the waiting, `clock` the
    epoch time an HTTP-date `Retry-After` is counted from.
    """

    series: str = "DGS2"
    timeout_s: float = 20.0
    attempts: int = 4
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 60.0
    transport: httpx.AsyncBaseTransport | None = None
    sleep: Sleep = asyncio.sleep
    clock: Callable[[], float] = time.time
    rng: random.Random | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        initial, cap = self.backoff_initial_s, self.backoff_max_s
        if not 0 < initial <= cap or not math.isfinite(cap):
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


class RatesFetcher:
    """Fetches a FRED series CSV. Use as `async with RatesFetcher(url) as f: series = await f.fetch()`."""

    def __init__(
        self, url: str = FRED_DGS2_URL, options: RatesFetchOptions = RatesFetchOptions()
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"rates url must be http:// or https://, got {_safe_url(url)!r}")
        self.url = url
        self.series = options.series
        self._timeout_s = options.timeout_s
        self._attempts = options.attempts
        self._retry = RetryPolicy(
            base_s=options.backoff_initial_s,
            cap_s=options.backoff_max_s,
            jitter=0.5,
            retry_after_max_s=options.backoff_max_s,
        )
        self._transport = options.transport
        self._sleep = options.sleep
        self._clock = options.clock
        self._rng = options.rng if options.rng is not None else random.Random()
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(
            transport=self._transport,
            timeout=httpx.Timeout(self._timeout_s),
            follow_redirects=True,
            headers={"User-Agent": _USER_AGENT, "Accept": "text/csv, text/plain;q=0.9, */*;q=0.1"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def fetch(self) -> RatesSeries:
        """Download and parse the series; raises `RatesUnavailable` or `RatesRejected`."""
        if self._client is None:
            raise RuntimeError("RatesFetcher.fetch needs `async with RatesFetcher(...)` first")
        where = _safe_url(self.url)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                text = await self._get(self._client, where)
            except _Retryable as exc:
                if attempt == self._attempts:
                    raise RatesUnavailable(
                        where, f"{exc.detail} (after {attempt} attempts)"
                    ) from exc.__cause__
                delay = self._retry.delay_s(attempt, self._rng.random, exc.retry_after_s)
                _log.warning(
                    "rates.fetch_retry",
                    url=where,
                    attempt=attempt,
                    delay_s=round(delay, 3),
                    error=exc.detail,
                )
                await self._sleep(delay)
                continue
            try:
                series = parse_fred_csv(text, where, self.series)
            except RatesFileError as exc:
                raise RatesRejected(where, f"not a {self.series} CSV: {exc}") from exc
            _log.info(
                "rates.fetched",
                url=where,
                series=self.series,
                observations=len(series),
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
            return series

    async def _get(self, client: httpx.AsyncClient, where: str) -> str:
        """One request: the body text, or `_Retryable` / `RatesRejected`."""
        try:
            async with client.stream("GET", self.url) as response:
                status = response.status_code
                if status == 429 or status >= 500:
                    retry = parse_retry_after(response.headers.get("Retry-After"), self._clock())
                    raise _Retryable(f"HTTP {status}", retry)
                if status != 200:
                    raise RatesRejected(where, f"HTTP {status}")
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                    raise RatesRejected(where, f"body of {declared} bytes is over {MAX_BODY_BYTES}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        raise RatesRejected(where, f"body over {MAX_BODY_BYTES} bytes")
                encoding = response.encoding or "utf-8"
        except httpx.TransportError as exc:  # connect, read, timeouts, protocol errors
            raise _Retryable(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            ) from exc
        try:
            return body.decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise RatesRejected(where, f"body is not {encoding} text") from exc


class _Retryable(Exception):
    """Internal: this attempt failed in a way another attempt may not."""

    def __init__(self, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s
