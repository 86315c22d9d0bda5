"""Shared helpers of the benchmark suite: synthetic bars, Alpaca frames, timing, tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import msgspec
import numpy as np
import polars as pl

from daemon.calendar import xnys_sessions
from signals.arrays import FloatArray, IntArray
from signals.sessions import SessionTable

LINKED = ("IWM", "SPY", "QQQ")  # the default benchmark (SPY) and comparator (QQQ) are real rows
START = date(2024, 1, 2)


def symbols(n: int) -> list[str]:
    """`n` valid symbols; the first three are IWM, SPY, QQQ."""
    extra = [f"S{i:04d}" for i in range(max(0, n - len(LINKED)))]
    return [*LINKED, *extra][:n]


def sessions(n_sessions: int) -> SessionTable:
    """XNYS sessions from `START` covering at least `n_sessions` (plus slack)."""
    return xnys_sessions(START, date(START.year + 1 + n_sessions // 250, 12, 31))


@dataclass(frozen=True)
class Market:
    """Bars as (minutes, symbols) arrays: times (minutes,), OHLCV (minutes, symbols)."""

    symbols: list[str]
    time: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray

    def frame(self) -> pl.DataFrame:
        """Long frame sorted by time then symbol (what `run_backtest` takes)."""
        m, n = self.close.shape
        return pl.DataFrame(
            {
                "symbol": pl.Series(self.symbols * m, dtype=pl.Utf8),
                "time": np.repeat(self.time, n),
                "open": self.open.ravel(),
                "high": self.high.ravel(),
                "low": self.low.ravel(),
                "close": self.close.ravel(),
                "volume": self.volume.ravel(),
            }
        )


def random_walk(times: IntArray, n_symbols: int, seed: int, sigma: float = 0.0008) -> Market:
    """Seeded log-normal random walks with valid OHLC and lognormal volume."""
    rng = np.random.default_rng(seed)
    m = len(times)
    start = rng.uniform(20.0, 400.0, n_symbols)
    steps = rng.normal(0.0, sigma, (m, n_symbols))
    close = start * np.exp(np.cumsum(steps, axis=0))
    open_ = np.vstack([start[None, :], close[:-1]])
    wiggle = np.abs(rng.normal(0.0, sigma / 2, (m, n_symbols)))
    high = np.maximum(open_, close) * (1.0 + wiggle)
    low = np.minimum(open_, close) * (1.0 - wiggle)
    volume = np.round(rng.lognormal(9.0, 0.5, (m, n_symbols)))
    return Market(symbols(n_symbols), times, open_, high, low, close, volume)


def minute_times(table: SessionTable, n_minutes: int, first_session: int = 0) -> IntArray:
    """The first `n_minutes` regular-session minute starts from session `first_session` on."""
    out: list[IntArray] = []
    left, i = n_minutes, first_session
    while left > 0:
        k = min(left, table.minutes(i))
        out.append(table.open[i] + 60 * np.arange(k, dtype=np.int64))
        left -= k
        i += 1
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _stamp(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def alpaca_frames(market: Market) -> list[bytes]:
    """One Alpaca `"T":"b"` frame per minute with every symbol, as the server would send it."""
    frames = []
    for i, t in enumerate(market.time):
        stamp = _stamp(int(t))
        msgs = [
            {
                "T": "b",
                "S": s,
                "o": float(market.open[i, j]),
                "h": float(market.high[i, j]),
                "l": float(market.low[i, j]),
                "c": float(market.close[i, j]),
                "v": int(market.volume[i, j]),
                "t": stamp,
                "n": 10,
                "vw": float(market.close[i, j]),
            }
            for j, s in enumerate(market.symbols)
        ]
        frames.append(msgspec.json.encode(msgs))
    return frames


HANDSHAKE = (
    b'[{"T":"success","msg":"connected"}]',
    b'[{"T":"success","msg":"authenticated"}]',
)


def subscription(syms: Sequence[str]) -> bytes:
    """The server's subscription reply for `syms`."""
    return msgspec.json.encode([{"T": "subscription", "bars": list(syms)}])


# -- statistics and tables ---------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def p99(xs: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(xs), 99)) if xs else float("nan")


def timed(fn: Callable[[], object]) -> float:
    """Seconds `fn()` took (perf_counter)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fmt_time(seconds: float) -> str:
    """Human units: ns, µs, ms or s."""
    if np.isnan(seconds):
        return "-"
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with a `###` title."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def yes_no(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")
