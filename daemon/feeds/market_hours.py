"""Is the NYSE regular session open at an instant? For the silence watchdog.

Built on the exchange-calendars XNYS calendar (holidays, early closes, DST);
no holiday rule is written here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from daemon.calendar import exchange_calendar, quiet_pandas


class MarketHours:
    """`hours(epoch_s)` is True while the exchange's regular session is open.

    The calendar is built on first use, not in the constructor. Outside the
    calendar's range (about 20 years back to one year ahead of when it was
    built) the answer is False: the watchdog then stays quiet rather than
    guessing.
    """

    def __init__(self, exchange: str = "XNYS") -> None:
        self.exchange = exchange
        self._calendar: Any = None

    def __call__(self, epoch_s: float) -> bool:
        if self._calendar is None:
            self._calendar = exchange_calendar(self.exchange)
        minute = datetime.fromtimestamp(int(epoch_s) // 60 * 60, UTC)
        try:
            with quiet_pandas():  # the calendar's first answer computes (and warns) lazily
                return bool(self._calendar.is_open_on_minute(minute))
        except ValueError:  # exchange_calendars.errors.MinuteOutOfBounds
            return False


xnys_is_open = MarketHours("XNYS")
"""The default `is_market_open` of feeds: the NYSE regular session."""
