"""The Bot API's wire format as the local double (`botapi.py`) speaks it: the record of one
request (`Call`), request bodies (form, JSON, multipart), error bodies, and Telegram's own
checks of a send's text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tests.daemon.telegram.faults import FaultKind
from tests.daemon.telegram.parse_mode import (
    CAPTION_LIMIT,
    MESSAGE_LIMIT,
    EntityError,
    parse_html,
    utf16_units,
)

JSON = dict[str, Any]
_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class Call:
    """One request as the server saw it, and the HTTP status it answered (0: none, a hang)."""

    method: str  # as PTB spelled it, e.g. sendMessage
    params: dict[str, str]
    files: dict[str, bytes]
    at: float  # time.monotonic()
    status: int = 200
    description: str = ""  # the error's description, if refused
    visible: str | None = None  # the text or caption after entity parsing, if accepted
    fault: FaultKind | None = None  # an outage answered instead of the method (faults.py)

    @property
    def chat_id(self) -> int | None:
        """The `chat_id` parameter, if any."""
        value = self.params.get("chat_id")
        return None if value is None else int(value)

    @property
    def text(self) -> str | None:
        """The message text, or a photo's caption."""
        return self.params.get("text", self.params.get("caption"))

    @property
    def parse_mode(self) -> str | None:
        """The `parse_mode` parameter, if any."""
        return self.params.get("parse_mode")

    @property
    def ok(self) -> bool:
        """Whether the server accepted it."""
        return self.status == 200


def validate(call: Call) -> tuple[int, JSON] | None:
    """Telegram's own checks of a send's text or caption; sets `call.visible` when it passes."""
    caption = call.method.lower() == "sendphoto"
    raw = call.params.get("caption", "") if caption else call.params.get("text", "")
    if call.parse_mode == "HTML":
        try:
            visible = parse_html(raw)
        except EntityError as exc:
            return error(400, f"Bad Request: can't parse entities: {exc}")
    else:
        visible = raw
    if not caption and not visible.strip():
        return error(400, "Bad Request: message text is empty")
    if utf16_units(visible) > (CAPTION_LIMIT if caption else MESSAGE_LIMIT):
        what = "message caption" if caption else "message"
        return error(400, f"Bad Request: {what} is too long")
    call.visible = visible
    return None


def error(code: int, description: str, **parameters: int) -> tuple[int, JSON]:
    payload: JSON = {"ok": False, "error_code": code, "description": description}
    if parameters:
        payload["parameters"] = parameters
    return code, payload


def multipart(
    content_type: str, body: bytes, params: dict[str, str], files: dict[str, bytes]
) -> None:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    assert boundary is not None, content_type
    for part in body.split(b"--" + boundary[1].encode())[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = next(
            (h for h in head.decode().split("\r\n") if h.lower().startswith("content-disposition")),
            "",
        )
        names = dict(_PARAM.findall(disposition))
        if "filename" in names:
            files[names["name"]] = content.removesuffix(b"\r\n")
        else:
            params[names["name"]] = content.removesuffix(b"\r\n").decode()
