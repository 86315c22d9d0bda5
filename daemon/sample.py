"""A deterministic synthetic market: IWM, SPY and QQQ daily bars for trying the tool offline.

Correlated random walks with a shared market factor, a small-cap beta, volume
with occasional spikes, and a few regimes (rally, pullback, rotation into
small caps) so every signal has something to say. Not market data: only a
fixture you can run without keys, files or network.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl

SYMBOLS = ("IWM", "SPY", "QQQ")
START_PRICE = {"IWM": 150.0, "SPY": 300.0, "QQQ": 250.0}
BETA = {"IWM": 1.25, "SPY": 1.0, "QQQ": 1.15}


def sample_daily(
    n_days: int = 500, seed: int = 2000, start: date = date(2023, 1, 3)
) -> pl.DataFrame:
    """Long-format daily bars (symbol, date, open, high, low, close, volume) on weekdays."""
    rng = np.random.default_rng(seed)
    days: list[date] = []
    d = start
    while len(days) < n_days:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    # Regimes shift the drift of the market and of small caps relative to it.
    phase = np.arange(n_days) / n_days
    market_drift = np.where(phase < 0.4, 0.0006, np.where(phase < 0.55, -0.0015, 0.0008))
    small_tilt = np.where(phase < 0.7, -0.0003, 0.0012)
    market = rng.normal(market_drift, 0.009)
    frames = []
    for sym in SYMBOLS:
        idio = rng.normal(0.0, 0.006 if sym == "IWM" else 0.004, n_days)
        ret = BETA[sym] * market + idio + (small_tilt if sym == "IWM" else 0.0)
        close = START_PRICE[sym] * np.exp(np.cumsum(ret))
        open_ = np.r_[START_PRICE[sym], close[:-1]] * np.exp(rng.normal(0.0, 0.002, n_days))
        spread = np.abs(rng.normal(0.0, 0.006, n_days))
        high = np.maximum(open_, close) * (1 + spread)
        low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0.0, 0.006, n_days)))
        base = {"IWM": 30e6, "SPY": 80e6, "QQQ": 45e6}[sym]
        spikes = np.where(rng.random(n_days) < 0.04, rng.uniform(2.0, 3.5, n_days), 1.0)
        volume = np.round(base * rng.lognormal(0.0, 0.25, n_days) * spikes * (1 + 20 * np.abs(ret)))
        frames.append(
            pl.DataFrame(
                {
                    "symbol": sym,
                    "date": days,
                    "open": np.round(open_, 2),
                    "high": np.round(high, 2),
                    "low": np.round(low, 2),
                    "close": np.round(close, 2),
                    "volume": volume,
                }
            ).with_columns(
                pl.max_horizontal("open", "high", "close").alias("high"),
                pl.min_horizontal("open", "low", "close").alias("low"),
            )
        )
    return pl.concat(frames)
