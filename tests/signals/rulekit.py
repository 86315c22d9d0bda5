"""Helpers to drive a RuleBook with hand-made evaluations."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from signals.alerts import Alert
from signals.engine import COLUMNS, Evaluation
from signals.rules.book import RuleBook
from signals.rules.spec import RuleSpec

DAY = 86_400


def evaluation(symbols: Sequence[str], time: int, **cols: float | Sequence[float]) -> Evaluation:
    """An evaluation of `symbols` at `time`; unnamed columns are NaN."""
    n = len(symbols)
    columns = {c: np.full(n, np.nan) for c in COLUMNS}
    for name, v in cols.items():
        columns[name] = np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy()
    return Evaluation(tuple(symbols), np.full(n, time, np.int64), columns, (), {}, 5)


def run_closed(
    book: RuleBook, values: Sequence[float], column: str, tf: str = "1d", start: int = 0
) -> list[list[Alert]]:
    """Feed one symbol's closed-bar values, a bar a day; the alerts of each bar."""
    out = []
    for i, v in enumerate(values):
        t = start + i * DAY
        out.append(
            book.evaluate(tf, evaluation(["IWM"], t, **{column: v}), closed=True, now=t + DAY)
        )
    return out


def fired(per_bar: list[list[Alert]]) -> list[int]:
    """Indices of the bars that fired."""
    return [i for i, a in enumerate(per_bar) if a]


def spec(**kw: object) -> RuleSpec:
    """A RuleSpec with checks run, defaults for name and timeframe."""
    kw.setdefault("name", "r")
    s = RuleSpec(**kw)  # type: ignore[arg-type]
    s.check()
    return s
