"""Shared pieces of the Telegram tests: the canary token, a fake backend, alerts, a bot,
and `ask` (a user's message, the bot's reply)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import polars as pl

from daemon.config import TelegramSinkSettings
from daemon.secrets import Secret
from daemon.telegram.backend import BotBackend
from daemon.telegram.bot import BotOptions, TelegramBot
from daemon.telegram.subscribers import SubscriberStore
from signals.alerts import Alert, alert_id
from signals.score import Breakdown, breakdown
from tests.daemon.telegram.botapi import SEND_METHODS, BotApiServer, Call

# Must never show up in a log line, an exception or anything the daemon writes.
TOKEN = "123456789:AAcanaryTOKENcanaryTOKENcanaryTOKEN12"
SECRET_PART = TOKEN.split(":", 1)[1]
ADMIN = 1001
USER = 2002
STRANGER = 3003
GROUP = -4004


class FakeBackend:
    """Daemon state for the commands: three symbols, a breakdown, levels and bars."""

    def __init__(self) -> None:
        self.health_calls = 0
        self.reload_calls = 0
        self.alerts: list[Alert] = []

    def symbols(self) -> Sequence[str]:
        return ("IWM", "SPY", "QQQ")

    def breakdown(self, symbol: str) -> Breakdown | None:
        if symbol == "QQQ":
            return None
        raw = {"rsi": 58.0, "macd": 0.12, "fib": 0.5, "volume": 2.4, "atr": 1.9, "rs": 0.012}
        subs = {"rsi": 55.0, "macd": 61.3, "fib": 80.0, "volume": 72.0, "atr": 50.0, "rs": 69.1}
        return breakdown(raw, subs)

    def levels(self, symbol: str) -> Mapping[str, float | None]:
        return {
            "donchian_high20": 200.9,
            "prior_day_high": 199.1,
            "fib_618": 195.3,
            "fib_382": 190.2,
            "donchian_low20": 150.0,  # far below the bars: off the chart
            "fib_786": None,
        }

    def bars(self, symbol: str, n: int) -> pl.DataFrame:
        close = [195.0 + 5.0 * math.sin(i / 9.0) + i * 0.03 for i in range(n)]
        start = 1_735_776_000  # 2025-01-02, one bar a day
        return pl.DataFrame(
            {
                "time": [start + 86_400 * i for i in range(n)],
                "open": [c - 0.3 * math.cos(i) for i, c in enumerate(close)],
                "high": [c + 0.8 for c in close],
                "low": [c - 0.8 for c in close],
                "close": close,
                "volume": [1e6 * (2.0 + math.sin(i / 3.0)) for i in range(n)],
            }
        )

    def health(self) -> Mapping[str, object]:
        self.health_calls += 1
        return {"feed": "connected", "lag_ms": 120, "outbox_depth": 0}

    def recent_alerts(self, n: int) -> Sequence[Alert]:
        return self.alerts[:n]

    def reload_rules(self) -> str:
        self.reload_calls += 1
        return "3 rules from rules.toml; no change"


def make_alert(
    n: int = 0,
    *,
    symbol: str = "IWM",
    severity: str = "strong",
    title: str = "IWM volume breakout: 3.1\N{MULTIPLICATION SIGN} relative volume",
) -> Alert:
    """Alert number `n` (distinct ids), fired by a bar 60 s after the previous one."""
    bar = 1_750_000_000 + 60 * n
    return Alert(
        id=alert_id("volume_breakout", symbol, "1m", bar),
        rule="volume_breakout",
        symbol=symbol,
        timeframe="1m",
        bar_time=bar,
        time=bar + 60,
        severity=severity,
        title=title,
        values={"rvol": 3.1, "close": 201.35, "level": 200.9, "seq": float(n)},
        score=74.0,
        label="strong bullish",
    )


def settings(api: BotApiServer, **overrides: Any) -> TelegramSinkSettings:
    """Bot settings against `api`, fast pacing, ADMIN as the admin."""
    options: dict[str, Any] = {
        "api_base_url": api.base_url,
        "admin_user_ids": (ADMIN,),
        "rate_per_chat_s": 0.01,
        "rate_global_per_s": 1000.0,
    }
    return TelegramSinkSettings(**(options | overrides))


@asynccontextmanager
async def running_bot(
    api: BotApiServer, store: SubscriberStore, backend: BotBackend, **overrides: Any
) -> AsyncIterator[TelegramBot]:
    """A started `TelegramBot` on `api`, stopped on the way out."""
    async with TelegramBot(
        settings(api, **overrides),
        Secret(TOKEN),
        backend,
        store,
        options=BotOptions(poll_timeout_s=2.0),
    ) as bot:
        yield bot


async def ask(
    api: BotApiServer,
    text: str,
    *,
    chat_id: int = USER,
    user_id: int | None = None,
    chat_type: str | None = None,
) -> Call:
    """Send `text` as a user and return the bot's next message to that chat."""
    before = len(api.sent(chat_id))
    api.push_message(text, chat_id=chat_id, user_id=user_id or chat_id, chat_type=chat_type)
    calls = await api.wait_for(
        lambda c: c.ok and c.chat_id == chat_id and c.method.lower() in SEND_METHODS,
        count=before + 1,
    )
    return calls[before]
