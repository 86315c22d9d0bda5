"""A signal is one `Signal` and one registry entry: the engine, score, breakdown and snapshots follow.

The toy signals here live only in this file and are registered only here: the
engine's output columns, the breakdown and a snapshot round trip pick them up
with no edit anywhere else. Snapshots key state by name, so a registry in
another order still restores each signal's own state; a snapshot of another
schema, other settings or other state is refused before anything is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace

import numpy as np
import pytest

from signals.arrays import FloatArray
from signals.bar import BarBatch
from signals.config import EngineConfig
from signals.engine import Engine, Evaluation
from signals.evaluation import BASE_COLUMNS, COLUMNS
from signals.indicators.columnar import Columnar, Fresh
from signals.registry import SIGNALS
from signals.signal import Signal, SignalStep
from tests.signals.market import batches, random_market


class Streak(Columnar):
    """Per row: how many closes in a row moved `direction` (+1 up, -1 down)."""

    count: FloatArray
    last: FloatArray

    def __init__(self, direction: float) -> None:
        self.direction = direction
        super().__init__()

    def _state_spec(self) -> Mapping[str, Fresh]:
        return {"count": (0.0, None), "last": (np.nan, None)}


def _streak_step(step: SignalStep, state: Columnar | None) -> Mapping[str, FloatArray]:
    assert isinstance(state, Streak)
    rows, close = step.rows, step.bars.close
    moved = np.sign(close - state.last[rows]) == state.direction
    count = np.where(moved, state.count[rows] + 1.0, 0.0)
    if step.commit:
        state.count[rows], state.last[rows] = count, close
    return {f"streak_{state.direction:+.0f}": count}


def _streak_signal(direction: float) -> Signal:
    return Signal(
        raw=f"streak_{direction:+.0f}",
        inputs=(f"streak_{direction:+.0f}",),
        score=lambda n: 50.0 + direction * 10.0 * np.minimum(n, 5.0),
        columns=(f"streak_{direction:+.0f}",),
        state=lambda _cfg: Streak(direction),
        step=_streak_step,
    )


UP, DOWN = _streak_signal(+1.0), _streak_signal(-1.0)


def _config(signals: Mapping[str, Signal]) -> EngineConfig:
    return EngineConfig(signals=signals)


def _run(engine: Engine, parts: list[BarBatch]) -> Iterator[Evaluation]:
    for b in parts:
        yield engine.on_bars(b)


def _assert_same(got: list[Evaluation], want: list[Evaluation], columns: tuple[str, ...]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.symbol == w.symbol
        for c in columns:
            assert np.array_equal(g.columns[c], w.columns[c], equal_nan=True), c


def test_a_registered_toy_signal_reaches_columns_score_and_breakdown() -> None:
    engine = Engine(_config({**SIGNALS, "up": UP}))
    subs = tuple(f"sub_{n}" for n in SIGNALS)
    assert engine.columns == (*BASE_COLUMNS, "streak_+1", *subs, "sub_up", "score")
    evs = list(_run(engine, batches(random_market(3, 120), seed=3)))
    ev = evs[-1]
    assert "streak_+1" in ev.to_polars().columns and "sub_up" in ev.to_polars().columns
    streak = ev.columns["streak_+1"]
    assert np.all(streak >= 0) and max(e.columns["streak_+1"].max() for e in evs) >= 2
    for i in range(len(ev)):
        bd = ev.breakdown(i)
        part = {p.name: p for p in bd.parts}["up"]
        assert part.raw == streak[i] and part.sub == 50.0 + 10.0 * min(streak[i], 5.0)
        assert part.available and bd.score == pytest.approx(ev.columns["score"][i], abs=1e-12)


def test_the_toy_signal_moves_the_score_and_nothing_else() -> None:
    parts = batches(random_market(5, 90), seed=5)
    plain = list(_run(Engine(), parts))
    toy = list(_run(Engine(_config({**SIGNALS, "up": UP})), parts))
    _assert_same(toy, plain, COLUMNS[:-1])  # every other column, sub-scores included
    assert any(
        not np.array_equal(t.columns["score"], p.columns["score"], equal_nan=True)
        for t, p in zip(toy, plain, strict=True)
    )


def test_a_toy_signal_survives_a_snapshot_round_trip() -> None:
    cfg = _config({**SIGNALS, "up": UP, "down": DOWN})
    parts = batches(random_market(7, 150), seed=7)
    whole = list(_run(Engine(cfg), parts))
    first = Engine(cfg)
    list(_run(first, parts[:20]))
    meta, arrays = first.snapshot()
    assert {"signal.up", "signal.down", "rsi", "macd"} <= set(meta["state"])
    second = Engine(cfg)
    second.restore(meta, arrays)
    _assert_same(list(_run(second, parts[20:])), whole[20:], second.columns)


def test_state_is_restored_by_name_when_the_registry_is_reordered() -> None:
    parts = batches(random_market(11, 150), seed=11)
    first = Engine(_config({**SIGNALS, "up": UP, "down": DOWN}))
    whole = Engine(_config({**SIGNALS, "up": UP, "down": DOWN}))
    list(_run(first, parts[:25]))
    list(_run(whole, parts[:25]))
    meta, arrays = first.snapshot()
    reordered = Engine(_config({"down": DOWN, **SIGNALS, "up": UP}))
    reordered.restore(meta, dict(reversed(arrays.items())))
    got, want = list(_run(reordered, parts[25:])), list(_run(whole, parts[25:]))
    _assert_same(got, want, ("streak_+1", "streak_-1", "sub_up", "sub_down", *COLUMNS[:-1]))


def test_a_snapshot_of_the_old_positional_schema_is_refused() -> None:
    engine = Engine()
    list(_run(engine, batches(random_market(2, 40), seed=2)))
    meta, arrays = engine.snapshot()
    old = {"symbols": meta["symbols"], "config": repr(engine.config), "rejected_total": {}}
    fresh = Engine()
    with pytest.raises(ValueError, match="engine snapshot schema 1, this engine reads schema 2"):
        fresh.restore(old, arrays)
    assert fresh.symbols == () and fresh.newest_time() is None


def test_a_snapshot_with_other_settings_or_other_signal_state_is_refused() -> None:
    engine = Engine(_config({**SIGNALS, "up": UP}))
    list(_run(engine, batches(random_market(4, 40), seed=4)))
    meta, arrays = engine.snapshot()
    without = Engine()
    with pytest.raises(ValueError, match=r"state for \['signal.up'\] and none for \[\]"):
        without.restore(meta, arrays)
    other = Engine(replace(_config({**SIGNALS, "up": UP}), rsi_period=10))
    with pytest.raises(ValueError, match="taken with rsi_period=14, this engine has rsi_period=10"):
        other.restore(meta, arrays)
    assert without.symbols == () and other.symbols == ()


def test_a_signal_must_read_columns_something_makes() -> None:
    lost = Signal(raw="nowhere", inputs=("nowhere",), score=lambda x: x)
    with pytest.raises(ValueError, match="'lost' reads columns nothing makes"):
        Engine(_config({**SIGNALS, "lost": lost}))
    clash = replace(UP, columns=("close",), inputs=("close",), raw="close")
    with pytest.raises(ValueError, match="makes columns that exist already"):
        Engine(_config({**SIGNALS, "clash": clash}))
