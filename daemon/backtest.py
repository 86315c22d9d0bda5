"""`iwm-alerts backtest`: bar files through the same incremental engine the daemon runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from daemon.bars import LoadedBars, frame_to_batch
from signals.engine import COLUMNS, Engine, EngineConfig
from signals.rates import RatesSeries

# Bar times per engine call: large enough to amortise the call, small enough
# for a progress bar that moves.
CHUNK_TIMES = 256


@dataclass(frozen=True)
class BacktestResult:
    """The indicators frame (one row per symbol-bar) and what was rejected on the way."""

    indicators: pl.DataFrame
    rejected: dict[str, int]


def run_backtest(
    bars: LoadedBars,
    config: EngineConfig,
    rates: RatesSeries | None = None,
    progress: bool | None = None,
) -> BacktestResult:
    """Feed `bars` time by time through an `Engine` and collect every evaluation."""
    engine = Engine(config, rates)
    df = bars.frame
    times = df["time"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, times[1:] != times[:-1], True])
    last = len(bounds) - 1
    chunks = [
        (int(bounds[i]), int(bounds[min(i + CHUNK_TIMES, last)]))
        for i in range(0, last, CHUNK_TIMES)
    ]
    parts: list[pl.DataFrame] = []
    # disable=None lets tqdm show the bar only on a terminal.
    disable = None if progress is None else not progress
    with tqdm(total=df.height, unit="bar", disable=disable, leave=False) as bar:
        for a, b in chunks:
            ev = engine.on_bars(frame_to_batch(df.slice(a, b - a)))
            parts.append(ev.to_polars())
            bar.update(b - a)
    schema = {"symbol": pl.Utf8, "time": pl.Int64, **dict.fromkeys(COLUMNS, pl.Float64)}
    out = pl.concat(parts) if parts else pl.DataFrame(schema=schema)
    rejected = dict(bars.dropped)
    for k, v in engine.rejected_total.items():
        rejected[k] = rejected.get(k, 0) + v
    return BacktestResult(out, rejected)


def format_times(df: pl.DataFrame, timeframe: str) -> pl.DataFrame:
    """Epoch seconds -> `YYYY-MM-DD` for daily bars, ISO time in New York for intraday."""
    t = pl.from_epoch(pl.col("time"), time_unit="s")
    if timeframe == "1d":
        return df.with_columns(t.dt.date().cast(pl.Utf8).alias("time"))
    return df.with_columns(
        t.dt.replace_time_zone("UTC")
        .dt.convert_time_zone("America/New_York")
        .dt.strftime("%Y-%m-%dT%H:%M:%S%:z")
        .alias("time")
    )


def write_indicators(result: BacktestResult, out_dir: Path, timeframe: str) -> Path:
    """Write `indicators.csv` into `out_dir` (created if needed) and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "indicators.csv"
    format_times(result.indicators, timeframe).write_csv(path)
    return path


def summary_lines(result: BacktestResult, symbols: Sequence[str] | None = None) -> list[str]:
    """A short human summary: bars per symbol, date range, the last score of each."""
    df = result.indicators
    if df.height == 0:
        return ["no bars processed"]
    last = df.group_by("symbol", maintain_order=True).agg(
        pl.len().alias("bars"),
        pl.col("time").first().alias("first"),
        pl.col("time").last().alias("last"),
        pl.col("score").last().alias("score"),
        pl.col("rsi14").last().alias("rsi14"),
    )
    lines = [f"{df.height} symbol-bars, {last.height} symbols"]
    for row in last.iter_rows(named=True):
        if symbols and row["symbol"] not in symbols:
            continue
        score = "warming up" if row["score"] is None else f"{row['score']:.1f}"
        rsi = "-" if row["rsi14"] is None else f"{row['rsi14']:.1f}"
        lines.append(
            f"  {row['symbol']:<6} {row['bars']:>6} bars  last score {score:>10}  RSI {rsi}"
        )
    if result.rejected:
        lines.append(
            "rejected: " + ", ".join(f"{k}={v}" for k, v in sorted(result.rejected.items()))
        )
    return lines
