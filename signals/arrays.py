"""Array type aliases shared by the columnar core."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def as_rows(rows: npt.ArrayLike) -> IntArray:
    """Row indices as an int64 array (what every columnar `update` takes)."""
    return np.asarray(rows, dtype=np.int64)


def as_floats(values: npt.ArrayLike) -> FloatArray:
    """Values as a float64 array."""
    return np.asarray(values, dtype=np.float64)
