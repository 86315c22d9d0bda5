"""The REST side of the replay server: Alpaca's `GET /v2/stocks/bars`, from the replayed frame.

It serves the frame's bars in Alpaca's REST shape (pages, `next_page_token`),
up to the minute the websocket side has already played, so a client can
repair a gap after a reconnect; and, when given, the minutes before the replay
(`history`) and daily bars (`daily`, `timeframe=1Day`), so a client can warm
up as from Alpaca.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import polars as pl

from daemon.feeds.replay_wire import ReplayFrames, ReplaySettings

MAX_REQUEST_LINE = 8192
MAX_HEADERS = 64

Answer = tuple[int, bytes, list[str]]
"""An HTTP status, the JSON body, and extra header lines."""


def _stamp(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(x: float) -> float | int:
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


def rest_bar(row: dict[str, Any]) -> dict[str, object]:
    """A frame row as Alpaca's JSON bar (`t`, `o`, `h`, `l`, `c`, `v`, `n`, `vw`)."""
    h, low, c = row["high"], row["low"], row["close"]
    return {
        "t": _stamp(row["time"]),
        "o": row["open"],
        "h": h,
        "l": low,
        "c": c,
        "v": _number(row["volume"]),
        "n": 0,
        "vw": round((h + low + c) / 3, 6),  # no trades here: the typical price stands in
    }


def _parse_time(text: str) -> int:
    """Epoch seconds from RFC 3339 or `YYYY-MM-DD` (UTC)."""
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return math.floor(stamp.timestamp())


class ReplayRest:
    """`GET /v2/stocks/bars` over `frames`, up to the minute `played_until()` returns.

    With the settings' `key`/`secret` set, only those credentials are served (401 otherwise).
    `handle` is the connection callback for `asyncio.start_server`.
    """

    def __init__(
        self,
        frames: ReplayFrames,
        played_until: Callable[[], int | None],
        settings: ReplaySettings,
    ) -> None:
        self._frame, self._played_until = frames.live, played_until
        self._history, self._daily = frames.history, frames.daily
        self._key, self._secret = settings.key, settings.secret
        self.requests = 0
        """Requests answered so far."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: read one request, answer it, close."""
        try:
            async with asyncio.timeout(5.0):
                request_line = (await reader.readline()).decode("latin-1")
                headers: dict[str, str] = {}
                for _ in range(MAX_HEADERS):
                    line = (await reader.readline()).decode("latin-1")
                    if line in ("\r\n", "\n", ""):
                        break
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            await self._read_request()
            status, body, extra = self._respond(request_line, headers)
            self.requests += 1
            reason = HTTPStatus(status).phrase
            head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json"]
            head += [f"Content-Length: {len(body)}", "Connection: close", *extra, "", ""]
            writer.write("\r\n".join(head).encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError):
            pass  # a broken or slow request: drop it
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_request(self) -> None:
        """Called once a request is read, before it is answered (a subclass may delay it)."""

    def _override(self) -> Answer | None:
        """An answer to give instead of the bars for an authorised request; None: the bars."""
        return None

    def _respond(self, request_line: str, headers: dict[str, str]) -> Answer:
        parts = request_line.split()
        if len(parts) != 3 or parts[0] != "GET":
            return 405, msgspec.json.encode({"message": "method not allowed"}), []
        target = urlsplit(parts[1])
        if target.path != "/v2/stocks/bars":
            return 404, msgspec.json.encode({"message": "not found"}), []
        if self._key is not None and (
            headers.get("apca-api-key-id"),
            headers.get("apca-api-secret-key"),
        ) != (self._key, self._secret):
            return 401, msgspec.json.encode({"message": "unauthorized."}), []
        answer = self._override()
        if answer is not None:
            return answer
        try:
            body = self._bars_page({k: v[-1] for k, v in parse_qs(target.query).items()})
        except ValueError as exc:
            return 400, msgspec.json.encode({"message": str(exc)}), []
        return 200, body, []

    def _bars_page(self, query: dict[str, str]) -> bytes:
        timeframe = query.get("timeframe")
        if timeframe not in ("1Min", "1T") and not (
            timeframe == "1Day" and self._daily is not None
        ):
            raise ValueError("only timeframe=1Min is replayed (and 1Day with daily bars)")
        symbols = [s for s in query.get("symbols", "").split(",") if s]
        if not symbols:
            raise ValueError("symbols is required")
        limit = int(query.get("limit", "1000"))
        if not 1 <= limit <= 10_000:
            raise ValueError("limit must be in [1, 10000]")
        start = _parse_time(query["start"]) if "start" in query else 0
        end = _parse_time(query["end"]) if "end" in query else 2**62
        offset = 0
        if "page_token" in query:
            try:
                offset = int(base64.urlsafe_b64decode(query["page_token"].encode()).decode())
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise ValueError("invalid page_token") from exc
        wanted = pl.col("symbol").is_in(symbols) & (pl.col("time") >= start)
        if timeframe == "1Day":
            assert self._daily is not None
            rows = self._daily.filter(wanted & (pl.col("time") <= end))
        else:
            played = self._played_until()
            until = min(end, played if played is not None else -1)
            rows = self._frame.filter(wanted & (pl.col("time") <= until))
            if self._history is not None:
                rows = pl.concat([self._history.filter(wanted & (pl.col("time") <= end)), rows])
        rows = rows.sort("symbol", "time")
        page = rows.slice(offset, limit)
        out: dict[str, list[dict[str, object]]] = {}
        for row in page.iter_rows(named=True):
            out.setdefault(row["symbol"], []).append(rest_bar(row))
        more = offset + page.height < rows.height
        token = (
            base64.urlsafe_b64encode(str(offset + page.height).encode()).decode() if more else None
        )
        return msgspec.json.encode({"bars": out, "next_page_token": token})
