"""A synthetic 1-minute market on the real XNYS calendar, with one volume breakout."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from daemon.calendar import xnys_sessions
from signals.sessions import SessionTable


def minute_market(
    start: date = date(2024, 1, 2), n_sessions: int = 6, seed: int = 3, breakout_minute: int = 200
) -> tuple[pl.DataFrame, SessionTable]:
    """IWM, SPY, QQQ minutes with U-shaped volume; on the last session IWM trades heavy
    all day (the time-of-day RVOL is cumulative) and breaks its prior-day high at
    `breakout_minute` on a volume burst."""
    table = xnys_sessions(start, date(start.year + 1, 12, 31))
    rng = np.random.default_rng(seed)
    frames = []
    for sym, price in (("IWM", 200.0), ("SPY", 470.0), ("QQQ", 400.0)):
        p = price
        for i in range(n_sessions):
            n = table.minutes(i)
            m = np.arange(n)
            u_shape = 1.0 + 2.0 * ((m - n / 2) / (n / 2)) ** 2
            vol = np.round(20_000 * u_shape * rng.lognormal(0, 0.2, n))
            steps = rng.normal(0, 0.0004, n)
            last = i == n_sessions - 1
            if sym == "IWM" and last:
                steps[:breakout_minute] = -0.0001  # drift below the prior-day high...
                steps[breakout_minute : breakout_minute + 10] = 0.004  # ...then burst through it
                vol *= 2.5
                vol[breakout_minute : breakout_minute + 10] *= 4.0
            close = p * np.exp(np.cumsum(steps))
            open_ = np.r_[p, close[:-1]]
            high = np.maximum(open_, close) * 1.0002
            low = np.minimum(open_, close) * 0.9998
            frames.append(pl.DataFrame({"symbol": sym, "time": table.open[i] + 60 * m, "open": open_,
                                        "high": high, "low": low, "close": close, "volume": vol}))  # fmt: skip
            p = float(close[-1])
    return pl.concat(frames).sort("time", "symbol"), table
