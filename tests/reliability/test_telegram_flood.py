"""Telegram under flood control (issue 8), through the real python-telegram-bot client
against the local Bot API server (`botapi.py`): a 429 window with `retry_after`, ridden out by
the outbox in order and without duplicates."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from daemon.delivery import DeliveryLoop, DeliveryOptions
from daemon.outbox import Outbox
from daemon.sinks.render import render_html
from daemon.telegram.subscribers import SubscriberStore
from tests.daemon.telegram.botapi import BotApiServer
from tests.daemon.telegram.kit import FakeBackend, make_alert, running_bot
from tests.reliability.scale import scale
from tests.reliability.telegram_kit import CHATS, fast_sink

pytestmark = [
    pytest.mark.reliability,
    # PTB's own RetryAfter.__init__ reads its deprecated `retry_after` (v22.2+): not ours to fix.
    pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning"),
]

FLOOD_S = scale(3.0, 30.0)
RETRY_AFTER_S = scale(1, 5)
FLOOD_ALERTS = scale(50, 50)  # the figure in both forms: 5 chats, 250 messages


async def test_a_flood_window_is_ridden_out_in_order_without_duplicates(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend, tmp_path: Path
) -> None:
    for chat in CHATS:
        store.subscribe(chat, chat)
    alerts = [make_alert(n) for n in range(FLOOD_ALERTS)]
    with Outbox.open(tmp_path / "outbox.sqlite", ["telegram"]) as outbox:
        async with running_bot(api, store, backend) as bot:
            # Two tries inside the sink, then SinkUnavailable: the outbox's retry must do the rest.
            sink = fast_sink(bot.bot, store, max_attempts=2, backoff_s=0.05)
            loop = DeliveryLoop(
                outbox,
                sink,
                DeliveryOptions(
                    backoff_initial_s=0.2, backoff_max_s=2.0, idle_s=0.5, log_every_s=0
                ),
            )
            async with asyncio.TaskGroup() as tg:
                runner = tg.create_task(loop.run(), name="delivery.telegram")
                flood_start = time.monotonic()
                api.flood(FLOOD_S, retry_after=RETRY_AFTER_S)
                flood_end = api.script.flood_until
                for alert in alerts:  # they keep coming during the first half of the window
                    outbox.record([alert], None, time.time())
                    loop.wake()
                    await asyncio.sleep(FLOOD_S / 2 / len(alerts))
                deadline = flood_end + 3 * RETRY_AFTER_S + 30.0
                while outbox.depth("telegram") and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                runner.cancel()
            first_attempts = outbox.attempts(alerts[0].id, "telegram")
            stats = outbox.stats()["telegram"]

    expected = [render_html(a) for a in alerts]
    assert len(set(expected)) == len(alerts)  # each alert reads differently (its minute)
    for chat in CHATS:
        assert [c.text for c in api.sent(chat)] == expected, (
            f"chat {chat}: lost, reordered, doubled"
        )
    assert len(api.sent()) == len(CHATS) * len(alerts)
    assert stats["delivered"] == len(alerts) and stats["rejected"] == 0
    assert all(status == "sent" for a in alerts for status in store.served(a.id).values())

    # The fault happened: 429s with retry_after, to every chat, all inside the window, and
    # nothing went through before the window closed.
    refused = [c for c in api.calls if c.status == 429]
    assert {c.chat_id for c in refused} == set(CHATS)
    assert all(flood_start <= c.at <= flood_end for c in refused)
    first_ok = min(c.at for c in api.sent())
    assert first_ok >= flood_end
    # The outbox's retry is what got them through: the sink gave up on the first alert at least
    # once, and the loop counted it.
    assert first_attempts >= 2 and loop.failed >= 1
    # retry_after is honoured, not hammered: one chat is refused at most once per retry_after.
    for chat in CHATS:
        times = [c.at for c in refused if c.chat_id == chat]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap >= 0.9 * RETRY_AFTER_S for gap in gaps), (chat, gaps)
    assert len(refused) <= len(CHATS) * (FLOOD_S / RETRY_AFTER_S + 1)
    last_ok = max(c.at for c in api.sent())
    after_s = last_ok - flood_end
    assert after_s < 2 * RETRY_AFTER_S + 15.0  # generous: 2 shared cores
    print(
        f"\nflood {FLOOD_S:.0f}s retry_after {RETRY_AFTER_S}s: {len(refused)} x 429, "
        f"{len(api.sent())} messages delivered, 0 duplicates, last one {after_s:.2f}s after the"
        f" window, first alert took {first_attempts} outbox attempts"
    )
