"""A batch of bars split into runs of one bar time each, in time order."""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from signals.arrays import IntArray
from signals.bar import BarBatch


def time_runs(time: IntArray) -> tuple[IntArray | None, list[tuple[int, int]]]:
    """(order, runs): the batch in runs of one bar time each, in time order.

    `order` is None when the batch already is in time order; else the runs are
    ranges of `order` (a stable sort, so each time keeps its bars' batch order).
    """
    n = len(time)
    if n == 0:
        return None, []
    if time[0] == time[-1] and bool((time == time[0]).all()):  # one minute: the common case
        return None, [(0, n)]
    order: IntArray | None = None
    if not bool((time[1:] >= time[:-1]).all()):
        order = np.argsort(time, kind="stable")
        time = time[order]
    cuts = (np.flatnonzero(time[1:] != time[:-1]) + 1).tolist()
    bounds = [0, *cuts, n]
    return order, list(pairwise(bounds))


def run_part(batch: BarBatch, a: int, b: int, idx: IntArray | None) -> BarBatch:
    """The bars of one run: positions a..b-1 (views), or `idx`."""
    return batch.window(a, b) if idx is None else batch.take(idx)
