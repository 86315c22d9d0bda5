"""Telegram's HTML parse mode, strictly, and its length limits: what the local Bot API server
(`botapi.py`) checks before it accepts a text or a caption.

`parse_html` gives the visible text or raises `EntityError` with Telegram's
words; `utf16_units` counts length as Telegram does, against `MESSAGE_LIMIT`
and `CAPTION_LIMIT`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

MESSAGE_LIMIT = 4096  # UTF-16 code units of a message's text after entity parsing
CAPTION_LIMIT = 1024  # the same for a photo's caption
TAGS = frozenset(
    {
        "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler",
        "a", "code", "pre", "blockquote", "tg-emoji",
    }
)  # fmt: skip
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_ENTITY = re.compile(r"&(?:#([0-9]{1,8})|#[xX]([0-9a-fA-F]{1,8})|([A-Za-z][A-Za-z0-9]*));")
_ATTRIBUTE = re.compile(r"[A-Za-z0-9_-]+")
_SPACE = " \t\n\r\f\v"


class EntityError(ValueError):
    """Text that Telegram refuses in parse mode HTML; the message is its description's tail."""


def utf16_units(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units (a character beyond the BMP is 2)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def parse_html(text: str) -> str:
    """The visible text of `text` in Telegram's HTML parse mode; `EntityError` if refused.

    Stricter than Telegram in one place, as its documentation asks: a `&` that
    starts no entity is refused (Telegram itself shows it as it is). Only the
    supported tags, properly nested: `pre` and `code` contain no other tag
    (but a `code` directly inside a `pre`), an `a` no `a`, a `blockquote` no
    `blockquote`; `span` needs class="tg-spoiler", `tg-emoji` an emoji-id.
    Offsets in the messages are UTF-8 bytes, like Telegram's.
    """
    out: list[str] = []
    open_tags: list[str] = []
    i, n = 0, len(text)

    def at(pos: int) -> str:
        return f"at byte offset {len(text[:pos].encode('utf-8', 'surrogatepass'))}"

    while i < n:
        ch = text[i]
        if ch == "&":
            match = _ENTITY.match(text, i)
            char = _entity(match)
            if match is None or char is None:
                raise EntityError(f"Unsupported HTML entity {text[i : i + 10]!r} {at(i)}")
            out.append(char)
            i = match.end()
        elif ch != "<":
            out.append(ch)
            i += 1
        elif text.startswith("</", i):
            end = text.find(">", i)
            if end < 0:
                raise EntityError(f"Unclosed end tag {at(i)}")
            name = text[i + 2 : end].strip(_SPACE).lower()
            if not open_tags:
                raise EntityError(f'Unexpected end tag "{name}" {at(i)}')
            if name != open_tags[-1]:
                raise EntityError(
                    f'Unmatched end tag {at(i)}, expected "</{open_tags[-1]}>", found "</{name}>"'
                )
            open_tags.pop()
            i = end + 1
        else:
            i = _start_tag(text, i, open_tags, at)
    if open_tags:
        raise EntityError(f'Can\'t find end tag corresponding to start tag "{open_tags[-1]}"')
    return "".join(out)


def _entity(match: re.Match[str] | None) -> str | None:
    if match is None:
        return None
    decimal, hexadecimal, name = match.groups()
    if name is not None:
        return _NAMED.get(name)
    code = int(decimal) if decimal is not None else int(hexadecimal, 16)
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return None
    return chr(code)


def _start_tag(text: str, i: int, open_tags: list[str], at: Callable[[int], str]) -> int:
    """Check the start tag at `i` and push it on `open_tags`; where the text goes on."""
    n = len(text)
    j = i + 1
    while j < n and text[j] not in _SPACE and text[j] != ">":
        j += 1
    name = text[i + 1 : j].lower()
    if name not in TAGS:
        raise EntityError(f'Unsupported start tag "{name}" {at(i)}')
    attributes: dict[str, str] = {}
    while True:
        while j < n and text[j] in _SPACE:
            j += 1
        if j >= n:
            raise EntityError(f"Unclosed start tag {at(i)}")
        if text[j] == ">":
            break
        key = _ATTRIBUTE.match(text, j)
        if key is None:
            raise EntityError(f'Empty attribute name in the tag "{name}" {at(i)}')
        j = key.end()
        while j < n and text[j] in _SPACE:
            j += 1
        if j >= n or text[j] != "=":  # a bare attribute, like <blockquote expandable>
            attributes[key[0].lower()] = ""
            continue
        j += 1
        while j < n and text[j] in _SPACE:
            j += 1
        if j < n and text[j] in "\"'":
            close = text.find(text[j], j + 1)
            if close < 0:
                raise EntityError(f"Unclosed start tag {at(i)}")
            value, j = text[j + 1 : close], close + 1
        else:
            start = j
            while j < n and text[j] not in _SPACE and text[j] != ">":
                j += 1
            value = text[start:j]
        attributes[key[0].lower()] = value
    if name == "span" and attributes.get("class") != "tg-spoiler":
        raise EntityError(f'Tag "span" must have class "tg-spoiler" {at(i)}')
    if name == "tg-emoji" and not attributes.get("emoji-id", "").isdigit():
        raise EntityError(f'Tag "tg-emoji" must have attribute "emoji-id" {at(i)}')
    outer = open_tags[-1] if open_tags else None
    nested_ok = (outer not in ("code", "pre") or (outer == "pre" and name == "code")) and not (
        name in ("a", "blockquote") and name in open_tags
    )
    if not nested_ok:
        raise EntityError(f'Tag "{name}" can\'t be nested in "{outer}" {at(i)}')
    open_tags.append(name)
    return j + 1
