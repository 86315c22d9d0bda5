"""When a rule's condition holds: thresholds, crossings, channels and breakouts of levels.

Every function is vectorised across the symbols of one evaluation; NaN
compares False, so a value that is not available never fires.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from signals.arrays import BoolArray, FloatArray, IntArray
from signals.evaluation import Evaluation
from signals.indicators.swing import FIB_LEVEL_NAMES, FIB_RATIOS
from signals.rules.spec import RuleSpec

FIB_LABELS = {
    name: f"Fib {r * 100:.1f}%" for name, r in zip(FIB_LEVEL_NAMES, FIB_RATIOS, strict=True)
}
LEVEL_LABELS = {
    "prior_day_high": "prior-day high",
    "prior_day_low": "prior-day low",
    "donchian_high20": "20-day high",
    "donchian_low20": "20-day low",
    **FIB_LABELS,
}


def condition(spec: RuleSpec, cur: FloatArray, prev: FloatArray) -> BoolArray:
    op = spec.operator
    if op in ("crossing_up", "crossing_down", "greater_than", "less_than"):
        th = float(spec.threshold)  # type: ignore[arg-type]  # checked by RuleSpec.check
        if op == "crossing_up":
            return (cur > th) & (prev <= th)
        if op == "crossing_down":
            return (cur < th) & (prev >= th)
        return cur > th if op == "greater_than" else cur < th
    lo, hi = float(spec.lower), float(spec.upper)  # type: ignore[arg-type]
    inside_now = (cur >= lo) & (cur <= hi)
    inside_before = (prev >= lo) & (prev <= hi)
    if op == "exiting_channel":
        return inside_before & ~inside_now & ~np.isnan(cur)
    came_from = {"any": ~inside_before & ~np.isnan(prev), "above": prev > hi, "below": prev < lo}
    return inside_now & came_from[spec.entering_from]


def breakout(
    spec: RuleSpec, ev: Evaluation, levels: Mapping[str, FloatArray] | None
) -> tuple[BoolArray, FloatArray, list[str | None]]:
    """Volume at or above `min_rvol` while the close crosses a level; names the furthest crossed."""
    n = len(ev)
    loud = np.flatnonzero(ev.columns["volume_signal"] >= spec.min_rvol)
    cond = np.zeros(n, np.bool_)
    level = np.full(n, np.nan)
    label: list[str | None] = [None] * n
    if not len(loud):  # the usual minute: no volume to break out with, no level to look at
        return cond, level, label
    # Levels only where the volume is there: every step is per element.
    close, prev = ev.columns["close"][loud], ev.columns["prev_close"][loud]
    lv = {k: v[loud] for k, v in (levels or {}).items()}
    crossed_any, at, names = crossed(spec, close, prev, lv)
    cond[loud] = crossed_any
    level[loud] = at
    for i, name in zip(loud.tolist(), names, strict=True):
        label[i] = name
    return cond, level, label


def crossed(
    spec: RuleSpec, close: FloatArray, prev: FloatArray, lv: Mapping[str, FloatArray]
) -> tuple[BoolArray, FloatArray, list[str | None]]:
    """Per element: whether the close crossed a breakout level, the furthest one, its label."""
    n = len(close)
    up = spec.direction == "up"
    names: list[str] = []
    cols: list[FloatArray] = []
    fib_pick: IntArray = np.zeros(n, np.int64)
    fibs: list[str] = []
    side = "high" if up else "low"
    if "prior_day" in spec.levels and f"prior_day_{side}" in lv:
        names.append(f"prior_day_{side}")
        cols.append(lv[f"prior_day_{side}"])
    if "donchian20" in spec.levels and f"donchian_{side}20" in lv:
        names.append(f"donchian_{side}20")
        cols.append(lv[f"donchian_{side}20"])
    if "fib" in spec.levels:
        fibs = [f for f in FIB_LEVEL_NAMES if f in lv]
        if fibs:
            grid = np.column_stack([lv[f] for f in fibs])
            # The nearest Fibonacci level beyond the previous close, in the breakout's direction.
            beyond = np.where(grid > prev[:, None] if up else grid < prev[:, None], grid, np.nan)
            pick = np.all(np.isnan(beyond), axis=1)
            safe = np.where(np.isnan(beyond), np.inf if up else -np.inf, beyond)
            j = np.argmin(safe, axis=1) if up else np.argmax(safe, axis=1)
            nearest = np.where(pick, np.nan, safe[np.arange(n), j])
            names.append("fib")
            cols.append(nearest)
            fib_pick = j
    if not cols:
        return np.zeros(n, np.bool_), np.full(n, np.nan), [None] * n
    grid = np.column_stack(cols)
    crossed = (
        (close[:, None] > grid) & (prev[:, None] <= grid)
        if up
        else (close[:, None] < grid) & (prev[:, None] >= grid)
    )
    masked = np.where(crossed, grid, -np.inf if up else np.inf)
    k = np.argmax(masked, axis=1) if up else np.argmin(masked, axis=1)
    any_cross: BoolArray = np.asarray(crossed.any(axis=1), dtype=np.bool_)
    level = np.where(any_cross, grid[np.arange(n), k], np.nan)
    label: list[str | None] = [None] * n
    for i in np.flatnonzero(any_cross).tolist():  # few: only where a level was crossed
        name = names[k[i]]
        label[i] = LEVEL_LABELS[fibs[fib_pick[i]] if name == "fib" else name]
    return any_cross, level, label
