"""What a provider's REST client is built with, besides its credentials: one frozen struct."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class RestOptions:
    """The symbols to fetch, where and as whom (`rest_url`, `name`: the provider's defaults
    when None), the injectable clock, how far ahead of `now` a bar may start, and the limits:
    page size and count (provider defaults when None), retries, the longest wait a server
    may ask for, and the largest body read (provider default when None)."""

    symbols: Sequence[str] = field(kw_only=False)
    rest_url: str | None = None
    name: str | None = None
    now: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    max_future_s: float = 300.0
    page_limit: int | None = None
    max_pages: int | None = None
    max_retries: int = 3
    max_retry_wait_s: float = 60.0
    max_body_bytes: int | None = None

    def limits(self, default_body_bytes: int) -> tuple[int, float, int]:
        """(retries, longest wait, body cap) as `RestClient` takes them."""
        body = default_body_bytes if self.max_body_bytes is None else self.max_body_bytes
        return self.max_retries, self.max_retry_wait_s, body
