"""The Telegram sink through the real python-telegram-bot client against a local Bot API:
fan-out, filters, flood control, blocked users, migrations, parse fallback, timeouts, retries."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.sinks.base import SinkRejected, SinkUnavailable
from daemon.sinks.render import render_html, render_text
from daemon.telegram.sink import TelegramSink, TelegramSinkOptions
from daemon.telegram.subscribers import NEW_YORK, QuietHours, SubscriberStore
from signals.alerts import Alert
from tests.daemon.telegram.botapi import BotApiServer, Call
from tests.daemon.telegram.kit import GROUP, TOKEN, USER, FakeBackend, make_alert, running_bot

# PTB's own RetryAfter.__init__ reads its deprecated `retry_after` (v22.2+): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

CHATS = (USER, 5001, 5002, 5003, 5004)
SUPERGROUP = -1001234567890


@asynccontextmanager
async def sink_on(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend, **options: Any
) -> AsyncIterator[TelegramSink]:
    """A sink over a running bot: fast pacing, quick give-up, unless `options` say otherwise."""
    defaults: dict[str, Any] = {
        "rate_per_chat_s": 0.01,
        "rate_global_per_s": 1000.0,
        "backoff_s": 0.05,
        "max_wait_s": 5.0,
    }
    async with (
        running_bot(api, store, backend) as bot,
        TelegramSink(bot.bot, store, TelegramSinkOptions(**(defaults | options))) as sink,
    ):
        yield sink


async def deliver(sink: TelegramSink, alert: Alert, timeout_s: float = 10.0) -> int:
    """Send like the outbox does: retry on SinkUnavailable after its delay; the attempts."""
    deadline = time.monotonic() + timeout_s
    for attempt in range(1, 100):
        try:
            await sink.send(alert)
            return attempt
        except SinkUnavailable as exc:
            assert time.monotonic() < deadline, exc
            await asyncio.sleep(exc.retry_after_s or 0.05)
    raise AssertionError("never delivered")


def texts(api: BotApiServer, chat_id: int) -> list[str | None]:
    return [c.text for c in api.sent(chat_id)]


def to(chat_id: int) -> Callable[[Call], bool]:
    return lambda c: c.method == "sendMessage" and c.chat_id == chat_id


async def test_each_subscriber_gets_the_html_rendering(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    for chat in CHATS[:3]:
        store.subscribe(chat, chat)
    alert = make_alert(title="IWM <breakout> & run")
    async with sink_on(api, store, backend) as sink:
        await sink.send(alert)
    html = render_html(alert)
    assert "IWM &lt;breakout&gt; &amp; run" in html
    for chat in CHATS[:3]:
        [call] = api.sent(chat)
        assert (call.text, call.parse_mode) == (html, "HTML")
    assert api.sent(CHATS[3]) == []


async def test_filters_skip_for_good_rather_than_queue(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    # 23:30 in New York: inside 22:00-07:00 quiet hours.
    now = datetime(2026, 3, 10, 23, 30, tzinfo=NEW_YORK).timestamp()
    clock = [now]
    wants_all, spy_only, strong_only, muted, quiet = CHATS
    for chat in CHATS:
        store.subscribe(chat, chat)
    store.set_symbols(spy_only, ["SPY"])
    store.set_min_severity(strong_only, "strong")
    store.set_muted_until(muted, now + 3600)
    store.set_quiet(quiet, QuietHours.parse("22:00-07:00"))
    alert = make_alert(severity="notable")
    async with sink_on(api, store, backend, clock=lambda: clock[0]) as sink:
        await sink.send(alert)
        assert [c.chat_id for c in api.sent()] == [wants_all]
        # Hours later, mute and quiet hours are over: a retry of the same alert sends nothing.
        clock[0] = now + 9 * 3600
        await sink.send(alert)
        assert [c.chat_id for c in api.sent()] == [wants_all]
        # A new alert does reach the chats that are no longer muted or quiet.
        await sink.send(make_alert(1, severity="notable"))
    assert {c.chat_id for c in api.sent()[1:]} == {wants_all, muted, quiet}
    assert len(api.sent()) == 4
    assert store.served(alert.id) == {
        wants_all: "sent",
        spy_only: "skipped",
        strong_only: "skipped",
        muted: "skipped",
        quiet: "skipped",
    }


async def test_flood_control_then_everything_in_order_without_duplicates(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    for chat in CHATS:
        store.subscribe(chat, chat)
    alerts = [make_alert(n) for n in range(50)]
    async with sink_on(api, store, backend) as sink:
        api.flood(1.5, retry_after=1)
        started = time.monotonic()
        for alert in alerts:
            await deliver(sink, alert)
        elapsed = time.monotonic() - started
    expected = [render_html(a) for a in alerts]
    assert len(set(expected)) == len(alerts)  # each alert reads differently (its minute)
    for chat in CHATS:
        assert texts(api, chat) == expected, f"chat {chat}: order or duplicates"
    refused = [c for c in api.calls if c.status == 429]
    # Everybody waits out each retry_after: a couple of rounds of refusals, not a storm.
    assert 0 < len(refused) <= 3 * len(CHATS)
    first_ok = min(c.at for c in api.sent())
    assert first_ok - min(c.at for c in refused) >= 1.4  # nothing got through during the flood
    assert elapsed < 10


async def test_a_blocked_user_is_deactivated_and_not_an_alert_failure(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    blocked, fine = CHATS[:2]
    store.subscribe(blocked, blocked)
    store.subscribe(fine, fine)
    api.block(blocked)
    async with sink_on(api, store, backend) as sink:
        await sink.send(make_alert(0))  # no SinkError
        await sink.send(make_alert(1))
    sub = store.get(blocked)
    assert sub is not None and not sub.active
    assert [c.status for c in api.calls if c.chat_id == blocked] == [403]
    assert len(api.sent(fine)) == 2


async def test_group_migration_moves_the_subscriber_and_resends_there(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    store.subscribe(GROUP, USER)
    store.set_min_severity(GROUP, "notable")
    api.migrate(GROUP, SUPERGROUP)
    async with sink_on(api, store, backend) as sink:
        await sink.send(make_alert(0))
        await sink.send(make_alert(1))
    assert store.get(GROUP) is None
    moved = store.get(SUPERGROUP)
    assert moved is not None and moved.active and moved.min_severity == "notable"
    assert [c.status for c in api.calls if c.chat_id == GROUP] == [400]
    assert texts(api, SUPERGROUP) == [render_html(make_alert(0)), render_html(make_alert(1))]


async def test_unparseable_html_falls_back_to_plain_text(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    picky, fine = CHATS[:2]
    store.subscribe(picky, picky)
    store.subscribe(fine, fine)
    api.reject_entities(picky)
    alert = make_alert()
    async with sink_on(api, store, backend) as sink:
        with capture_logs() as logs:
            await sink.send(alert)
    [call] = api.sent(picky)
    assert (call.text, call.parse_mode) == (render_text(alert), None)
    assert "<b>" not in render_text(alert)
    assert [(c.text, c.parse_mode) for c in api.sent(fine)] == [(render_html(alert), "HTML")]
    assert [e["chat_id"] for e in logs if e["event"] == "telegram.parse_fallback"] == [picky]


async def test_a_read_timeout_counts_as_maybe_delivered_and_is_not_resent(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    slow, fine = CHATS[:2]
    store.subscribe(slow, slow)
    store.subscribe(fine, fine)
    api.slow(1.0, chat_id=slow, times=5)
    alert = make_alert()
    async with sink_on(api, store, backend, send_timeout_s=0.3) as sink:
        with capture_logs() as logs:
            await sink.send(alert)  # no SinkUnavailable: nothing to retry
            await sink.send(alert)  # an outbox retry all the same
        await asyncio.sleep(0.8)  # let the late answer arrive and be dropped
    assert len([c for c in api.calls if c.chat_id == slow]) == 1
    assert len(api.sent(fine)) == 1
    assert store.served(alert.id) == {slow: "maybe", fine: "sent"}
    maybe = [e for e in logs if e["event"] == "alert.maybe_delivered"]
    assert [(e["chat_id"], e["alert_id"]) for e in maybe] == [(slow, alert.id)]


async def test_still_failing_chats_raise_unavailable_and_a_retry_serves_only_them(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    served_first, *later = CHATS[:3]
    store.subscribe(served_first, served_first)
    alert = make_alert()
    async with sink_on(api, store, backend, max_wait_s=1.0) as sink:
        await sink.send(alert)
        for chat in later:
            store.subscribe(chat, chat)
        api.flood(0.3, retry_after=2)  # longer than max_wait_s: give up at once
        with pytest.raises(SinkUnavailable) as caught:
            await sink.send(alert)
        assert caught.value.retry_after_s == 2
        assert TOKEN not in str(caught.value) and "canary" not in repr(caught.value)
        await asyncio.sleep(0.35)
        await sink.send(alert)
    assert len(api.sent(served_first)) == 1  # never resent
    for chat in later:
        assert len(api.sent(chat)) == 1
        assert [c.status for c in api.calls if c.chat_id == chat] == [429, 200]


async def test_refused_everywhere_is_a_rejection_remembered_per_chat(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    store.subscribe(USER, USER)
    api.reject(USER, "Bad Request: message is too long")
    alert = make_alert()
    async with sink_on(api, store, backend) as sink:
        with pytest.raises(SinkRejected, match="too long"):
            await sink.send(alert)
        await sink.send(alert)  # a retry does not try that chat again
    assert len([c for c in api.calls if c.chat_id == USER]) == 1
    assert store.served(alert.id) == {USER: "rejected"}


async def test_sends_are_paced_per_chat_and_overall(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    store.subscribe(USER, USER)
    async with sink_on(api, store, backend, rate_per_chat_s=0.2) as sink:
        for n in range(4):
            await sink.send(make_alert(n))
    times = [c.at for c in api.sent(USER)]
    # Stamped where the server reads each request: network jitter moves stamps a little,
    # an unpaced sink would put them milliseconds apart.
    assert all(b - a >= 0.15 for a, b in itertools.pairwise(times)), times

    for chat in range(7001, 7011):
        store.subscribe(chat, chat)
    store.unsubscribe(USER)
    async with sink_on(api, store, backend, rate_global_per_s=20.0) as sink:
        await sink.send(make_alert(9))
    times = sorted(c.at for c in api.sent() if c.chat_id and c.chat_id > 7000)
    assert len(times) == 10
    assert times[-1] - times[0] >= 9 / 20 - 0.06  # 0.45 s paced; ~0.05 s unpaced


PNG = b"\x89PNG\r\n\x1a\nnot really a picture"


async def test_a_chart_goes_with_the_alert_as_its_caption(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    store.subscribe(USER, USER)
    store.subscribe(5001, 5001)
    drawn: list[str] = []

    def chart(alert: Alert) -> bytes:
        drawn.append(alert.id)
        return PNG

    alert = make_alert()
    async with sink_on(api, store, backend, chart=chart) as sink:
        await sink.send(alert)
    for chat in (USER, 5001):
        (call,) = api.sent(chat)
        assert call.method == "sendPhoto" and call.files["photo"] == PNG
        assert call.text == render_html(alert)
    assert drawn == [alert.id]  # drawn once for every chat


async def test_without_a_picture_or_with_a_long_alert_the_alert_goes_as_text(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    store.subscribe(USER, USER)
    drawn: list[str] = []

    def chart(alert: Alert) -> bytes | None:
        drawn.append(alert.id)
        return None if alert.symbol == "SPY" else PNG

    def text(alert: Alert) -> str:  # the plain rendering is how long the caption would be
        return "long " * 300 if alert.title == "long" else render_text(alert)

    long = make_alert(1, title="long")
    async with sink_on(api, store, backend, chart=chart, render_text=text) as sink:
        await sink.send(make_alert(0, symbol="SPY"))
        await sink.send(long)
    assert [c.method for c in api.sent(USER)] == ["sendMessage", "sendMessage"]
    assert drawn == [make_alert(0, symbol="SPY").id]  # the long one is not drawn at all


async def test_attach_chart_sends_the_symbols_chart_from_the_bot(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend
) -> None:
    store.subscribe(USER, USER)
    async with running_bot(api, store, backend, attach_chart=True) as bot:
        await bot.send(make_alert())
    (call,) = api.sent(USER)
    assert call.method == "sendPhoto" and call.files["photo"][:8] == b"\x89PNG\r\n\x1a\n"
    assert len(call.files["photo"]) > 20_000  # a drawn chart, not a stub
