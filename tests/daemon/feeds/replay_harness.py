"""The replay server with fault injection, for tests and benchmarks.

`ReplayHarness` is a `daemon.feeds.replay.ReplayServer` that can also drop
every client at the TCP level (`kill_connections`), refuse new sessions with
an error code (`refuse_with`), hold bars back (`go_silent`), close sessions
right after subscribing (`close_after_subscribe`), push raw frames
(`send_raw`), and make its REST side fail (`fail_rest`) or stall (`hold_rest`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from http import HTTPStatus

import msgspec
import polars as pl
from websockets.exceptions import ConnectionClosed

from daemon.feeds.replay import ReplayServer
from daemon.feeds.replay_rest import Answer, ReplayRest
from daemon.feeds.replay_wire import ReplayFrames, ReplaySettings


class FaultyRest(ReplayRest):
    """`ReplayRest` that can hold requests or answer them with an error status."""

    def __init__(
        self,
        frames: ReplayFrames,
        played_until: Callable[[], int | None],
        settings: ReplaySettings,
    ) -> None:
        super().__init__(frames, played_until, settings)
        self._open = asyncio.Event()
        self._open.set()
        self._held = 0
        self._hold_after: int | None = None
        self._failures: list[tuple[int, float | None]] = []
        self.failures_served = 0
        """Requests answered with a status set by `fail`."""

    def hold(self, held: bool = True) -> None:
        """Keep requests waiting, once read, until called with False (a slow backfill)."""
        if held:
            self._open.clear()
        else:
            self._open.set()

    def hold_after(self, answered: int | None) -> None:
        """Hold every request read once `answered` requests have been answered (None: stop)."""
        self._hold_after = answered

    @property
    def waiting(self) -> int:
        """Requests held by `hold` right now."""
        return self._held

    def fail(self, status: int, times: int = 1, retry_after_s: float | None = None) -> None:
        """Answer the next `times` requests with `status` (and `Retry-After` if given)."""
        self._failures.extend([(status, retry_after_s)] * times)

    def clear_failures(self) -> None:
        """Answer normally again."""
        self._failures.clear()

    async def _read_request(self) -> None:
        if self._hold_after is not None and self.requests >= self._hold_after:
            self._open.clear()
        if not self._open.is_set():
            self._held += 1
            try:
                await self._open.wait()
            finally:
                self._held -= 1

    def _override(self) -> Answer | None:
        if not self._failures:
            return None
        status, retry_after = self._failures.pop(0)
        self.failures_served += 1
        extra = [] if retry_after is None else [f"Retry-After: {retry_after:g}"]
        return status, msgspec.json.encode({"message": HTTPStatus(status).phrase}), extra


class ReplayHarness(ReplayServer):
    """A `ReplayServer` with fault injection (see the module docstring)."""

    rest_type = FaultyRest

    def __init__(
        self,
        bars: pl.DataFrame,
        settings: ReplaySettings | None = None,
        *,
        history: pl.DataFrame | None = None,
        daily: pl.DataFrame | None = None,
    ) -> None:
        super().__init__(bars, settings, history=history, daily=daily)
        self._refuse: int | None = None
        self._silent = False
        self._close_early = False
        self.refused: dict[int, int] = {}
        """Sessions refused by `refuse_with`, by error code."""

    @property
    def _faulty_rest(self) -> FaultyRest:
        assert isinstance(self._rest, FaultyRest)
        return self._rest

    def kill_connections(self) -> int:
        """Drop every client at the TCP level, without a close frame. Returns how many."""
        victims = list(self._clients)
        for ws in victims:
            ws.transport.abort()
        return len(victims)

    def refuse_with(self, code: int | None) -> None:
        """Answer the `auth` of new sessions with error `code` (e.g. 406) and close; None stops."""
        self._refuse = code

    def go_silent(self, silent: bool = True) -> None:
        """Stop (or resume) sending bars; the timeline and control replies go on."""
        self._silent = silent

    def close_after_subscribe(self, enabled: bool = True) -> None:
        """Close each new session right after confirming its subscription (accept-then-close)."""
        self._close_early = enabled

    def hold_rest(self, held: bool = True) -> None:
        """Keep REST requests waiting, once read, until called with False (a slow backfill)."""
        self._faulty_rest.hold(held)

    def hold_rest_after(self, answered: int | None) -> None:
        """Hold REST requests once `answered` have been answered (an interruption, on cue)."""
        self._faulty_rest.hold_after(answered)

    @property
    def rest_waiting(self) -> int:
        """REST requests held by `hold_rest` right now."""
        return self._faulty_rest.waiting

    def fail_rest(self, status: int, times: int = 1, retry_after_s: float | None = None) -> None:
        """Answer the next `times` REST requests with `status` (and `Retry-After` if given)."""
        self._faulty_rest.fail(status, times, retry_after_s)

    def clear_rest_failures(self) -> None:
        """Let REST answer normally again."""
        self._faulty_rest.clear_failures()

    @property
    def rest_failures_served(self) -> int:
        """REST requests answered with a `fail_rest` status so far."""
        return self._faulty_rest.failures_served

    async def send_raw(self, data: str | bytes) -> int:
        """Send `data` as one message to every subscribed client. Returns how many got it."""
        sent = 0
        for ws in list(self._subscribed):
            try:
                await ws.send(data)
                sent += 1
            except ConnectionClosed:
                continue
        return sent

    def _refusal(self) -> int | None:
        code = self._refuse
        if code is not None:
            self.refused[code] = self.refused.get(code, 0) + 1
        return code

    def _sending_bars(self) -> bool:
        return not self._silent

    def _closes_after_subscribe(self) -> bool:
        return self._close_early
