"""What the bot's commands read from the running daemon, as a small Protocol.

The supervisor wires an implementation to the engine; tests pass a fake.
Every method is synchronous and quick: it reads in-memory state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import polars as pl

from signals.alerts import Alert
from signals.score import Breakdown


class BotBackend(Protocol):
    """Daemon state for /status, /score, /levels, /chart and /health, and /reload."""

    def symbols(self) -> Sequence[str]:
        """The tracked symbols, the default one first."""
        ...

    def breakdown(self, symbol: str) -> Breakdown | None:
        """The latest score breakdown of `symbol`, None before the first bar."""
        ...

    def levels(self, symbol: str) -> Mapping[str, float | None]:
        """Named price levels of `symbol` (Fibonacci, prior-day high, donchian_high20...)."""
        ...

    def bars(self, symbol: str, n: int) -> pl.DataFrame:
        """The last `n` bars of `symbol`, oldest first: `open`, `high`, `low`, `close`
        (and optionally `rsi14`; computed from `close` when absent)."""
        ...

    def health(self) -> Mapping[str, object]:
        """Health figures for /health (feed lag, outbox depth...), already safe to show."""
        ...

    def recent_alerts(self, n: int) -> Sequence[Alert]:
        """The last `n` alerts, newest first."""
        ...

    def reload_rules(self) -> str:
        """Re-read the rules file and run it from the next bar (/reload); a short summary.

        Raises `ValueError` with a message safe to show when the file is wrong or
        needs a restart; the running rules then stay as they were.
        """
        ...
