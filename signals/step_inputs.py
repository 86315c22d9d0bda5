"""The state-only inputs of one engine step, kept across peeks of a forming bar."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from signals.arrays import FloatArray, IntArray
from signals.indicators.swing import SwingFrame


@dataclass
class StepInputs:
    """The state-only inputs of one step (see `Engine._before`); `freeze` makes them read-only."""

    prev_close: FloatArray
    lag_close: FloatArray
    lag_ratio: FloatArray
    lag_rates: FloatArray
    here_close: FloatArray  # every row's close at this bar time (NaN: none yet)
    here_ret: FloatArray
    bench: IntArray
    comp: IntArray
    y: FloatArray | None  # None: from the proxy's close, per step
    rates_delta: FloatArray | None
    donchian: tuple[FloatArray, FloatArray]
    swing: SwingFrame
    volume_normal: FloatArray
    nan: FloatArray

    def freeze(self) -> None:
        """Make every array read-only: kept ones are shared by the evaluations of many peeks."""
        arrays: list[np.ndarray | None] = [
            self.prev_close, self.lag_close, self.lag_ratio, self.lag_rates, self.here_close,
            self.here_ret, self.bench, self.comp, self.y, self.rates_delta,
            *self.donchian, self.volume_normal, self.nan,
            *(getattr(self.swing, f) for f in SwingFrame.__dataclass_fields__),
        ]  # fmt: skip
        for a in arrays:
            if a is not None:
                a.flags.writeable = False
