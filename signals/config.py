"""The engine's configuration: periods, cross-symbol links, the signals and their weights."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from signals.registry import SIGNALS
from signals.score import MIN_SIGNALS
from signals.signal import Signal


@dataclass(frozen=True)
class Links:
    """A symbol's relative-strength benchmark and breadth comparator (None: no such signal)."""

    benchmark: str | None = "SPY"
    comparator: str | None = "QQQ"


@dataclass(frozen=True)
class EngineConfig:
    """Periods, links, signals and weights: every number of the score is here to change.

    `signals` is the registry the engine scores, in composite order.
    """

    intraday: bool = False
    rsi_period: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    atr_period: int = 14
    donchian_period: int = 20
    swing_lookback: int = 60
    volume_period: int = 20
    rvol_sessions: int = 20
    minutes_per_session: int = 390
    change_period: int = 20
    rs_ema_fast: int = 10
    rs_ema_slow: int = 40
    links: Links = Links()
    symbol_links: Mapping[str, Links] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    min_signals: int = MIN_SIGNALS
    ring_capacity: int = 300
    # Without a yield series, a short-Treasury ETF's price can stand in for the
    # 2-year yield: its log price over its duration (years), in points, inverted.
    rates_proxy: str | None = None
    rates_proxy_duration: float = 1.9
    signals: Mapping[str, Signal] = field(default_factory=lambda: SIGNALS, repr=False)

    def links_for(self, symbol: str) -> Links:
        """The links of `symbol`: its own entry, else the default."""
        return self.symbol_links.get(symbol, self.links)
