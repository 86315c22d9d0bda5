"""A real, local Telegram Bot API server for tests: HTTP/1.1 on 127.0.0.1, a free port.

It speaks the Bot API's wire format (`/bot<token>/<method>`, form, multipart
or JSON bodies, `{"ok": true, "result": ...}` / `{"ok": false, "error_code":
..., "description": ..., "parameters": ...}`) for what python-telegram-bot
calls here: getMe, deleteWebhook, getUpdates (long poll, offsets confirm),
sendMessage, sendPhoto, setMyCommands, getMyCommands. A wrong token gets 401.

Tests inject updates (`push_message`, `push_migration`) and script failures:
`flood` (429 with `retry_after` for a while), `block` (403), `migrate` (400
with `migrate_to_chat_id`), `reject_entities` (400 can't parse entities),
`reject` (any other 400) and `slow` (answer late, after delivering: a read
timeout on a message that did arrive). Every request is kept in `calls`.
Nothing is ever logged: the path carries the token.

Outages (`faults.py`), for every method or chosen ones, until `heal()` or
for `for_s` seconds: `fail` answers HTTP 500 with Telegram's error body,
`hang` never answers (the client's read timeout fires). They come before
any other check, the token's included, as when Telegram itself is down.
Each request that got one is a `Call` with `fault` set: `faulted()`,
`fault_count`. For example, every call failing for a minute, then recovery:

    api.fail(for_s=60.0)
    api.fail("setMyCommands")             # only the menu, until api.heal()
    api.hang("getMe", for_s=2.0)
    assert api.fault_count > 0

Like Telegram, it refuses what Telegram would refuse, whatever the script:
text in parse mode HTML that `parse_html` cannot parse (400 "can't parse
entities: ..."), a text longer than 4096 UTF-16 code units after entity
parsing or a caption longer than 1024 ("message is too long", "message
caption is too long"), an empty text ("message text is empty") and a body
that is not UTF-8 (the checks of the text live in `parse_mode.py`; their
names are importable from here too). `Call.visible` is what the recipient
would read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl, urlsplit

from tests.daemon.telegram import wire
from tests.daemon.telegram.faults import MAX_HANG_S, Fault, Faults, Outages
from tests.daemon.telegram.parse_mode import (
    CAPTION_LIMIT,
    MESSAGE_LIMIT,
    TAGS,
    EntityError,
    parse_html,
    utf16_units,
)
from tests.daemon.telegram.updates import Updates
from tests.daemon.telegram.wire import JSON, Call

__all__ = [
    "CAPTION_LIMIT",
    "JSON",
    "MESSAGE_LIMIT",
    "SEND_METHODS",
    "TAGS",
    "BotApiServer",
    "Call",
    "EntityError",
    "parse_html",
    "utf16_units",
]

SEND_METHODS = ("sendmessage", "sendphoto")
_PATH = re.compile(r"/bot([^/]+)/([A-Za-z]+)")
# A hung request looks this often whether it may go.
_HANG_POLL_S = 0.02


@dataclass
class _Slow:
    chat_id: int | None
    delay_s: float
    times: int


@dataclass
class _Script:
    flood_until: float = 0.0
    retry_after: int = 1
    blocked: set[int] = field(default_factory=set)
    migrated: dict[int, int] = field(default_factory=dict)
    bad_entities: set[int | None] = field(default_factory=set)
    bad_request: dict[int, str] = field(default_factory=dict)
    slow: list[_Slow] = field(default_factory=list)


class BotApiServer(Updates, Outages):
    """A Bot API server on 127.0.0.1 for `token`. Use as an async context manager."""

    def __init__(self, token: str, *, username: str = "iwm_test_bot") -> None:
        self._token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.username = username
        self.calls: list[Call] = []
        self.commands: list[JSON] = []
        self.script = _Script()
        self.faults = Faults()
        self._init_updates()
        self._closing = False
        self._closed = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Closing the sockets (not cancelling the handlers) lets each handler end on its own.
        self._closing = True
        self._closed.set()
        self._changed.set()
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        if self._conns:
            await asyncio.wait(self._conns, timeout=5.0)
        await self._server.wait_closed()

    @property
    def open_connections(self) -> int:
        """Client connections still open (a client that closed its pool leaves none)."""
        return len(self._conns)

    @property
    def base_url(self) -> str:
        """What PTB's `base_url` should be: the token is appended to it."""
        return f"http://127.0.0.1:{self.port}/bot"

    # -- what happened --------------------------------------------------------------------

    def sent(
        self, chat_id: int | None = None, *, methods: Iterable[str] = SEND_METHODS
    ) -> list[Call]:
        """Accepted sends (to `chat_id`, or anywhere), in arrival order."""
        wanted = {m.lower() for m in methods}
        return [
            c
            for c in self.calls
            if c.ok and c.method.lower() in wanted and (chat_id is None or c.chat_id == chat_id)
        ]

    async def wait_for(
        self, predicate: Callable[[Call], bool], count: int = 1, timeout_s: float = 5.0
    ) -> list[Call]:
        """Wait until `count` calls match `predicate`; the matching calls."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [c for c in self.calls if predicate(c)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(found)} of {count} expected calls in {timeout_s}s")
            await asyncio.sleep(0.01)

    # -- scripting ------------------------------------------------------------------------

    def flood(self, duration_s: float, retry_after: int) -> None:
        """Answer every send with 429 `retry_after` for the next `duration_s`."""
        self.script.flood_until = time.monotonic() + duration_s
        self.script.retry_after = retry_after

    def block(self, chat_id: int) -> None:
        """The user of `chat_id` blocked the bot: 403 on every send there."""
        self.script.blocked.add(chat_id)

    def migrate(self, chat_id: int, new_chat_id: int) -> None:
        """Group `chat_id` became supergroup `new_chat_id`: 400 with migrate_to_chat_id."""
        self.script.migrated[chat_id] = new_chat_id
        self._chats[new_chat_id] = {"id": new_chat_id, "type": "supergroup", "title": "Group"}

    def reject_entities(self, chat_id: int | None = None) -> None:
        """400 can't parse entities for HTML sends to `chat_id` (None: everywhere)."""
        self.script.bad_entities.add(chat_id)

    def reject(self, chat_id: int, description: str) -> None:
        """400 `description` (e.g. "Bad Request: message is too long") on sends to `chat_id`."""
        self.script.bad_request[chat_id] = description

    def slow(self, delay_s: float, *, chat_id: int | None = None, times: int = 1) -> None:
        """Deliver the next `times` sends (to `chat_id`) but answer `delay_s` late."""
        self.script.slow.append(_Slow(chat_id, delay_s, times))

    # -- HTTP -----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers.add(writer)
        try:
            while not self._closing:
                request_line = await reader.readline()
                if not request_line:
                    break
                verb, target, _ = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                answer = await self._dispatch(reader, verb, target, headers, body)
                if answer is None:  # a hang: drop the connection unanswered
                    break
                status, payload = answer
                data = json.dumps(payload).encode()
                writer.write(
                    f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-request (a cancelled long poll, a read timeout)
        finally:
            writer.close()
            self._writers.discard(writer)
            self._conns.discard(task)

    async def _dispatch(
        self,
        reader: asyncio.StreamReader,
        verb: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
    ) -> tuple[int, JSON] | None:
        url = urlsplit(target)
        match = _PATH.fullmatch(url.path)
        if match is None:
            return wire.error(404, "Not Found")
        params = dict(parse_qsl(url.query))
        files: dict[str, bytes] = {}
        content_type = headers.get("content-type", "")
        try:
            if content_type.startswith("application/x-www-form-urlencoded"):
                params.update(parse_qsl(body.decode(), errors="strict"))
            elif content_type.startswith("application/json"):
                params.update(
                    {
                        k: v if isinstance(v, str) else json.dumps(v)
                        for k, v in json.loads(body).items()
                    }
                )
            elif content_type.startswith("multipart/form-data"):
                wire.multipart(content_type, body, params, files)
            for value in params.values():
                value.encode()  # a lone surrogate (from a JSON escape) is not UTF-8 either
        except UnicodeError:
            utf8 = False
        else:
            utf8 = True
        call = Call(match[2], params, files, time.monotonic())
        self.calls.append(call)
        fault = self.faults.match(call.method)
        if fault is not None:
            call.fault = fault.kind
            call.status, call.description = fault.status, fault.description
            if fault.kind == "hang":
                call.status, call.description = 0, "no answer"
                await self._hang(reader, fault, call.method)
                return None
            if fault.retry_after is not None:
                return wire.error(fault.status, fault.description, retry_after=fault.retry_after)
            return wire.error(fault.status, fault.description)
        if not utf8:
            call.status, call.description = 400, "Bad Request: strings must be encoded in UTF-8"
            return wire.error(400, call.description)
        if match[1] != self._token:
            call.status = 401
            return wire.error(401, "Unauthorized")
        api = getattr(self, f"_api_{match[2].lower()}", None)
        if api is None:
            call.status = 404
            return wire.error(404, "Not Found: method not found")
        status, payload = await api(call)
        return status, payload

    async def _hang(self, reader: asyncio.StreamReader, fault: Fault, method: str) -> None:
        """Hold a request while `fault` lasts, the client waits and the server runs."""
        give_up = time.monotonic() + MAX_HANG_S
        while (
            self.faults.holds(fault, method)
            and not reader.at_eof()  # the client timed out and closed the connection
            and not self._closing
            and time.monotonic() < give_up
        ):
            await asyncio.sleep(_HANG_POLL_S)

    # -- methods --------------------------------------------------------------------------

    def _me(self) -> JSON:
        return {"id": self.bot_id, "is_bot": True, "first_name": "IWM", "username": self.username}

    async def _api_getme(self, call: Call) -> tuple[int, JSON]:
        return 200, {
            "ok": True,
            "result": self._me() | {"can_join_groups": True, "can_read_all_group_messages": False},
        }

    async def _api_deletewebhook(self, call: Call) -> tuple[int, JSON]:
        return 200, {"ok": True, "result": True, "description": "Webhook is already deleted"}

    async def _api_setmycommands(self, call: Call) -> tuple[int, JSON]:
        self.commands = json.loads(call.params.get("commands", "[]"))
        return 200, {"ok": True, "result": True}

    async def _api_getmycommands(self, call: Call) -> tuple[int, JSON]:
        return 200, {"ok": True, "result": self.commands}

    async def _api_getupdates(self, call: Call) -> tuple[int, JSON]:
        offset = int(call.params.get("offset", "0"))
        limit = int(call.params.get("limit", "100"))
        deadline = time.monotonic() + float(call.params.get("timeout", "0"))
        # An offset confirms every update before it: they are gone for good.
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        while not self._updates and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break
        return 200, {"ok": True, "result": self._updates[:limit]}

    def _refuse(self, call: Call, chat_id: int) -> tuple[int, JSON] | None:
        script = self.script
        if time.monotonic() < script.flood_until:
            return wire.error(
                429,
                f"Too Many Requests: retry after {script.retry_after}",
                retry_after=script.retry_after,
            )
        if chat_id in script.blocked:
            return wire.error(403, "Forbidden: bot was blocked by the user")
        if chat_id in script.migrated:
            return wire.error(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=script.migrated[chat_id],
            )
        if chat_id in script.bad_request:
            return wire.error(400, script.bad_request[chat_id])
        if call.parse_mode == "HTML" and (
            None in script.bad_entities or chat_id in script.bad_entities
        ):
            return wire.error(
                400,
                'Bad Request: can\'t parse entities: Unsupported start tag "x" at byte offset 0',
            )
        return wire.validate(call)

    async def _send(self, call: Call, content: Callable[[], JSON]) -> tuple[int, JSON]:
        chat_id = call.chat_id
        assert chat_id is not None, call
        refused = self._refuse(call, chat_id)
        if refused is not None:
            call.status, call.description = refused[1]["error_code"], refused[1]["description"]
            return refused
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": self._chat(chat_id),
            "from": self._me(),
        } | content()
        for slow in self.script.slow:
            if slow.times > 0 and slow.chat_id in (None, chat_id):
                slow.times -= 1
                # Delivered already: only the answer is late (cut short when the server closes).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), slow.delay_s)
                break
        return 200, {"ok": True, "result": message}

    async def _api_sendmessage(self, call: Call) -> tuple[int, JSON]:
        return await self._send(call, lambda: {"text": call.visible})

    async def _api_sendphoto(self, call: Call) -> tuple[int, JSON]:
        photo = {"file_id": "photo1", "file_unique_id": "u1", "width": 800, "height": 480}

        def content() -> JSON:
            return {"photo": [photo]} | ({"caption": call.visible} if call.visible else {})

        return await self._send(call, content)
