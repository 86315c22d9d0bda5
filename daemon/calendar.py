"""The XNYS session table from exchange-calendars (holidays, early closes, DST)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any

import exchange_calendars as xcals
import numpy as np

from signals.sessions import SessionTable


@contextmanager
def quiet_pandas() -> Iterator[None]:
    """Silence the pandas 3.1 deprecation that exchange-calendars 4.x triggers (it reads
    Series/DatetimeIndex.values): not ours to fix, and not worth a warning per start-up."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"(Series|DatetimeIndex)\.values returning an ndarray"
        )
        yield


def exchange_calendar(name: str, **kwargs: str) -> Any:
    """`exchange_calendars.get_calendar`, without the pandas deprecation noise it makes."""
    with quiet_pandas():
        return xcals.get_calendar(name, **kwargs)


@functools.lru_cache(maxsize=8)
def xnys_sessions(start: date, end: date) -> SessionTable:
    """Regular NYSE sessions from `start` to `end` inclusive.

    Built once per range (a quarter of a second each: the daemon's start-up
    asked twice for the same one) and shared, so its arrays are read-only.
    """
    cal = exchange_calendar("XNYS", start=start.isoformat(), end=end.isoformat())
    sched = cal.schedule.loc[start.isoformat() : end.isoformat()]
    label = np.array([d.value // 1_000_000_000 for d in sched.index], dtype=np.int64)
    opens = np.array([t.value // 1_000_000_000 for t in sched["open"]], dtype=np.int64)
    closes = np.array([t.value // 1_000_000_000 for t in sched["close"]], dtype=np.int64)
    table = SessionTable(label, opens, closes)
    for arr in (table.label, table.open, table.close):
        arr.flags.writeable = False
    return table
