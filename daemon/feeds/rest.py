"""What every provider's REST backfill shares: one GET with a bounded body, bounded retries.

`RestClient._get` sends a GET through the caller's `httpx.AsyncClient`, reads at most
`max_body_bytes` of a 200 (64 KiB of anything else), and turns the outcome into
a body or a `FeedError`: network errors and oversized bodies are
`FeedUnavailable`, an invalid URL is `FeedFatal`, and a status other than 200
is whatever the provider's `_status_error` says. `FeedUnavailable` and
`FeedThrottled` are retried `max_retries` times, waiting 1, 2, 4... seconds, or
the server's `Retry-After` when longer, capped at `max_retry_wait_s` (the
daemon's `RetryPolicy`, without jitter).
What differs per provider (URLs, pagination, auth headers, which statuses are
fatal, where the error message sits) stays in the provider's module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass

import httpx
import msgspec

from daemon.feeds.base import (
    FeedAuthFailed,
    FeedError,
    FeedFatal,
    FeedForbidden,
    FeedThrottled,
    FeedUnavailable,
)
from daemon.feeds.wserrors import retry_after_s
from daemon.retry import RetryPolicy

_ERROR_BODY_BYTES = 64 << 10
_DETAIL_CHARS = 160


class RestClient(ABC):
    """A provider's REST client: `_get` with bounded retries; `http` is owned by the caller.

    `headers` (the credentials) go with every request. A provider says what a
    non-200 answer means in `_status_error` and scrubs its secrets in `_scrub`.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        name: str,
        headers: Mapping[str, str],
        sleep: Callable[[float], Awaitable[None]],
        limits: tuple[int, float, int],
        /,
    ) -> None:
        """`limits`: (max_retries, max_retry_wait_s, max_body_bytes)."""
        self._http, self._name, self._headers, self._sleep = http, name, headers, sleep
        self._max_retries, max_retry_wait_s, self._max_body_bytes = limits
        self._retry = RetryPolicy(
            base_s=1.0, cap_s=max_retry_wait_s, retry_after_max_s=max_retry_wait_s
        )

    @abstractmethod
    def _status_error(self, status: int, headers: httpx.Headers, body: bytes) -> FeedError:
        """The error a non-200 answer means."""

    @abstractmethod
    def _scrub(self, text: str) -> str:
        """`text` without the provider's credentials."""

    async def _get(self, url: str, params: Mapping[str, str] | None) -> bytes:
        """The body of a 200 answer to `GET url?params`, after at most `max_retries` retries."""
        attempt = 0
        while True:
            try:
                return await self._get_once(url, params)
            except (FeedUnavailable, FeedThrottled) as exc:
                if attempt >= self._max_retries:
                    raise
                attempt += 1
                wait = exc.retry_after_s if isinstance(exc, FeedThrottled) else None
                await self._sleep(self._retry.delay_s(attempt, retry_after_s=wait))

    async def _get_once(self, url: str, params: Mapping[str, str] | None) -> bytes:
        try:
            async with self._http.stream("GET", url, params=params, headers=self._headers) as resp:
                if resp.status_code == 200:
                    return await self._read(resp, self._max_body_bytes)
                body = await self._read(resp, _ERROR_BODY_BYTES)
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


def status_detail(
    status: int, body: bytes, keys: tuple[str, ...], scrub: Callable[[str], str]
) -> str:
    """`REST HTTP {status} {message}`, scrubbed: the message is the first of `keys` with a
    non-empty value in a JSON object body (cut to 160 characters), or nothing."""
    try:
        fields = msgspec.json.decode(body, type=dict[str, object])
    except (msgspec.DecodeError, RecursionError):
        fields = {}
    message = str(next((fields[key] for key in keys if fields.get(key)), ""))
    return scrub(f"REST HTTP {status} {message[:_DETAIL_CHARS]}".rstrip())


@dataclass(frozen=True)
class StatusPolicy:
    """What a provider's REST statuses mean beyond the usual: the `fatal` ones (a bad
    request, a plan without this data), and the clock `now` that `X-RateLimit-Reset` needs."""

    fatal: Collection[int]
    now: Callable[[], float] | None = None


def http_status_error(
    name: str, status: int, headers: httpx.Headers, detail: str, policy: StatusPolicy
) -> FeedError:
    """The usual meaning of a REST status: 429 throttled (waiting `Retry-After`, or
    `X-RateLimit-Reset` given the policy's clock), 401 refused, the policy's fatal ones
    fatal, the rest unavailable."""
    fatal, now = policy.fatal, policy.now
    if status == 429:
        now_s = None if now is None else now()  # read the clock only when it matters
        return FeedThrottled(name, detail, retry_after_s(headers.multi_items(), now_s))
    if status == 401:
        return FeedAuthFailed(name, detail)
    if status in fatal:  # a bad request, or a plan without this data
        return FeedForbidden(name, detail) if status == 403 else FeedFatal(name, detail)
    return FeedUnavailable(name, detail)
