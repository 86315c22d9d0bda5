"""What the Finnhub stream and REST decoders share: the text of a rejection or an error (an
excerpt, the token scrubbed from it)."""

from __future__ import annotations

from urllib.parse import quote_plus

DETAIL_CHARS = 160
_MIN_SCRUB_CHARS = 6  # real tokens are 20 characters; scrubbing "s" would mangle every message


def excerpt(data: bytes | str) -> str:
    """The start of `data` as text, for a rejection's detail."""
    text = data if isinstance(data, str) else data[:DETAIL_CHARS].decode("utf-8", "replace")
    return text[:DETAIL_CHARS]


def scrub(token: str, text: str) -> str:
    """`text` with `token` (plain or URL-quoted) replaced by `***`, unless too short to be real."""
    if len(token) < _MIN_SCRUB_CHARS:
        return text
    return text.replace(token, "***").replace(quote_plus(token), "***")
