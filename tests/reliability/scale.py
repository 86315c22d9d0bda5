"""Short form in CI, full length on demand: `IWM_RELIABILITY_FULL=1 pytest -m reliability`.

Every reliability test takes its sizes (kills, alerts, frames, seconds) from
`scale(short, full)`, so the same code runs in both forms and the short form
is the full one made smaller, not a different test.
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

FULL = os.environ.get("IWM_RELIABILITY_FULL", "") == "1"


def scale(short: T, full: T) -> T:
    """`full` when IWM_RELIABILITY_FULL=1, else `short`."""
    return full if FULL else short
