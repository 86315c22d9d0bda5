"""The validated bar: the only shape of market data the core accepts.

Feed input is hostile until it passes here. A `Bar` cannot be built with a
non-finite or non-positive price, `high < low`, an open or close outside
[low, high], negative volume or a symbol outside `[A-Z0-9.-]{1,10}`; the
`BarRejected` it raises carries a short machine-readable `reason` for counters
and a message for people.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from signals.arrays import BoolArray, FloatArray, IntArray

SYMBOL_PATTERN = re.compile(r"[A-Z0-9.\-]{1,10}")
_INF = math.inf
_PLAIN = (float, int)  # exact types: bool and exotic numbers take the full check
_GOOD_SYMBOLS: set[str] = set()  # symbols that matched SYMBOL_PATTERN, to skip the regex
_GOOD_SYMBOLS_MAX = 100_000  # bounded: a hostile feed cannot grow it without limit


class BarRejected(ValueError):
    """A bar failed validation. `reason` is a stable code, e.g. `"high_below_low"`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"bar rejected ({reason}): {detail}")
        self.reason = reason


class Bar(msgspec.Struct, frozen=True):
    """One OHLCV bar. `time` is the bar's start in whole seconds since the Unix epoch (UTC)."""

    symbol: str
    time: int
    open: float
    high: float
    low: float
    close: float
    volume: float

    def __post_init__(self) -> None:
        # The common case in one chained comparison (NaN fails every comparison, so
        # it falls through to the full check); it is the hot path of every feed.
        o, h, lo, c, v = self.open, self.high, self.low, self.close, self.volume
        if (
            type(self.symbol) is str
            and self.symbol in _GOOD_SYMBOLS
            and type(o) in _PLAIN
            and type(h) in _PLAIN
            and type(lo) in _PLAIN
            and type(c) in _PLAIN
            and type(v) in _PLAIN
            and 0.0 < lo <= o <= h < _INF
            and lo <= c <= h
            and 0.0 <= v < _INF
        ):
            return
        reason = bar_problem(self.symbol, (o, h, lo, c, v))
        if reason is not None:
            raise BarRejected(reason, _describe(reason, self))
        if type(self.symbol) is str and len(_GOOD_SYMBOLS) < _GOOD_SYMBOLS_MAX:
            _GOOD_SYMBOLS.add(self.symbol)


def bar_problem(symbol: object, ohlcv: tuple[float, float, float, float, float]) -> str | None:
    """The first reason `symbol` and (open, high, low, close, volume) do not make a bar, or None."""
    if not isinstance(symbol, str) or SYMBOL_PATTERN.fullmatch(symbol) is None:
        return "bad_symbol"
    if not all(isinstance(x, int | float) and math.isfinite(x) for x in ohlcv):
        return "non_finite"
    open_, high, low, close, volume = ohlcv
    problems = (  # in the order they are reported
        ("non_positive_price", min(open_, high, low, close) <= 0.0),
        ("high_below_low", high < low),
        ("open_close_outside_range", not (low <= open_ <= high and low <= close <= high)),
        ("negative_volume", volume < 0.0),
    )
    return next((reason for reason, found in problems if found), None)


def _describe(reason: str, bar: Bar) -> str:
    return (
        f"{reason} in symbol={bar.symbol!r:.20} time={bar.time} o={bar.open!r} h={bar.high!r} "
        f"l={bar.low!r} c={bar.close!r} v={bar.volume!r}"
    )


@dataclass(frozen=True)
class BarBatch:
    """Bars as columns: what `Engine.on_bars` takes. One element per bar.

    `session` and `minute` (session id and minutes since the session open) are
    needed only by the intraday relative volume; the daemon fills them from the
    exchange calendar.
    """

    symbol: Sequence[str]
    time: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    session: IntArray | None = None
    minute: IntArray | None = None

    def __post_init__(self) -> None:
        n = len(self.symbol)
        for name in ("time", "open", "high", "low", "close", "volume", "session", "minute"):
            col = getattr(self, name)
            if col is not None and len(col) != n:
                raise ValueError(f"column {name} has {len(col)} values for {n} symbols")

    def __len__(self) -> int:
        return len(self.symbol)

    @classmethod
    def from_bars(cls, bars: Iterable[Bar]) -> BarBatch:
        """Columns from validated `Bar`s."""
        items = list(bars)
        return cls(
            symbol=[b.symbol for b in items],
            time=np.array([b.time for b in items], dtype=np.int64),
            open=np.array([b.open for b in items], dtype=np.float64),
            high=np.array([b.high for b in items], dtype=np.float64),
            low=np.array([b.low for b in items], dtype=np.float64),
            close=np.array([b.close for b in items], dtype=np.float64),
            volume=np.array([b.volume for b in items], dtype=np.float64),
        )

    def take(self, idx: IntArray) -> BarBatch:
        """The bars at positions `idx`, in that order."""
        symbol = self.symbol
        return BarBatch(
            symbol=[symbol[i] for i in np.asarray(idx).tolist()],
            time=self.time[idx],
            open=self.open[idx],
            high=self.high[idx],
            low=self.low[idx],
            close=self.close[idx],
            volume=self.volume[idx],
            session=None if self.session is None else self.session[idx],
            minute=None if self.minute is None else self.minute[idx],
        )

    def window(self, start: int, stop: int) -> BarBatch:
        """The bars at positions `start` .. `stop - 1`: views of these columns, no copies."""
        return BarBatch(
            symbol=self.symbol[start:stop],
            time=self.time[start:stop],
            open=self.open[start:stop],
            high=self.high[start:stop],
            low=self.low[start:stop],
            close=self.close[start:stop],
            volume=self.volume[start:stop],
            session=None if self.session is None else self.session[start:stop],
            minute=None if self.minute is None else self.minute[start:stop],
        )

    def problems(self) -> list[str | None]:
        """Per bar, the reason it is invalid (as `Bar` would say) or None. Vectorised."""
        o, h, lo, c, v = self.open, self.high, self.low, self.close, self.volume
        checks: list[tuple[str, BoolArray]] = [
            (
                "non_finite",
                ~(
                    np.isfinite(o)
                    & np.isfinite(h)
                    & np.isfinite(lo)
                    & np.isfinite(c)
                    & np.isfinite(v)
                ),
            ),
            ("non_positive_price", np.minimum(np.minimum(o, h), np.minimum(lo, c)) <= 0.0),
            ("high_below_low", h < lo),
            ("open_close_outside_range", (o < lo) | (o > h) | (c < lo) | (c > h)),
            ("negative_volume", v < 0.0),
        ]
        out: list[str | None] = [
            None if SYMBOL_PATTERN.fullmatch(s) else "bad_symbol" for s in self.symbol
        ]
        with np.errstate(invalid="ignore"):
            for reason, bad in checks:
                for i in np.flatnonzero(bad):
                    if out[i] is None:
                        out[i] = reason
        return out
