"""A random multi-symbol market for engine tests: long-format bars with gaps."""

from __future__ import annotations

import numpy as np
import polars as pl

from signals.bar import BarBatch
from tests.signals.walks import random_walk

DAY = 86_400


def random_market(
    seed: int,
    n_bars: int,
    symbols: tuple[str, ...] = ("IWM", "SPY", "QQQ"),
    skip_prob: float = 0.05,
) -> pl.DataFrame:
    """symbol, time, OHLCV; each symbol misses a bar now and then (skip_prob)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i, sym in enumerate(symbols):
        start = float(rng.choice([2.0, 50.0, 200.0]))
        w = random_walk(seed * 31 + i, n_bars, start=start, flat_runs=bool(rng.random() < 0.3))
        keep = rng.random(n_bars) >= skip_prob
        frames.append(
            pl.DataFrame(
                {
                    "symbol": sym,
                    "time": (np.arange(n_bars, dtype=np.int64) + 10_000) * DAY,
                    "open": w.open,
                    "high": w.high,
                    "low": w.low,
                    "close": w.close,
                    "volume": w.volume,
                }
            ).filter(pl.Series(keep))
        )
    return pl.concat(frames).sort(["time", "symbol"])


def batches(df: pl.DataFrame, seed: int) -> list[BarBatch]:
    """Cut the bars into random batches of 1 to 4 whole bar times, rows shuffled in each.

    Whole bar times, because the engine's contract is that a symbol's benchmark
    and comparator bar of the same time come in the same batch (or earlier).
    """
    rng = np.random.default_rng(seed)
    times = df["time"].unique().sort().to_numpy()
    out: list[BarBatch] = []
    i = 0
    while i < len(times):
        k = int(rng.integers(1, 5))
        chunk = df.filter(pl.col("time").is_between(times[i], times[min(i + k, len(times)) - 1]))
        out.append(
            to_batch(chunk.sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1 << 31))))
        )
        i += k
    return out


def to_batch(df: pl.DataFrame) -> BarBatch:
    """A frame's rows as a BarBatch (with session/minute when present)."""
    has_session = "session" in df.columns
    return BarBatch(
        symbol=df["symbol"].to_list(),
        time=df["time"].to_numpy().astype(np.int64),
        open=df["open"].to_numpy(),
        high=df["high"].to_numpy(),
        low=df["low"].to_numpy(),
        close=df["close"].to_numpy(),
        volume=df["volume"].to_numpy(),
        session=df["session"].to_numpy().astype(np.int64) if has_session else None,
        minute=df["minute"].to_numpy().astype(np.int64) if "minute" in df.columns else None,
    )
