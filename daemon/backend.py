"""The running daemon's state as the Telegram bot reads it (`BotBackend`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import structlog

from daemon.feeds.base import Feed
from daemon.outbox import Outbox
from daemon.rules_file import load_rules
from signals.alerts import Alert
from signals.engine import FIB_COLUMNS, Evaluation
from signals.pipeline import Pipeline
from signals.score import Breakdown

_log = structlog.get_logger(__name__)

LEVEL_COLUMNS = ("donchian_high20", "donchian_low20", "swing_high", "swing_low", *FIB_COLUMNS)


class DaemonBackend:
    """Reads the pipeline's latest forming daily bar, the daily rings, the outbox and the feed.

    The outbox and the feed are attached once the supervisor has opened them.
    """

    def __init__(
        self, pipeline: Pipeline, symbols: Sequence[str], rules_file: Path | None = None
    ) -> None:
        self.pipeline = pipeline
        self._symbols = tuple(symbols)
        self.rules_file = rules_file
        """What /reload re-reads (None: the bundled default rules)."""
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

    def reload_rules(self) -> str:
        """Re-read the rules file into the running pipeline (see `Pipeline.replace_rules`).

        Runs between two bars (the bot and the ingest share one event loop). A
        wrong file raises `RuleError` naming the file and the key; rules that
        need a restart raise `ValueError`; either way nothing changes.
        """
        specs = load_rules(self.rules_file)
        changes = self.pipeline.replace_rules(specs)
        source = "the default rules" if self.rules_file is None else self.rules_file.name
        _log.info(
            "rules.reloaded",
            file=str(self.rules_file) if self.rules_file else None,
            rules=changes.total,
            added=list(changes.added),
            removed=list(changes.removed),
            changed=list(changes.changed),
        )
        parts = [f"{changes.total} rules from {source}"]
        for label, names in (
            ("added", changes.added),
            ("removed", changes.removed),
            ("changed", changes.changed),
        ):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        if len(parts) == 1:
            parts.append("no change")
        return "; ".join(parts)


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
