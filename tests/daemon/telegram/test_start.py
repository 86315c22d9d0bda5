"""A Bot API that misbehaves at start-up, through the real python-telegram-bot client against
the local double's outages: the menu is best-effort, start failures are classified, carry no
token and close everything, and the same bot can be entered again once the API is back."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from telegram.error import TelegramError

from daemon.secrets import Secret
from daemon.sinks.base import SinkUnavailable
from daemon.sinks.render import render_html
from daemon.telegram.bot import BotOptions, TelegramAuthError, TelegramBot, TelegramStartError
from daemon.telegram.commands import PUBLIC_COMMANDS
from daemon.telegram.subscribers import SubscriberStore
from tests.daemon.telegram.botapi import BotApiServer
from tests.daemon.telegram.conftest import LoopNoise
from tests.daemon.telegram.kit import (
    SECRET_PART,
    TOKEN,
    USER,
    FakeBackend,
    ask,
    make_alert,
    settings,
)

# PTB's own RetryAfter.__init__ reads its deprecated `retry_after` (v22.2+): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

RIGHT = Secret(TOKEN)
WRONG = Secret("123456789:AAwrongTOKENwrongTOKENwrongTOKEN1234")
AUTH_MESSAGE = "telegram: the Bot API refused the bot token (check TELEGRAM_BOT_TOKEN)"


def fast_bot(
    api: BotApiServer,
    backend: FakeBackend,
    store: SubscriberStore | str | os.PathLike[str],
    *,
    token: Secret = RIGHT,
    api_base_url: str | None = None,
    **options: Any,
) -> TelegramBot:
    """A bot with small timeouts and backoffs, so every failure here takes well under a second."""
    defaults: dict[str, Any] = {
        "poll_timeout_s": 1.0,
        "send_timeout_s": 1.0,
        "connect_timeout_s": 1.0,
        "send_attempts": 3,
        "send_backoff_s": 0.05,
        "start_attempts": 3,
        "start_backoff_s": 0.05,
        "start_backoff_max_s": 0.2,
        "menu_retry_s": 0.05,
        "menu_retry_max_s": 0.2,
        "rng": random.Random(7),
    }
    overrides = {} if api_base_url is None else {"api_base_url": api_base_url}
    return TelegramBot(
        settings(api, **overrides),
        token,
        backend,
        store,
        options=BotOptions(**(defaults | options)),
    )


def track_stores(monkeypatch: pytest.MonkeyPatch) -> list[SubscriberStore]:
    """Every store `SubscriberStore.open` opens from now on."""
    opened: list[SubscriberStore] = []
    real = SubscriberStore.open

    def tracking(path: str | os.PathLike[str], **kwargs: Any) -> SubscriberStore:
        store = real(path, **kwargs)
        opened.append(store)
        return store

    monkeypatch.setattr(SubscriberStore, "open", tracking)
    return opened


async def until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def chain(exc: BaseException) -> list[BaseException]:
    """`exc` and everything behind it (`__cause__`, `__context__`), transitively."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is not None and all(item is not s for s in seen):
            seen.append(item)
            todo += [item.__cause__, item.__context__]
    return seen


async def assert_closed(api: BotApiServer, stores: list[SubscriberStore]) -> None:
    """What a failed start opened is closed: the bot's own store, its HTTP connections."""
    for store in stores:
        with pytest.raises(sqlite3.ProgrammingError):
            store.active()
    await until(lambda: api.open_connections == 0)


async def test_menu_answering_500_does_not_fail_the_start_and_is_set_once_it_heals(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend, loop_noise: LoopNoise
) -> None:
    api.fail("setMyCommands")
    with capture_logs() as logs:
        async with fast_bot(api, backend, store) as bot:
            reply = await ask(api, "/start")  # the bot works meanwhile
            assert (reply.text or "").startswith("Subscribed.")
            await api.wait_for(lambda c: c.fault == "error", count=3)
            assert not bot.menu.published and api.commands == []
            api.heal()
            await asyncio.wait_for(bot.menu.wait(), 3.0)
            assert bot.menu.published
            assert [c["command"] for c in api.commands] == [n for n, _ in PUBLIC_COMMANDS]
    assert len(api.faulted("setMyCommands")) == api.fault_count >= 3
    assert all(c.status == 500 for c in api.faulted())
    failed = [e for e in logs if e["event"] == "telegram.menu_failed"]
    assert [e["log_level"] for e in failed][:2] == ["warning", "debug"]
    assert [e for e in failed if e["log_level"] == "warning"] == failed[:1]  # one warning
    assert failed[0]["error"] == "NetworkError: Internal Server Error"
    [done] = [e for e in logs if e["event"] == "telegram.menu_set"]
    assert done["attempts"] == len(api.faulted()) + 1


async def test_a_hung_menu_neither_delays_the_start_nor_outlives_the_bot(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend, loop_noise: LoopNoise
) -> None:
    api.hang("setMyCommands")
    started = time.monotonic()
    async with fast_bot(api, backend, store, send_timeout_s=5.0) as bot:
        assert time.monotonic() - started < 2.0  # not waiting out the 5 s read timeout
        await api.wait_for(lambda c: c.fault == "hang")
        menu = bot.menu
    # Left with the request in flight: cancelled and awaited, nothing pending.
    assert not menu.published and menu.attempts == 1
    await asyncio.sleep(0.3)
    assert [c.method for c in api.calls].count("setMyCommands") == 1
    await until(lambda: api.open_connections == 0)


async def test_get_me_answering_500_fails_the_start_then_the_same_bot_starts_and_sends(
    api: BotApiServer,
    backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loop_noise: LoopNoise,
) -> None:
    stores = track_stores(monkeypatch)
    api.fail("getMe")
    bot = fast_bot(api, backend, tmp_path / "tg.sqlite")
    started = time.monotonic()
    with capture_logs() as logs, pytest.raises(TelegramStartError) as caught:
        await bot.__aenter__()
    assert time.monotonic() - started < 3.0
    error = caught.value
    assert type(error) is TelegramStartError and error.call == "getMe"
    assert str(error) == "telegram: getMe failed (3 tries): NetworkError: Internal Server Error"
    assert error.__cause__ is None and error.__context__ is None
    assert len(api.faulted("getMe")) == 3 == len(api.calls)  # each try reached the server
    assert [e["attempt"] for e in logs if e["event"] == "telegram.start_failed"] == [1, 2]
    await assert_closed(api, stores)
    with pytest.raises(SinkUnavailable, match="not running"):
        await bot.send(make_alert())

    api.heal()  # the supervisor's next try, on the same object
    await bot.__aenter__()
    try:
        await ask(api, "/start")
        await bot.send(make_alert())
        await asyncio.wait_for(bot.menu.wait(), 3.0)
    finally:
        await bot.__aexit__(None, None, None)
    [alert] = [c for c in api.sent(USER) if "breakout" in (c.text or "")]
    assert alert.parse_mode == "HTML"
    assert len(stores) == 2
    await assert_closed(api, stores)


async def test_delete_webhook_answering_500_closes_the_initialised_app(
    api: BotApiServer,
    backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loop_noise: LoopNoise,
) -> None:
    stores = track_stores(monkeypatch)
    api.fail("deleteWebhook")
    bot = fast_bot(api, backend, tmp_path / "tg.sqlite", start_attempts=2)
    with pytest.raises(TelegramStartError) as caught:
        await bot.__aenter__()
    assert str(caught.value) == (
        "telegram: deleteWebhook failed (2 tries): NetworkError: Internal Server Error"
    )
    assert caught.value.call == "deleteWebhook"
    assert [c.method for c in api.calls] == ["getMe", "deleteWebhook", "deleteWebhook"]
    await assert_closed(api, stores)
    api.heal()
    async with bot:
        await ask(api, "/help")
    await assert_closed(api, stores)


@pytest.mark.parametrize("refusal", ["401 wrong token", "404 malformed"])
async def test_a_refused_token_is_an_auth_error_at_once_without_the_token(
    api: BotApiServer,
    store: SubscriberStore,
    backend: FakeBackend,
    loop_noise: LoopNoise,
    refusal: str,
) -> None:
    if refusal.startswith("401"):
        bot = fast_bot(api, backend, store, token=WRONG, start_backoff_s=5.0)
    else:  # what Telegram answers a token it cannot even parse; PTB raises InvalidToken too
        base = api.base_url.replace("/bot", "/nobot")
        bot = fast_bot(api, backend, store, api_base_url=base, start_backoff_s=5.0)
    started = time.monotonic()
    with pytest.raises(TelegramAuthError) as caught:
        await bot.__aenter__()
    assert time.monotonic() - started < 2.0  # no retry (that would wait 5 s)
    error = caught.value
    assert isinstance(error, TelegramStartError) and error.call == "getMe"
    assert str(error) == AUTH_MESSAGE
    assert error.__cause__ is None and error.__context__ is None
    for item in chain(error):
        assert not isinstance(item, TelegramError)
    printed = "".join(traceback.format_exception(error))
    for secret in (TOKEN, SECRET_PART, WRONG.reveal(), WRONG.reveal().split(":")[1]):
        for text in (str(error), repr(error), printed):
            assert secret not in text
    if refusal.startswith("401"):
        assert [(c.method, c.status) for c in api.calls] == [("getMe", 401)]
    await until(lambda: api.open_connections == 0)


async def test_a_hung_get_me_fails_the_start_within_the_timeouts(
    api: BotApiServer,
    backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loop_noise: LoopNoise,
) -> None:
    stores = track_stores(monkeypatch)
    api.hang("getMe")
    bot = fast_bot(api, backend, tmp_path / "tg.sqlite", send_timeout_s=0.3, start_attempts=2)
    started = time.monotonic()
    with pytest.raises(TelegramStartError) as caught:
        await bot.__aenter__()
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 2.0  # two read timeouts of 0.3 s and a short backoff
    assert str(caught.value).startswith("telegram: getMe failed (2 tries): TimedOut: ")
    assert "\n" not in str(caught.value)
    assert [(c.method, c.status, c.fault) for c in api.faulted()] == [("getMe", 0, "hang")] * 2
    await assert_closed(api, stores)
    api.heal()
    async with bot:
        await ask(api, "/help")


async def test_a_start_cancelled_midway_closes_everything_and_can_be_retried(
    api: BotApiServer,
    backend: FakeBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loop_noise: LoopNoise,
) -> None:
    """A supervisor that bounds each start (`asyncio.timeout`) cancels it mid-request."""
    stores = track_stores(monkeypatch)
    api.hang("getMe")
    bot = fast_bot(api, backend, tmp_path / "tg.sqlite", send_timeout_s=5.0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(bot.__aenter__(), 0.3)
    assert len(api.faulted("getMe")) == 1
    await assert_closed(api, stores)
    api.heal()
    async with bot:
        await ask(api, "/help")


async def test_flood_control_longer_than_the_backoff_cap_gives_up_at_once(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend, loop_noise: LoopNoise
) -> None:
    api.fail("getMe", status=429, retry_after=30)
    bot = fast_bot(api, backend, store)
    with pytest.raises(TelegramStartError) as caught:
        await bot.__aenter__()
    assert caught.value.retry_after_s == 30
    assert str(caught.value) == (
        "telegram: getMe failed (1 try): RetryAfter: Flood control exceeded. Retry in 30 seconds"
    )
    assert [(c.method, c.status) for c in api.calls] == [("getMe", 429)]


async def test_get_updates_failing_at_start_is_retried_by_the_polling(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend, loop_noise: LoopNoise
) -> None:
    api.fail("getUpdates", for_s=0.5)
    async with fast_bot(api, backend, store):
        await api.wait_for(lambda c: c.fault == "error")
        await ask(api, "/help")  # polling came back on its own
    assert api.faulted("getUpdates")


async def test_sends_while_every_call_answers_500_are_unavailable_then_go_through(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend, loop_noise: LoopNoise
) -> None:
    store.subscribe(USER, USER)
    alert = make_alert()
    async with fast_bot(api, backend, store) as bot:
        api.fail(for_s=1.0)  # everything: sends, polling, the menu
        with pytest.raises(SinkUnavailable) as caught:
            await bot.send(alert)
        assert str(caught.value) == (
            "telegram: 1 of 1 chats not reached yet (NetworkError: Internal Server Error)"
        )
        assert len(api.faulted("sendMessage")) == 3  # send_attempts
        assert store.served(alert.id) == {}  # nothing recorded: the outbox retries it all
        await until(lambda: api.faults.match("sendMessage") is None)
        await bot.send(alert)
        await ask(api, "/help")  # polling is back too
    delivered, _help = api.sent(USER)
    assert delivered.text == render_html(alert)
    assert store.served(alert.id) == {USER: "sent"}


async def test_a_send_that_hangs_counts_as_maybe_delivered_not_as_an_error(
    api: BotApiServer, store: SubscriberStore, backend: FakeBackend, loop_noise: LoopNoise
) -> None:
    """The sink's documented trade-off: past the read timeout Telegram may have delivered it,
    so it is recorded as `maybe` and not resent (no duplicate), rather than retried."""
    store.subscribe(USER, USER)
    alert = make_alert()
    async with fast_bot(api, backend, store, send_timeout_s=0.3) as bot:
        api.hang("sendMessage")
        await bot.send(alert)  # neither SinkUnavailable nor SinkRejected
        api.heal()
        await bot.send(alert)
    assert store.served(alert.id) == {USER: "maybe"}
    assert [c.method for c in api.calls].count("sendMessage") == 1
