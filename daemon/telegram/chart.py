"""The /chart picture and its caption: `daemon.plot.render_candles` for one symbol.

The picture names every level it draws; the caption adds the close, the RSI
and the levels too far from the bars to draw, in words.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl

from daemon import heap
from daemon.plot import level_words, mark_time, render_candles
from signals.alerts import Alert
from signals.indicators.rsi import rsi_batch


@dataclass(frozen=True)
class Chart:
    """A rendered chart: the PNG and its HTML caption."""

    png: bytes
    caption: str


def render_chart(
    symbol: str,
    bars: pl.DataFrame,
    levels: Mapping[str, float | None],
    alerts: Sequence[Alert] = (),
    timeframe: str = "1d",
) -> Chart | None:
    """The chart of `bars` (oldest first; `time`, `open`, `high`, `low`, `close`, optional
    `volume` and `rsi14`) with `levels` and the `alerts` of `symbol` marked, or None
    when there are no bars to draw."""
    if bars.height == 0:
        return None
    if "rsi14" not in bars.columns:
        bars = bars.with_columns(rsi14=rsi_batch(bars["close"]))
    close = bars["close"].cast(pl.Float64)[-1]
    rsi = bars["rsi14"].cast(pl.Float64).fill_nan(None).drop_nulls()
    head = f"{symbol} · {timeframe} · close {close:.2f}"
    if rsi.len():
        head += f" · RSI {rsi[-1]:.0f}"
    marks = [(mark_time(a, timeframe), a.rule) for a in alerts if a.symbol == symbol]
    picture = render_candles(head, bars, levels, marks, intraday=timeframe != "1d")
    # Drawing leaves freed heap in glibc's arenas: the daemon's RSS went from 129 to 240 MiB
    # over 40 charts; handed back after each (~70 ms), it stays at 178 MiB (matplotlib).
    heap.release()
    drawn = {name for label in picture.labels for name, _ in label.levels}
    off = [
        f"{level_words(name)} {value:.2f}"
        for name, value in sorted(levels.items(), key=lambda kv: -(kv[1] or 0.0))
        if name not in drawn and value is not None and math.isfinite(value)
    ]
    missing = [
        level_words(n) for n, v in levels.items() if v is None or not math.isfinite(v)
    ]  # fmt: skip
    lines = [f"<b>{html.escape(head)}</b> · {bars.height} bars"]
    if off:
        lines.append("off the chart: " + html.escape(", ".join(off)))
    if missing:
        lines.append("not yet known: " + html.escape(", ".join(missing)))
    return Chart(picture.png, "\n".join(lines))
