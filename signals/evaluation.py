"""What the engine hands back: the output columns and the `Evaluation` of a batch.

An evaluation holds one element per accepted bar, column by column; `join`
puts several end to end (joining columns lazily) and `by_time` splits them
again. `Breakdowns` builds a symbol's score breakdown only when asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain

import numpy as np
import polars as pl

from signals.arrays import FloatArray, IntArray
from signals.indicators.swing import FIB_RATIOS
from signals.registry import SIGNALS
from signals.score import Breakdown, breakdown
from signals.signal import Signal

FIB_COLUMNS = tuple(f"fib_{round(r * 1000):d}" for r in FIB_RATIOS)

# What the engine makes from the bars, before any signal's own columns.
BASE_COLUMNS: tuple[str, ...] = (
    "open", "high", "low", "close", "volume", "prev_close",
    "rsi14", "macd", "macd_signal", "macd_hist", "atr14", "atr_pct",
    "volume_ratio", "rvol", "volume_signal",
    "donchian_high20", "donchian_low20",
    "swing_high", "swing_low", "swing_dir", "fib_ratio", *FIB_COLUMNS,
    "ret20", "rs_ratio", "rs_roc20", "rs_ema_fast", "rs_ema_slow", "rs_ema_spread",
    "breadth20", "rates", "rates_delta20",
)  # fmt: skip


def columns_of(signals: Mapping[str, Signal]) -> tuple[str, ...]:
    """Every output column of an engine scoring `signals`, in order.

    The base columns, each signal's own columns, a `sub_<name>` per signal, `score`.
    """
    return (
        *BASE_COLUMNS,
        *(c for s in signals.values() for c in s.columns),
        *(f"sub_{n}" for n in signals),
        "score",
    )


COLUMNS: tuple[str, ...] = columns_of(SIGNALS)


def check_signals(signals: Mapping[str, Signal]) -> None:
    """`ValueError` unless every signal reads columns made before it and makes only new ones."""
    known = set(BASE_COLUMNS)
    for name, s in signals.items():
        clash = [c for c in s.columns if c in known or c.startswith("sub_") or c == "score"]
        if clash:
            raise ValueError(f"signal {name!r} makes columns that exist already: {clash}")
        known.update(s.columns)
        missing = [c for c in (*s.inputs, s.raw) if c not in known]
        if missing:
            raise ValueError(f"signal {name!r} reads columns nothing makes before it: {missing}")


@dataclass(frozen=True)
class Rejection:
    """A bar the engine refused, and why (`duplicate`, `out_of_order`, `missing_session`)."""

    symbol: str
    time: int
    reason: str


@dataclass(frozen=True)
class Evaluation:
    """What a batch produced: one element per accepted bar, in processing (time) order."""

    symbol: tuple[str, ...]
    time: IntArray
    columns: Mapping[str, FloatArray]
    rejected: tuple[Rejection, ...]
    weights: Mapping[str, float]
    min_signals: int
    # The same elements as evaluations of one bar time each, in order, when the
    # engine made them so (a batch of several times): `by_time` hands them out.
    parts: tuple[Evaluation, ...] = field(default=(), repr=False, compare=False)
    # The signals scored, in composite order: where each one's raw value is.
    signals: Mapping[str, Signal] = field(
        default_factory=lambda: SIGNALS, repr=False, compare=False
    )

    def __len__(self) -> int:
        return len(self.symbol)

    def to_polars(self) -> pl.DataFrame:
        """One row per symbol-bar: `symbol`, `time` (epoch seconds) and every column (NaN as null)."""
        data: dict[str, object] = {"symbol": list(self.symbol), "time": self.time}
        data.update(self.columns)
        return pl.DataFrame(data).fill_nan(None)

    def take(self, idx: IntArray) -> Evaluation:
        """The elements at positions `idx` (rejections stay with the whole)."""
        symbol = self.symbol
        return Evaluation(
            symbol=tuple([symbol[i] for i in np.asarray(idx).tolist()]),
            time=self.time[idx],
            columns={c: v[idx] for c, v in self.columns.items()},
            rejected=(),
            weights=self.weights,
            min_signals=self.min_signals,
            signals=self.signals,
        )

    def by_time(self) -> list[Evaluation]:
        """The elements split by bar time, in time order: one evaluation per time."""
        if self.parts:
            return list(self.parts)
        times = np.unique(self.time)
        if len(times) <= 1:
            return [self]
        return [self.take(np.flatnonzero(self.time == t)) for t in times]

    def breakdown(self, i: int) -> Breakdown:
        """The score of element `i` with each signal's raw value, sub-score and weight."""
        signals = self.signals
        raw = {n: float(self.columns[s.raw][i]) for n, s in signals.items()}
        subs = {n: float(self.columns[f"sub_{n}"][i]) for n in signals}
        return breakdown(raw, subs, self.weights, self.min_signals, tuple(signals))


def join(evs: Sequence[Evaluation], rejected: tuple[Rejection, ...] | None = None) -> Evaluation:
    """`evs` end to end as one evaluation (its `by_time` gives their parts back).

    Columns are joined when first read: a warm-up or backtest chunk makes
    hundreds of thousands of values per column that often nobody reads whole.
    """
    if len(evs) == 1:
        return evs[0] if rejected is None else replace(evs[0], rejected=rejected)
    parts = tuple(p for ev in evs for p in (ev.parts or (ev,)))
    first = evs[0]
    return Evaluation(
        symbol=tuple(chain.from_iterable(ev.symbol for ev in evs)),
        time=np.concatenate([ev.time for ev in evs]),
        columns=JoinedColumns([ev.columns for ev in evs]),
        rejected=tuple(r for ev in evs for r in ev.rejected) if rejected is None else rejected,
        weights=first.weights,
        min_signals=first.min_signals,
        parts=parts,
        signals=first.signals,
    )


class JoinedColumns(Mapping[str, FloatArray]):
    """The columns of several evaluations end to end, each concatenated on its first read."""

    def __init__(self, parts: Sequence[Mapping[str, FloatArray]]) -> None:
        self._parts = list(parts)
        self._names = tuple(self._parts[0]) if self._parts else ()
        self._joined: dict[str, FloatArray] = {}

    def __getitem__(self, name: str) -> FloatArray:
        col = self._joined.get(name)
        if col is None:
            if name not in self._names:
                raise KeyError(name)
            col = self._joined[name] = np.concatenate([p[name] for p in self._parts])
            if len(self._joined) == len(self._names):
                self._parts = []  # every column joined: the parts' arrays can go
        return col

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class Breakdowns(Mapping[str, Breakdown]):
    """The breakdowns of an evaluation by symbol, each built only when asked for.

    Building one is Python work per symbol; a minute at 2,000 symbols asks for a
    handful (the alerts that fire), so they are made on demand.
    """

    def __init__(self, ev: Evaluation) -> None:
        self._ev = ev
        self._index: dict[str, int] | None = None

    @property
    def _pos(self) -> dict[str, int]:
        if self._index is None:  # built on the first lookup: most minutes make none
            self._index = {s: i for i, s in enumerate(self._ev.symbol)}
        return self._index

    def __getitem__(self, symbol: str) -> Breakdown:
        return self._ev.breakdown(self._pos[symbol])

    def __iter__(self) -> Iterator[str]:
        return iter(self._pos)

    def __len__(self) -> int:
        return len(self._pos)
