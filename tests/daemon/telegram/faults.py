"""Outages of the local Bot API double (`botapi.py`): HTTP 500s and hangs, for a while.

A `Fault` covers chosen methods (case-insensitive, as PTB spells them:
`getMe`, `setMyCommands`...) or every method, until a deadline or until it
is healed. An `error` fault answers Telegram's own error body
(`{"ok": false, "error_code": 500, "description": "Internal Server
Error"}` by default; another 5xx, or 429 with `parameters.retry_after`,
when asked); a `hang` fault never answers: the request waits until
the client gives up (its read timeout), the fault ends or the server closes,
then the connection is dropped without a response. A hung request is held
at most `MAX_HANG_S`, so a test that forgets to heal still ends.

`Outages` is the double's side of it: `fail`, `hang`, `heal`, `faulted`, `fault_count`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from tests.daemon.telegram.wire import Call

FaultKind = Literal["error", "hang"]
MAX_HANG_S: Final = 120.0


@dataclass(frozen=True)
class Fault:
    """One outage: what it does, to which methods (None: all), until when (monotonic)."""

    kind: FaultKind
    methods: frozenset[str] | None
    until: float = math.inf
    status: int = 500
    description: str = "Internal Server Error"
    retry_after: int | None = None  # a 429's parameters.retry_after

    def covers(self, method: str, now: float) -> bool:
        """Whether a request for `method` arriving at `now` gets this fault."""
        return now < self.until and (self.methods is None or method.lower() in self.methods)


class Faults:
    """The outages in force, newest first (a newer fault wins where two cover a method)."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(
        self,
        kind: FaultKind,
        methods: Iterable[str],
        *,
        for_s: float | None = None,
        status: int = 500,
        description: str | None = None,
        retry_after: int = 1,
    ) -> Fault:
        """Start an outage of `methods` (none named: every method) for `for_s` (None: until
        healed). `description` defaults to what Telegram says for `status`."""
        if for_s is not None and for_s < 0:
            raise ValueError("for_s must be >= 0")
        if kind == "error" and not (500 <= status <= 599 or status == 429):
            raise ValueError("an error fault answers a 5xx status or 429")
        names = frozenset(m.lower() for m in methods) or None
        until = math.inf if for_s is None else time.monotonic() + for_s
        flood = status == 429
        if description is None:
            description = (
                f"Too Many Requests: retry after {retry_after}"
                if flood
                else HTTPStatus(status).phrase
            )
        fault = Fault(kind, names, until, status, description, retry_after if flood else None)
        self._faults.insert(0, fault)
        return fault

    def heal(self) -> None:
        """End every outage now (hung requests are let go within a few milliseconds)."""
        self._faults.clear()

    def match(self, method: str) -> Fault | None:
        """The fault a request for `method` gets now, if any; expired faults are dropped."""
        now = time.monotonic()
        self._faults = [f for f in self._faults if now < f.until]
        return next((f for f in self._faults if f.covers(method, now)), None)

    def holds(self, fault: Fault, method: str) -> bool:
        """Whether `fault` is still in force for `method` (not healed, not expired)."""
        return any(f is fault for f in self._faults) and fault.covers(method, time.monotonic())


class Outages:
    """The outage controls of `BotApiServer` (which holds `faults` and `calls`)."""

    faults: Faults
    calls: list[Call]

    def fail(
        self,
        *methods: str,
        for_s: float | None = None,
        status: int = 500,
        description: str | None = None,
        retry_after: int = 1,
    ) -> None:
        """Answer `status` (a 5xx; or 429 with `retry_after`) with Telegram's error body to
        `methods` (none named: every method), for `for_s` seconds (None: until `heal`).
        Method names are case-insensitive."""
        self.faults.add(
            "error",
            methods,
            for_s=for_s,
            status=status,
            description=description,
            retry_after=retry_after,
        )

    def hang(self, *methods: str, for_s: float | None = None) -> None:
        """Never answer `methods` (none named: every method) for `for_s` seconds (None: until
        `heal`): the client times out; when the hang ends the connection is dropped."""
        self.faults.add("hang", methods, for_s=for_s)

    def heal(self) -> None:
        """End every `fail` and `hang` now."""
        self.faults.heal()

    def faulted(self, *methods: str) -> list[Call]:
        """The requests (for `methods`, or any) that got a fault instead of an answer."""
        wanted = {m.lower() for m in methods}
        return [c for c in self.calls if c.fault and (not wanted or c.method.lower() in wanted)]

    @property
    def fault_count(self) -> int:
        """How many requests got a fault so far."""
        return len(self.faulted())
