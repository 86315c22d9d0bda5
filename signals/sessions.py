"""Trading sessions as data: which session a bar belongs to and its minute since the open.

The core does not know the exchange calendar; the daemon builds a
`SessionTable` from exchange-calendars (XNYS: holidays, early closes, DST)
and hands it in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from signals.arrays import BoolArray, IntArray

DAY_S = 86_400


@dataclass(frozen=True)
class Located:
    """Per bar: session index in the table (-1: none), session label, minute since open, regular hours."""

    index: IntArray
    label: IntArray  # the session's date as epoch seconds at 00:00 UTC (the daily bar's time)
    minute: IntArray
    regular: BoolArray


class SessionTable:
    """Regular sessions: `label` (session date at 00:00 UTC, epoch s), `open` and `close` (epoch s)."""

    def __init__(self, label: npt.ArrayLike, open_: npt.ArrayLike, close: npt.ArrayLike) -> None:
        self.label = np.asarray(label, dtype=np.int64)
        self.open = np.asarray(open_, dtype=np.int64)
        self.close = np.asarray(close, dtype=np.int64)
        if not (self.label.shape == self.open.shape == self.close.shape) or self.label.ndim != 1:
            raise ValueError("label, open and close must be 1-D arrays of one length")
        if np.any(self.close <= self.open) or np.any(np.diff(self.open) <= 0):
            raise ValueError("sessions must be increasing with close after open")
        # The last one-time answer: a live minute is located by the pipeline and
        # again by each aggregator.
        self._last: tuple[tuple[int, int], Located] | None = None

    def __len__(self) -> int:
        return len(self.label)

    def locate(self, times: npt.ArrayLike) -> Located:
        """Where each 1-minute bar (by its start time) falls.

        The arrays of a batch of one time (a live minute) are shared by the
        calls that ask for the same time and length: they are read-only.
        """
        t = np.asarray(times, dtype=np.int64)
        if t.ndim == 1 and len(t) and t[0] == t[-1] and bool((t == t[0]).all()):
            key = (int(t[0]), len(t))
            if self._last is not None and self._last[0] == key:
                return self._last[1]
            one = self._locate(t[:1])
            n = len(t)
            loc = Located(
                np.repeat(one.index, n),
                np.repeat(one.label, n),
                np.repeat(one.minute, n),
                np.repeat(one.regular, n),
            )
            for a in (loc.index, loc.label, loc.minute, loc.regular):
                a.flags.writeable = False
            self._last = (key, loc)
            return loc
        return self._locate(t)

    def _locate(self, t: IntArray) -> Located:
        i = np.searchsorted(self.open, t, side="right") - 1
        valid = i >= 0
        safe = np.maximum(i, 0)
        regular = valid & (t < self.close[safe]) if len(self) else np.zeros(t.shape, bool)
        index = np.where(regular, safe, -1)
        minute = np.where(regular, (t - self.open[safe]) // 60, -1)
        label = np.where(regular, self.label[safe], -1)
        return Located(
            index.astype(np.int64), label.astype(np.int64), minute.astype(np.int64), regular
        )

    def minutes(self, index: int) -> int:
        """Length of session `index` in minutes (390, or 210 on an early close)."""
        return int((self.close[index] - self.open[index]) // 60)
