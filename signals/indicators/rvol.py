"""Intraday relative volume (RVOL) by time of day.

RVOL at minute m of a session = the session's cumulative volume up to and
including m, over the mean cumulative volume at minute m of the previous
`sessions` completed sessions. A past session's cumulative volume at m counts
its bars up to and including m: it is 0 before its first bar, carries forward
over minutes without a bar, and keeps its final value after an early close.
Sessions without bars (holidays, a halted symbol) are not sessions at all.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from signals.arrays import BoolArray, FloatArray, IntArray
from signals.indicators.columnar import Columnar, Fresh


class RelativeVolume(Columnar):
    """Time-of-day relative volume of 1-minute bars per row.

    `update(rows, session, minute, volume)` takes, per row, an increasing session
    id (e.g. the session date's ordinal; gaps are fine) and the minute since the
    session open, 0 .. `minutes_per_session` - 1, strictly increasing within a
    session (minutes may be skipped). A minute outside that range, a session id
    going back, or a minute not after the row's last one raises `ValueError`
    before any state changes: extended-hours, duplicate and out-of-order bars are
    the caller's to drop, and piling them onto a clamped minute would skew the
    profile silently. The first bar of a new session completes the previous one.

    NaN until `sessions` sessions have completed, and NaN when the past mean at
    this minute is 0. State per row is `sessions` x `minutes_per_session` float64
    (62 KB per row at the defaults).
    """

    _history: FloatArray
    _sums: FloatArray
    _slot: IntArray
    _done: IntArray
    _current: FloatArray
    _total: FloatArray
    _session: IntArray
    _minute: IntArray

    def __init__(self, sessions: int = 20, minutes_per_session: int = 390, n_rows: int = 0) -> None:
        if sessions < 1:
            raise ValueError(f"sessions must be >= 1, got {sessions}")
        if minutes_per_session < 1:
            raise ValueError(f"minutes_per_session must be >= 1, got {minutes_per_session}")
        self.sessions = sessions
        self.minutes_per_session = minutes_per_session
        super().__init__(n_rows)

    def _state_spec(self) -> Mapping[str, Fresh]:
        s, m = self.sessions, self.minutes_per_session
        return {
            # Cumulative-volume profiles of completed sessions: a ring of `s` slots of `m` minutes.
            "_history": (0.0, s * m),
            # Per minute, the sum of the held profiles: the mean is one lookup, not `s`.
            "_sums": (0.0, m),
            "_slot": (0, None),  # the ring slot the next completed session takes (the oldest)
            "_done": (0, None),  # completed sessions held, at most `s`
            "_current": (0.0, m),  # this session's volume per minute (0 where no bar)
            "_total": (0.0, None),  # this session's cumulative volume
            "_session": (0, None),
            "_minute": (-1, None),  # last minute seen in this session; -1: no bar yet
        }

    def _profiles(self) -> FloatArray:
        """`_history` as (n_rows, sessions, minutes): a view, so writes go through."""
        return self._history.reshape(self.n_rows, self.sessions, self.minutes_per_session)

    def _check(
        self,
        session: IntArray,
        minute: IntArray,
        last_session: IntArray,
        last_minute: IntArray,
    ) -> None:
        """Raise `ValueError` on a minute out of range, a session going back or a minute not after the last."""
        started = last_minute >= 0
        same = session == last_session
        # One test for all three (the usual case), then which one for the message.
        bad = (
            (minute < 0)
            | (minute >= self.minutes_per_session)
            | (started & (session < last_session))
            | (started & same & (minute <= last_minute))
        )
        if not bad.any():
            return
        if np.any((minute < 0) | (minute >= self.minutes_per_session)):
            out = minute[(minute < 0) | (minute >= self.minutes_per_session)]
            raise ValueError(
                f"minute must be in [0, {self.minutes_per_session}), got {out.tolist()}"
            )
        if np.any(started & (session < last_session)):
            raise ValueError("session ids must not go back")
        raise ValueError("minutes must increase within a session")

    def _step(
        self, rows: IntArray, session: IntArray, minute: IntArray, volume: FloatArray
    ) -> tuple[BoolArray, BoolArray, FloatArray, FloatArray, FloatArray]:
        """(new session, closing, profiles of the closing sessions, session total, RVOL)."""
        last_session, last_minute = self._session[rows], self._minute[rows]
        self._check(session, minute, last_session, last_minute)
        new = (last_minute < 0) | (session != last_session)
        closing = new & (last_minute >= 0)
        sums = self._sums[rows, minute]
        done = self._done[rows]
        if closing.any():  # a row's first bar of a session: once a day
            closed = np.cumsum(self._current[rows[closing]], axis=1)
            done = done + closing
            # The held sessions' sum at this minute, with the closing session already
            # swapped in for the one it evicts: update and peek add the same numbers.
            ending = rows[closing]
            evicted = self._profiles()[ending, self._slot[ending], minute[closing]]
            sums[closing] = sums[closing] + (
                closed[np.arange(len(closed)), minute[closing]] - evicted
            )
        else:
            closed = np.zeros((0, self.minutes_per_session))
        done = np.minimum(done, self.sessions)
        mean = sums / self.sessions
        mean = np.where((done == self.sessions) & (mean > 0.0), mean, np.nan)
        total = (np.where(new, 0.0, self._total[rows]) if new.any() else self._total[rows]) + volume
        return new, closing, closed, total, total / mean

    def peek(
        self, rows: IntArray, session: IntArray, minute: IntArray, volume: FloatArray
    ) -> FloatArray:
        """RVOL if the forming bar closed with `volume`; does not mutate."""
        return self._step(rows, session, minute, volume)[4]

    def update(
        self, rows: IntArray, session: IntArray, minute: IntArray, volume: FloatArray
    ) -> FloatArray:
        """Advance `rows` by one closed 1-minute bar each; returns their RVOL."""
        new, closing, closed, total, rvol = self._step(rows, session, minute, volume)
        if len(closed):
            ended = rows[closing]
            profiles = self._profiles()
            self._sums[ended] = self._sums[ended] + (closed - profiles[ended, self._slot[ended]])
            profiles[ended, self._slot[ended]] = closed
            self._slot[ended] = (self._slot[ended] + 1) % self.sessions
            self._done[ended] = np.minimum(self._done[ended] + 1, self.sessions)
        if new.any():
            self._current[rows[new]] = 0.0
        self._current[rows, minute] = volume
        self._total[rows] = total
        self._session[rows] = session
        self._minute[rows] = minute
        return rvol


def rvol_batch(df: pl.DataFrame, sessions: int = 20, minutes_per_session: int = 390) -> pl.Series:
    """Batch reference for one symbol: `df` holds session, minute, volume in bar order.

    Builds every session's cumulative profile on a session x minute grid
    (forward-filled), averages each minute over the previous `sessions`
    sessions, and joins that back onto the bars. Null until warm or mean 0.
    """
    bars = df.select(
        pl.col("session").cast(pl.Int64),
        pl.col("minute").cast(pl.Int64),
        pl.col("volume").cast(pl.Float64).cum_sum().over("session").alias("cumulative"),
    )
    minutes = pl.DataFrame({"minute": pl.int_range(0, minutes_per_session, eager=True)})
    grid = (
        bars.select(pl.col("session").unique())
        .join(minutes, how="cross")
        .join(bars, on=["session", "minute"], how="left")
        .sort("session", "minute")
        .with_columns(pl.col("cumulative").forward_fill().over("session").fill_null(0.0))
        .with_columns(
            pl.col("cumulative")
            .rolling_mean(window_size=sessions)
            .shift(1)
            .over("minute", order_by="session")
            .alias("mean")
        )
    )
    out = bars.join(
        grid.select("session", "minute", "mean"),
        on=["session", "minute"],
        how="left",
        maintain_order="left",
    )
    return out.select(
        pl.when(pl.col("mean") > 0.0).then(pl.col("cumulative") / pl.col("mean")).alias("rvol")
    ).to_series()
