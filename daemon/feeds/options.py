"""What every stream feed is built with, besides its credentials: one frozen, checked struct.

`LoopSettings` is what the reconnect loop needs (policy, watchdog, first
backfill, the injectable clock); `FeedOptions` adds what a provider's
connections need (symbols, endpoints, limits, timeouts). A provider's
constructor takes its credentials, a `FeedOptions`, and only the knobs that
are its own (Alpaca's stream, Finnhub's bar timer), so the daemon builds any
provider's feed from one typed value.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from daemon.feeds.market_hours import xnys_is_open
from daemon.feeds.retry import ReconnectPolicy
from signals.bar import SYMBOL_PATTERN

MIN_FRAME_BYTES = 1024


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """The reconnect loop's knobs. `now` is a wall clock (epoch seconds) and `sleep` its
    matching sleep, so tests can run fake time; `is_market_open(epoch_s)` gates the silence
    watchdog (`silence_timeout_s <= 0` disables it); `warmup_s` is how far back of `now` the
    first backfill reaches; `http_transport` swaps httpx's transport for the backfills."""

    policy: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    silence_timeout_s: float = 180.0
    warmup_s: float = 3600.0
    http_timeout_s: float = 30.0
    http_transport: httpx.AsyncBaseTransport | None = None
    now: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    is_market_open: Callable[[float], bool] = xnys_is_open
    rand: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        if self.warmup_s < 0:
            raise ValueError(f"warmup_s must be >= 0, got {self.warmup_s}")


@dataclass(frozen=True, kw_only=True)
class FeedOptions(LoopSettings):
    """Everything a stream feed takes but its credentials and its provider's own knobs.

    `symbols` come out deduplicated, in order. `url` and `rest_url` override the
    provider's endpoints (proxies, a replay server); `name` its default name.
    `max_frame_bytes` caps incoming websocket messages (bigger ones close the
    connection with 1009, counted as `frame_too_big`); `max_future_s` is how far
    ahead of `now` a bar may start. Construction raises `ValueError` naming the
    first bad field.
    """

    symbols: Sequence[str] = field(kw_only=False)
    url: str | None = None
    rest_url: str | None = None
    name: str | None = None
    max_frame_bytes: int = 1 << 20
    open_timeout_s: float = 10.0
    handshake_timeout_s: float = 15.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    max_future_s: float = 300.0

    def __post_init__(self) -> None:
        wanted = tuple(dict.fromkeys(self.symbols))
        bad = [s for s in wanted if not isinstance(s, str) or not SYMBOL_PATTERN.fullmatch(s)]
        if not wanted or bad:
            raise ValueError(f"symbols must be 1+ tickers matching [A-Z0-9.-]{{1,10}}, bad: {bad}")
        object.__setattr__(self, "symbols", wanted)  # frozen: set once, here
        if self.max_frame_bytes < MIN_FRAME_BYTES:
            raise ValueError(
                f"max_frame_bytes must be >= {MIN_FRAME_BYTES}, got {self.max_frame_bytes}"
            )
        positive = {
            "open_timeout_s": self.open_timeout_s,
            "handshake_timeout_s": self.handshake_timeout_s,
            "http_timeout_s": self.http_timeout_s,
            "max_future_s": self.max_future_s,
        }
        for label, value in positive.items():
            if not value > 0:
                raise ValueError(f"{label} must be > 0, got {value}")
        super().__post_init__()
