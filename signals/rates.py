"""The 2-year Treasury yield as a step function of time ("as of" lookups)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from signals.arrays import FloatArray, IntArray


class RatesSeries:
    """Published yields by time; `asof(t)` is the latest value published on or before `t`.

    Missing observations (FRED leaves holidays blank) are dropped, so a holiday
    reads as the previous day's value.
    """

    def __init__(self, times: npt.ArrayLike, values: npt.ArrayLike) -> None:
        t = np.asarray(times, dtype=np.int64)
        v = np.asarray(values, dtype=np.float64)
        if t.shape != v.shape or t.ndim != 1:
            raise ValueError(
                f"times and values must be 1-D of one length, got {t.shape} and {v.shape}"
            )
        keep = np.isfinite(v)
        t, v = t[keep], v[keep]
        if np.any(np.diff(t) <= 0):
            raise ValueError("rates times must be strictly increasing")
        self._t: IntArray = t
        self._v: FloatArray = v

    def __len__(self) -> int:
        return len(self._t)

    def asof(self, t: npt.ArrayLike) -> FloatArray:
        """The value in force at each time in `t` (NaN before the first observation)."""
        q = np.asarray(t, dtype=np.int64)
        i = np.searchsorted(self._t, q, side="right") - 1
        return np.where(i >= 0, self._v[np.maximum(i, 0)] if len(self._v) else np.nan, np.nan)
