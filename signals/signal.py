"""The signal seam: what one scored signal declares, once.

The engine, the composite score, its breakdown and the snapshots learn the
signals from a registry (a mapping of name to `Signal`; `signals.registry.SIGNALS`
unless `EngineConfig.signals` names another), never from the names themselves.
A new signal is one module holding its `Signal` and one line in the registry.

A signal scores columns the engine already makes (`inputs`), and may make
columns of its own (`columns`, from `step`) with state of its own (`state`),
which the engine grows, advances and snapshots under the signal's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from signals.arrays import FloatArray, IntArray
from signals.bar import BarBatch
from signals.indicators.columnar import Columnar

if TYPE_CHECKING:
    from signals.config import EngineConfig


@dataclass(frozen=True)
class SignalStep:
    """What a signal's own `step` sees: the bars of one time at their rows, and the columns so far.

    `commit` is True for closed bars (advance the state) and False for a peek at
    forming bars (change nothing).
    """

    rows: IntArray
    time: int
    bars: BarBatch
    columns: Mapping[str, FloatArray]
    commit: bool


@dataclass(frozen=True)
class Signal:
    """One scored signal.

    `score(*inputs)` maps the `inputs` columns to the 0-100 sub-score (NaN: not
    available); `raw` is the column a breakdown shows as the signal's value.
    A signal that makes columns of its own lists them in `columns` and returns
    them from `step(step, state)`, where `state` is what `state(config)` built
    (None without one).
    """

    raw: str
    inputs: tuple[str, ...]
    score: Callable[..., FloatArray]
    columns: tuple[str, ...] = ()
    state: Callable[[EngineConfig], Columnar] | None = None
    step: Callable[[SignalStep, Columnar | None], Mapping[str, FloatArray]] | None = None

    def __post_init__(self) -> None:
        if bool(self.columns) != (self.step is not None):
            raise ValueError("a signal makes columns exactly when it has a step")
        if self.state is not None and self.step is None:
            raise ValueError("a signal with state needs a step to advance it")
