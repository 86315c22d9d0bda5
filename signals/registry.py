"""The registry of scored signals, in the order they enter the composite score.

A new signal is its module (a `Signal`) and one line here; the engine, the
score, its breakdown, the output columns and the snapshots follow.
"""

from __future__ import annotations

from collections.abc import Mapping

from signals.signal import Signal
from signals.subscores import (
    sub_atr,
    sub_breadth,
    sub_fib,
    sub_macd,
    sub_rates,
    sub_rs,
    sub_rsi,
    sub_volume,
)

# Typed read-only: compose a new mapping (`{**SIGNALS, name: signal}`) to add one elsewhere.
SIGNALS: Mapping[str, Signal] = {
    "rsi": Signal(raw="rsi14", inputs=("rsi14",), score=sub_rsi),
    "macd": Signal(raw="macd_hist", inputs=("macd_hist", "atr14"), score=sub_macd),
    "fib": Signal(raw="fib_ratio", inputs=("swing_dir", "fib_ratio"), score=sub_fib),
    "volume": Signal(
        raw="volume_signal", inputs=("volume_signal", "close", "prev_close"), score=sub_volume
    ),
    "atr": Signal(raw="atr_pct", inputs=("atr_pct",), score=sub_atr),
    "rs": Signal(raw="rs_roc20", inputs=("rs_roc20",), score=sub_rs),
    "breadth": Signal(raw="breadth20", inputs=("breadth20",), score=sub_breadth),
    "rates": Signal(raw="rates_delta20", inputs=("rates_delta20",), score=sub_rates),
}
