"""The updates side of the local Bot API double (`botapi.py`): chats, and the messages tests
push for the bot's long poll to pick up (`push_message`, `push_migration`)."""

from __future__ import annotations

import asyncio
import itertools
import time

from tests.daemon.telegram.wire import JSON


class Updates:
    """Pending updates and the chats they come from; `BotApiServer` serves them to getUpdates."""

    def _init_updates(self) -> None:
        self._chats: dict[int, JSON] = {}
        self._updates: list[JSON] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._changed = asyncio.Event()

    def _chat(self, chat_id: int, chat_type: str | None = None) -> JSON:
        if chat_type is not None or chat_id not in self._chats:
            kind = chat_type or ("private" if chat_id > 0 else "group")
            chat: JSON = {"id": chat_id, "type": kind}
            if kind == "private":
                chat["first_name"] = f"user{chat_id}"
            else:
                chat["title"] = f"chat{chat_id}"
            self._chats[chat_id] = chat
        return self._chats[chat_id]

    def _push(self, key: str, message: JSON) -> int:
        update_id = next(self._update_ids)
        self._updates.append({"update_id": update_id, key: message})
        self._changed.set()
        self._changed = asyncio.Event()
        return update_id

    def push_message(
        self,
        text: str,
        *,
        chat_id: int,
        user_id: int,
        chat_type: str | None = None,
        forwarded: bool = False,
        edited: bool = False,
        extra: JSON | None = None,
    ) -> int:
        """A user's message (a command if it starts with /) as the next update; its id.

        `extra` fields are merged into the message last (e.g. `sender_chat`,
        `is_automatic_forward`, another `forward_origin`).
        """
        now = int(time.time())
        message: JSON = {
            "message_id": next(self._message_ids),
            "date": now,
            "chat": self._chat(chat_id, chat_type),
            "from": {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"},
            "text": text,
        }
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        if forwarded:
            message["forward_origin"] = {
                "type": "user",
                "date": now - 60,
                "sender_user": {"id": user_id + 1, "is_bot": False, "first_name": "someone"},
            }
        if edited:
            message["edit_date"] = now
        if extra:
            message |= extra
        return self._push("edited_message" if edited else "message", message)

    def push_migration(self, chat_id: int, new_chat_id: int) -> int:
        """The service message a group gets when it becomes a supergroup."""
        message: JSON = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": self._chat(chat_id),
            "from": {"id": 1, "is_bot": False, "first_name": "admin"},
            "migrate_to_chat_id": new_chat_id,
        }
        return self._push("message", message)
