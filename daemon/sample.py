"""A deterministic synthetic market: IWM, SPY and QQQ daily bars for trying the tool offline.

Correlated random walks with a shared market factor, a small-cap beta, volume
with occasional spikes, and a few regimes (rally, pullback, rotation into
small caps) so every signal has something to say. Not market data: only a
fixture you can run without keys, files or network.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl

from daemon.calendar import xnys_sessions
from signals.arrays import FloatArray
from signals.indicators.rsi import RSI
from signals.sessions import SessionTable

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


@dataclass(frozen=True)
class DemoMarket:
    """The embedded demo: history to warm up on, and one scripted session to replay.

    `daily` holds daily bars before `day` (time = session date at 00:00 UTC);
    `history` the 1-minute bars of the sessions before `day` that the
    time-of-day relative volume needs; `today` the session the demo replays.
    """

    daily: pl.DataFrame
    history: pl.DataFrame
    today: pl.DataFrame
    day: date
    sessions: SessionTable


DEMO_DAY = date(2025, 6, 13)


def demo_market(
    day: date = DEMO_DAY, history_days: int = 160, minute_sessions: int = 20, seed: int = 11
) -> DemoMarket:
    """A deterministic IWM/SPY/QQQ market whose last session holds three stories.

    IWM trades heavy all day and, late in the morning, breaks through its
    prior-day and 20-day highs on a volume burst (the volume breakout, and a
    score that crosses up through 70). SPY slides all session and closes with
    its daily RSI(14) inside the 35-42 entry zone, having been above 42 the day
    before (the RSI dip). QQQ drifts. Volume follows the usual intraday U-shape.
    """
    sessions = xnys_sessions(day - timedelta(days=2 * history_days), day + timedelta(days=7))
    labels = sessions.label.tolist()
    today_i = labels.index(_midnight(day))
    first_minute_i = today_i - minute_sessions
    first_i = today_i - history_days
    rng = np.random.default_rng(seed)
    daily_frames, minute_frames, today_frames = [], [], []
    for sym in SYMBOLS:
        price = START_PRICE[sym]
        base_volume = {"IWM": 30e6, "SPY": 70e6, "QQQ": 45e6}[sym]
        walk = _Walk(rng, sessions, sym, base_volume)
        rows = []
        closes: list[float] = []
        for i in range(first_i, today_i):
            drift = _history_drift(sym, i - first_i, history_days)
            if i < first_minute_i:
                ret = rng.normal(drift, 0.011 * BETA[sym])
                o = price * np.exp(rng.normal(0, 0.002))
                c = price * np.exp(ret)
                h = max(o, c) * np.exp(abs(rng.normal(0, 0.004)))
                lo = min(o, c) * np.exp(-abs(rng.normal(0, 0.004)))
                v = round(base_volume * rng.lognormal(0, 0.2))
                rows.append((int(sessions.label[i]), o, h, lo, c, float(v)))
            else:
                steps, scale = _history_script(walk, i, today_i - i, price, closes)
                if steps is None:
                    steps = walk.random_steps(i, drift)
                m = _session_minutes(walk, i, price, steps, scale)
                minute_frames.append(m.with_columns(pl.lit(sym).alias("symbol")))
                c = float(m["close"][-1])
                rows.append(
                    (int(sessions.label[i]), float(m["open"][0]), float(m["high"].max()),  # type: ignore[arg-type]
                     float(m["low"].min()), c, float(m["volume"].sum()))  # type: ignore[arg-type]
                )  # fmt: skip
            closes.append(c)
            price = c
        daily_frames.append(
            pl.DataFrame(
                rows, schema=["time", "open", "high", "low", "close", "volume"], orient="row"
            ).with_columns(pl.lit(sym).alias("symbol"))
        )
        today_frames.append(
            _scripted_session(walk, today_i, price, daily_frames[-1], closes).with_columns(
                pl.lit(sym).alias("symbol")
            )
        )
    cols = ["symbol", "time", "open", "high", "low", "close", "volume"]
    return DemoMarket(
        daily=pl.concat(daily_frames).select(cols).sort("time", "symbol"),
        history=pl.concat(minute_frames).select(cols).sort("time", "symbol"),
        today=pl.concat(today_frames).select(cols).sort("time", "symbol"),
        day=day,
        sessions=sessions,
    )


def _midnight(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())


def _history_drift(sym: str, k: int, n: int) -> float:
    """Daily drift: a rally, a pullback, then a base; SPY firm into the last days."""
    phase = k / n
    if sym == "SPY":
        return 0.0009 if phase < 0.6 else (-0.0004 if phase < 0.9 else 0.001)
    if sym == "IWM":
        return 0.0005 if phase < 0.5 else (-0.0012 if phase < 0.8 else 0.0006)
    return 0.0004


@dataclass(frozen=True)
class _Walk:
    """One symbol's path through the sessions: the shared generator (draw order is the
    demo's script), the calendar, the symbol and its usual daily volume."""

    rng: np.random.Generator
    sessions: SessionTable
    sym: str
    base_volume: float

    def random_steps(self, i: int, drift: float) -> FloatArray:
        """Minute log-returns of session `i` drifting `drift` over the day."""
        n = self.sessions.minutes(i)
        steps: FloatArray = self.rng.normal(drift / n, 0.0007, n)
        return steps


def _history_script(
    walk: _Walk, i: int, days_before: int, price: float, closes: list[float]
) -> tuple[FloatArray | None, FloatArray | None]:
    """Minute steps and volume scale for the last sessions before the demo day, or None (random).

    IWM takes a heavy down day the session before, which re-arms the score rule
    (its score dips under 65) before the breakout; SPY's RSI goes above 50 (which
    re-arms the RSI rule) and settles near 47, so that the demo day's slide is an
    entry into the 35-42 zone from above.
    """
    n = walk.sessions.minutes(i)
    if walk.sym == "IWM" and days_before == 1:
        return _bridge(walk.rng, n, price, price * 0.985), np.full(n, 2.3)
    if walk.sym == "SPY" and days_before <= 5:
        # Above 50 first (re-arms the RSI rule), then settle at 47.
        target = 53.0 if days_before > 2 else 47.0
        return _bridge(walk.rng, n, price, _close_for_rsi(closes, target)), None
    return None, None


def _bridge(rng: np.random.Generator, n: int, start: float, end: float) -> FloatArray:
    """Noisy minute log-returns from `start` that land exactly on `end`."""
    steps: FloatArray = rng.normal(0, 0.0003, n)
    return steps + float(np.log(end / start) - steps.sum()) / n


def _u_shape(n: int) -> FloatArray:
    m = np.arange(n, dtype=np.float64)
    return 1.0 + 2.2 * ((m - n / 2) / (n / 2)) ** 2


def _session_minutes(
    walk: _Walk, i: int, price: float, steps: FloatArray, volume_scale: FloatArray | None = None
) -> pl.DataFrame:
    """Session `i`'s minute bars from `price` along `steps`, volume U-shaped (and scaled)."""
    rng, sessions, n = walk.rng, walk.sessions, walk.sessions.minutes(i)
    close = price * np.exp(np.cumsum(steps))
    open_ = np.r_[price * np.exp(rng.normal(0, 0.001)), close[:-1]]
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.0003, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.0003, n)))
    shape = _u_shape(n)
    volume = walk.base_volume / shape.sum() * shape * rng.lognormal(0, 0.25, n)
    if volume_scale is not None:
        volume = volume * volume_scale
    return pl.DataFrame(
        {
            "time": sessions.open[i] + 60 * np.arange(n, dtype=np.int64),
            "open": np.round(open_, 2),
            "high": np.round(high, 2),
            "low": np.round(low, 2),
            "close": np.round(close, 2),
            "volume": np.round(volume),
        }
    ).with_columns(
        pl.max_horizontal("open", "high", "close").alias("high"),
        pl.min_horizontal("open", "low", "close").alias("low"),
    )


def _scripted_session(
    walk: _Walk, i: int, price: float, daily: pl.DataFrame, closes: list[float]
) -> pl.DataFrame:
    rng, n = walk.rng, walk.sessions.minutes(i)
    if walk.sym == "IWM":
        prior_high = float(daily["high"][-1])
        top20 = float(daily["high"].tail(20).max())  # type: ignore[arg-type]
        # Drift to just under yesterday's high, then burst through both highs on heavy volume.
        start = price
        target_pre = min(prior_high, top20) * 0.997
        steps = rng.normal(0, 0.0004, n)
        steps[:110] += (np.log(target_pre / start) - steps[:110].sum()) / 110
        burst = np.log(max(prior_high, top20) * 1.012 / target_pre)
        steps[110:125] = burst / 15
        steps[125:] = rng.normal(0.00001, 0.0003, n - 125)
        scale = np.full(n, 2.6)
        scale[108:140] = 6.0
        return _session_minutes(walk, i, price, steps, scale)
    if walk.sym == "SPY":
        return _session_minutes(
            walk, i, price, _bridge(rng, n, price, _close_for_rsi(closes, 39.0))
        )
    return _session_minutes(walk, i, price, walk.random_steps(i, 0.0002))


def _close_for_rsi(closes: list[float], want: float) -> float:
    """The close that puts Wilder RSI(14) at `want` after `closes` (bisection: RSI rises with it)."""
    rsi = RSI(14, n_rows=1)
    rows = np.zeros(1, dtype=np.int64)
    for c in closes:
        rsi.update(rows, np.array([c]))
    lo, hi = closes[-1] * 0.8, closes[-1] * 1.2
    for _ in range(60):
        mid = (lo + hi) / 2
        if rsi.peek(rows, np.array([mid]))[0] < want:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 2)
