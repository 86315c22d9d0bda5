"""Columnar rings keep the last N bars per symbol, in order, without stacking."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signals.ring import Rings


def _push(r: Rings, rows: list[int], t: int) -> None:
    n = len(rows)
    vals = {c: np.full(n, float(t)) for c in r.columns if c != "time"}
    r.push(np.array(rows), {"time": np.full(n, t), **vals})


def test_window_is_oldest_first_and_bounded() -> None:
    r = Rings(capacity=3, n_rows=2)
    for t in range(5):
        _push(r, [0], t)
    _push(r, [1], 100)
    f = r.frame(0)
    assert f["time"].to_list() == [2, 3, 4]
    assert f["close"].to_list() == [2.0, 3.0, 4.0]
    assert r.frame(0, last=2)["time"].to_list() == [3, 4]
    assert r.frame(1)["time"].to_list() == [100]
    assert isinstance(f, pl.DataFrame)


def test_frame_is_a_snapshot() -> None:
    r = Rings(capacity=2, n_rows=1)
    _push(r, [0], 1)
    f = r.frame(0)
    _push(r, [0], 2)
    _push(r, [0], 3)
    assert f["time"].to_list() == [1]


def test_replace_last_and_resize_keep_data() -> None:
    r = Rings(capacity=4, n_rows=1)
    _push(r, [0], 1)
    _push(r, [0], 2)
    r.replace_last(np.array([0]), {"close": np.array([9.0])})
    r.resize(10)
    assert r.frame(0)["close"].to_list() == [1.0, 9.0]
    assert r.count(7) == 0
    with pytest.raises(ValueError, match="no bars"):
        r.replace_last(np.array([7]), {"close": np.array([1.0])})


def test_validation() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Rings(0)
    with pytest.raises(ValueError, match="distinct"):
        Rings(3, columns=("a", "a"))
    with pytest.raises(ValueError, match="missing"):
        Rings(3, n_rows=1).push(np.array([0]), {"time": np.array([1])})


@settings(max_examples=40, deadline=None)
@given(cap=st.integers(1, 8), pushes=st.lists(st.sampled_from([0, 1, 2]), max_size=40))
def test_matches_a_list_model(cap: int, pushes: list[int]) -> None:
    r = Rings(capacity=cap, n_rows=3)
    model: list[list[int]] = [[], [], []]
    for t, row in enumerate(pushes):
        _push(r, [row], t)
        model[row].append(t)
    for row in range(3):
        assert r.frame(row)["time"].to_list() == model[row][-cap:]
