"""The running daemon's state as the Telegram bot reads it (`BotBackend`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from daemon.feeds.base import Feed
from daemon.outbox import Outbox
from signals.alerts import Alert
from signals.engine import FIB_COLUMNS, Evaluation
from signals.pipeline import Pipeline
from signals.score import Breakdown

LEVEL_COLUMNS = ("donchian_high20", "donchian_low20", "swing_high", "swing_low", *FIB_COLUMNS)


class DaemonBackend:
    """Reads the pipeline's latest forming daily bar, the daily rings, the outbox and the feed.

    The outbox and the feed are attached once the supervisor has opened them.
    """

    def __init__(self, pipeline: Pipeline, symbols: Sequence[str]) -> None:
        self.pipeline = pipeline
        self._symbols = tuple(symbols)
        self.outbox: Outbox | None = None
        self.feed: Feed | None = None
        self._latest: dict[str, tuple[Evaluation, int]] = {}
        self.started = time.time()

    def observe(self, forming: Evaluation | None) -> None:
        """Remember the latest forming daily evaluation per symbol (called by ingest)."""
        if forming is None:
            return
        # Only a reference: breakdowns and levels are built when a command asks.
        for i, sym in enumerate(forming.symbol):
            self._latest[sym] = (forming, i)

    def symbols(self) -> Sequence[str]:
        return self._symbols

    def breakdown(self, symbol: str) -> Breakdown | None:
        hit = self._latest.get(symbol)
        return None if hit is None else hit[0].breakdown(hit[1])

    def levels(self, symbol: str) -> Mapping[str, float | None]:
        hit = self._latest.get(symbol)
        out: dict[str, float | None] = {}
        if hit is not None:
            ev, i = hit
            out.update({c: _num(ev.columns[c][i]) for c in LEVEL_COLUMNS})
        daily = self.pipeline.daily
        if symbol in daily.symbols and daily.rings.count(daily.row(symbol)):
            row = daily.row(symbol)
            out["prior_day_high"] = float(daily.rings.column(row, "high", 1)[0])
            out["prior_day_low"] = float(daily.rings.column(row, "low", 1)[0])
        return out

    def bars(self, symbol: str, n: int) -> pl.DataFrame:
        daily = self.pipeline.daily
        if symbol not in daily.symbols:
            return pl.DataFrame(schema={c: pl.Float64 for c in ("open", "high", "low", "close")})
        return daily.rings.frame(daily.row(symbol), last=n)

    def health(self) -> Mapping[str, object]:
        stats = self.feed.stats if self.feed is not None else None
        last = None if stats is None else stats.last_bar_at
        return {
            "uptime_s": round(time.time() - self.started),
            "feed_connected": None if stats is None else stats.connected,
            "last_bar_age_s": None if last is None else round(time.time() - last, 1),
            "reconnects": None if stats is None else stats.reconnects,
            "bars_rejected": None if stats is None else stats.rejected_total,
            "outbox_depth": None if self.outbox is None else self.outbox.depth(),
        }

    def recent_alerts(self, n: int) -> Sequence[Alert]:
        return [] if self.outbox is None else self.outbox.recent(n)


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
