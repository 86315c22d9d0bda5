"""Start-up warm-up over REST: daily history for the daily timeframe, recent minutes for RVOL.

Without it the daily indicators would need months of live running before a
first score. A provider that can fetch history gives `fetch_warmup` its own
REST calls (Alpaca and Massive do; Finnhub's candles are a paid extra: it
starts cold). Daily bars come back stamped at midnight New York;
the engine labels a session by its date at 00:00 UTC, so they are relabelled.
Today's partial daily bar is left out: today is rebuilt from its minutes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
import numpy as np
import polars as pl
import structlog

from daemon.feeds.reconnect import Received
from signals.bar import Bar
from signals.sessions import DAY_S, SessionTable

_log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Warmup:
    """History to run through the engines before live bars: daily bars and 1-minute bars."""

    daily: pl.DataFrame | None = None
    minutes: pl.DataFrame | None = None
    today: int | None = None  # label of the session under way: its minutes take the full path


@dataclass(frozen=True, kw_only=True)
class WarmupRequest:
    """What to fetch: daily bars of the last `daily_days` sessions and minutes of the last
    `minute_sessions`, for `symbols`, as of `now`; `rest_url` overrides the provider's REST
    base and `transport` swaps httpx's transport (tests)."""

    symbols: Sequence[str]
    sessions: SessionTable
    now: float
    rest_url: str | None = None
    daily_days: int = 120
    minute_sessions: int = 20
    transport: httpx.AsyncBaseTransport | None = None


def _frame(bars: Sequence[Bar], daily: bool) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "symbol": [b.symbol for b in bars],
            "time": [b.time // DAY_S * DAY_S if daily else b.time for b in bars],
            "open": [float(b.open) for b in bars],
            "high": [float(b.high) for b in bars],
            "low": [float(b.low) for b in bars],
            "close": [float(b.close) for b in bars],
            "volume": [float(b.volume) for b in bars],
        },
        schema={
            "symbol": pl.String,
            "time": pl.Int64,
            **dict.fromkeys(("open", "high", "low", "close", "volume"), pl.Float64),
        },
    )


def today_label(sessions: SessionTable, now: float) -> int | None:
    """The label of the session under way at `now` (or later today), else None."""
    day = int(now) // DAY_S * DAY_S
    hits = [int(x) for x in sessions.label if x == day]
    return hits[0] if hits else None


Fetched = tuple[Received, Received]
"""Daily bars, then minutes."""


async def fetch_warmup(
    fetch: Callable[[httpx.AsyncClient, int, int], Awaitable[Fetched]], request: WarmupRequest
) -> Warmup:
    """Run a provider's `fetch(http, first_daily, first_minute)` over the window `request`
    asks for, and make the `Warmup` of what it returns."""
    r = request
    window = _window(r.sessions, r.now, r.daily_days, r.minute_sessions)
    if window is None:
        return Warmup()
    today, first_daily, first_minute = window
    async with httpx.AsyncClient(transport=r.transport, timeout=30.0) as http:
        daily, minutes = await fetch(http, first_daily, first_minute)
    return _warmup(daily, minutes, today)


def _window(
    sessions: SessionTable, now: float, daily_days: int, minute_sessions: int
) -> tuple[int | None, int, int] | None:
    """(today's label or None, first daily session, first minute) to fetch; None: nothing."""
    today = today_label(sessions, now)
    cutoff = int(now) if today is None else today
    past = np.flatnonzero(sessions.label < cutoff)  # indices of the sessions before today
    if not len(past):
        return None
    first_daily = int(sessions.label[past[max(0, len(past) - max(daily_days, 1))]])
    first_minute = int(sessions.open[past[max(0, len(past) - max(minute_sessions, 1))]])
    return today, first_daily, first_minute


def _warmup(daily: Received, minutes: Received, today: int | None) -> Warmup:
    daily_bars = [b for _, batch in daily.batches for b in batch]
    minute_bars = [b for _, batch in minutes.batches for b in batch]
    daily_frame = _frame(daily_bars, daily=True)
    if today is not None:
        daily_frame = daily_frame.filter(pl.col("time") < today)
    _log.info("warmup.fetched", daily=daily_frame.height, minutes=len(minute_bars),
              rejected=len(daily.rejected) + len(minutes.rejected))  # fmt: skip
    return Warmup(daily=daily_frame, minutes=_frame(minute_bars, daily=False), today=today)
