"""The XNYS session table from exchange-calendars (holidays, early closes, DST)."""

from __future__ import annotations

import warnings
from datetime import date

import exchange_calendars as xcals
import numpy as np

from signals.sessions import SessionTable


def xnys_sessions(start: date, end: date) -> SessionTable:
    """Regular NYSE sessions from `start` to `end` inclusive."""
    with warnings.catch_warnings():
        # exchange-calendars 4.x reads Series.values, which pandas 3.1 deprecates; not ours to fix.
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        cal = xcals.get_calendar("XNYS", start=start.isoformat(), end=end.isoformat())
    sched = cal.schedule.loc[start.isoformat() : end.isoformat()]
    label = np.array([d.value // 1_000_000_000 for d in sched.index], dtype=np.int64)
    opens = np.array([t.value // 1_000_000_000 for t in sched["open"]], dtype=np.int64)
    closes = np.array([t.value // 1_000_000_000 for t in sched["close"]], dtype=np.int64)
    return SessionTable(label, opens, closes)
