"""One-minute bars built from trades, for providers that stream trades only (Finnhub).

Pure: no clock, no I/O. Time comes in with each trade (epoch milliseconds) and
with `flush(now_s)`. Per symbol at most one minute is open:

- a trade in the open minute updates it, in any order: the open is the
  earliest trade, the close the latest (ties: the later arrival), high and low
  the extremes, volume the sum;
- a trade in a later minute closes the open bar and opens a new one;
- `flush(now_s)` closes every bar whose minute ended `close_delay_s` or more
  before `now_s` (a quiet symbol's last bar must not wait for its next trade);
- a trade for a minute already closed is late: it is refused with reason
  `late_trade` and never reopens a bar (the bar was handed on already).

A zero-volume trade (a price update) moves high, low and close but adds no
volume; a minute of only price updates makes a bar with volume 0. A minute
without trades makes no bar, as with the providers' own minute bars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from daemon.feeds.reconnect import Rejection
from signals.bar import Bar

MINUTE_S = 60


@dataclass
class _Forming:
    """The open minute of one symbol."""

    time: int  # minute start, epoch seconds
    open: float
    high: float
    low: float
    close: float
    volume: float
    first_ms: int  # time of the trade that set `open`
    last_ms: int  # time of the trade that set `close`

    def bar(self, symbol: str) -> Bar:
        return Bar(symbol, self.time, self.open, self.high, self.low, self.close, self.volume)


class MinuteBuilder:
    """Trades in, closed one-minute bars out. See the module docstring for the rules.

    Memory is one open bar and one watermark per symbol seen. `close_delay_s`
    is how long after a minute ends `flush` waits for stragglers.
    """

    def __init__(self, close_delay_s: float = 2.0) -> None:
        if not (close_delay_s >= 0 and math.isfinite(close_delay_s)):
            raise ValueError(f"close_delay_s must be >= 0 and finite, got {close_delay_s}")
        self.close_delay_s = close_delay_s
        self._forming: dict[str, _Forming] = {}
        self._closed: dict[str, int] = {}  # symbol -> newest minute start closed

    def add(self, symbol: str, time_ms: int, price: float, volume: float) -> Bar | Rejection | None:
        """Add one trade; return the bar it closed, a rejection (`late_trade`, or `non_finite`
        when the minute's volume would overflow), or None.

        The caller validates the trade; a price that is not finite and
        positive, or a volume that is negative or not finite, raises
        `ValueError`.
        """
        if not (math.isfinite(price) and price > 0.0):
            raise ValueError(f"price must be finite and > 0, got {price!r}")
        if not (math.isfinite(volume) and volume >= 0.0):
            raise ValueError(f"volume must be finite and >= 0, got {volume!r}")
        minute = time_ms // 1000 // MINUTE_S * MINUTE_S
        bar = self._forming.get(symbol)
        # Everything before the open minute is closed or was skipped: no going back.
        newest = bar.time - MINUTE_S if bar is not None else self._closed.get(symbol)
        if newest is not None and minute <= newest:
            return Rejection(
                "late_trade", f"{symbol} trade at {time_ms} ms: minute {minute} closed"
            )
        if bar is None or minute > bar.time:
            finished = None if bar is None else self._close(symbol, bar)
            self._forming[symbol] = _Forming(
                minute, price, price, price, price, volume, time_ms, time_ms
            )
            return finished
        if not math.isfinite(bar.volume + volume):
            # Two finite volumes can sum to inf; a bar with it could not be built at close.
            return Rejection("non_finite", f"{symbol} trade at {time_ms} ms: volume overflows")
        if time_ms < bar.first_ms:
            bar.open, bar.first_ms = price, time_ms
        if time_ms >= bar.last_ms:
            bar.close, bar.last_ms = price, time_ms
        bar.high = max(bar.high, price)
        bar.low = min(bar.low, price)
        bar.volume += volume
        return None

    def flush(self, now_s: float) -> list[Bar]:
        """Close every bar whose minute ended at least `close_delay_s` before `now_s`.

        Returns them ordered by (time, symbol).
        """
        due = [
            (bar.time, symbol)
            for symbol, bar in self._forming.items()
            if bar.time + MINUTE_S + self.close_delay_s <= now_s
        ]
        return [self._close(symbol, self._forming[symbol]) for _, symbol in sorted(due)]

    @property
    def forming(self) -> dict[str, int]:
        """The open minute (start, epoch seconds) of each symbol that has one."""
        return {symbol: bar.time for symbol, bar in self._forming.items()}

    def _close(self, symbol: str, bar: _Forming) -> Bar:
        del self._forming[symbol]
        self._closed[symbol] = bar.time
        return bar.bar(symbol)
