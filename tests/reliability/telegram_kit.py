"""What the Telegram reliability suites share: the subscribed chats, an allowlisted user who is
not an admin, and the production sink with fast pacing."""

from __future__ import annotations

from typing import Any

from telegram import Bot

from daemon.telegram.sink import TelegramSink, TelegramSinkOptions
from daemon.telegram.subscribers import SubscriberStore
from tests.daemon.telegram.kit import USER

CHATS = (USER, 5001, 5002, 5003, 5004)
ALLOWED = 2100  # allowlisted, not an admin


def fast_sink(bot: Bot, store: SubscriberStore, **options: Any) -> TelegramSink:
    """The production sink with fast pacing (the pacing has its own tests)."""
    defaults: dict[str, Any] = {"rate_per_chat_s": 0.01, "rate_global_per_s": 1000.0}
    return TelegramSink(bot, store, TelegramSinkOptions(**(defaults | options)))
