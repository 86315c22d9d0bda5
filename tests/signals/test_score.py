"""Golden values for every sub-score mapping of DESIGN section 5, and the composite."""

from __future__ import annotations

import math

import numpy as np
import pytest

from signals import score as s
from signals import subscores as m


@pytest.mark.parametrize(
    ("rsi", "expected"),
    [(0, 60), (15, 67.5), (30, 75), (32.5, 82.5), (35, 90), (38, 90), (42, 90), (46, 72.5),
     (50, 55), (55, 50), (60, 45), (65, 32.5), (70, 20), (75, 12.5), (80, 5), (90, 2.5), (100, 0)],
)  # fmt: skip
def test_rsi_mapping(rsi: float, expected: float) -> None:
    assert m.sub_rsi([rsi])[0] == pytest.approx(expected, abs=1e-12)


def test_macd_mapping() -> None:
    atr = 2.0
    assert m.sub_macd([0.0], [atr])[0] == 50.0
    assert m.sub_macd([0.5], [atr])[0] == pytest.approx(50 + 50 * math.tanh(1.0))
    assert m.sub_macd([-0.25], [atr])[0] == pytest.approx(50 + 50 * math.tanh(-0.5))
    assert np.isnan(m.sub_macd([0.1], [0.0])[0])
    assert np.isnan(m.sub_macd([np.nan], [1.0])[0])


@pytest.mark.parametrize(
    ("ratio", "up", "down"),
    [(-0.01, 75, 25), (0.0, 60, 40), (0.381, 60, 40), (0.382, 80, 20), (0.5, 80, 20),
     (0.618, 80, 20), (0.619, 45, 55), (0.786, 45, 55), (0.787, 20, 80), (1.5, 20, 80)],
)  # fmt: skip
def test_fib_mapping(ratio: float, up: float, down: float) -> None:
    assert m.sub_fib([1], [ratio])[0] == up
    assert m.sub_fib([-1], [ratio])[0] == down


def test_fib_unavailable() -> None:
    assert np.isnan(m.sub_fib([1], [np.nan])[0])
    assert np.isnan(m.sub_fib([np.nan], [0.5])[0])


def test_volume_mapping() -> None:
    assert m.sub_volume([3.0], [10.0], [9.0])[0] == pytest.approx(50 + 50 * math.tanh(2.0))
    assert m.sub_volume([3.0], [9.0], [10.0])[0] == pytest.approx(50 - 50 * math.tanh(2.0))
    assert m.sub_volume([0.5], [10.0], [9.0])[0] == 50.0  # below-normal volume says nothing
    assert m.sub_volume([3.0], [10.0], [10.0])[0] == 50.0
    assert np.isnan(m.sub_volume([np.nan], [10.0], [9.0])[0])
    assert np.isnan(m.sub_volume([2.0], [10.0], [np.nan])[0])


@pytest.mark.parametrize(
    ("pct", "expected"),
    [(0.5, 55), (1.49, 55), (1.5, 50), (2.0, 50), (2.5, 50), (3.25, 35), (4.0, 20), (9.0, 20)],
)
def test_atr_mapping(pct: float, expected: float) -> None:
    assert m.sub_atr([pct])[0] == pytest.approx(expected, abs=1e-12)


def test_tanh_mappings() -> None:
    assert m.sub_rs([0.03])[0] == pytest.approx(50 + 50 * math.tanh(1))
    assert m.sub_breadth([-0.06])[0] == pytest.approx(50 + 50 * math.tanh(-2))
    assert m.sub_rates([0.25])[0] == pytest.approx(50 - 50 * math.tanh(1))
    assert m.sub_rates([-0.18])[0] == pytest.approx(50 + 50 * math.tanh(0.72))
    for f in (m.sub_rs, m.sub_breadth, m.sub_rates):
        assert f([0.0])[0] == 50.0
        assert np.isnan(f([np.nan])[0])


def _subs(**vals: float) -> dict[str, np.ndarray]:
    return {k: np.array([v]) for k, v in vals.items()}


def test_composite_renormalises_over_available() -> None:
    full = _subs(rsi=90, macd=70, fib=80, volume=50, atr=50, rs=60, breadth=40, rates=20)
    assert s.composite(full)[0] == pytest.approx(57.5)
    part = _subs(
        rsi=90, macd=70, fib=80, volume=50, atr=50, rs=np.nan, breadth=np.nan, rates=np.nan
    )
    assert s.composite(part)[0] == pytest.approx(68.0)
    weighted = s.composite(part, weights={"rsi": 3.0})[0]
    assert weighted == pytest.approx((3 * 90 + 70 + 80 + 50 + 50) / 7)


def test_composite_warming_up_below_five() -> None:
    four = _subs(
        rsi=90, macd=70, fib=80, volume=50, atr=np.nan, rs=np.nan, breadth=np.nan, rates=np.nan
    )
    assert np.isnan(s.composite(four)[0])
    assert s.label(float(s.composite(four)[0])) == "warming up"
    # A zero weight switches a signal off: it does not count towards the five.
    five = _subs(rsi=90, macd=70, fib=80, volume=50, atr=50)
    assert np.isnan(s.composite(five, weights={"atr": 0.0})[0])


@pytest.mark.parametrize(
    ("score", "word"),
    [(75, "strong bullish"), (70, "strong bullish"), (65, "bullish"), (60, "bullish"), (50, "neutral"),
     (40, "bearish"), (35, "bearish"), (30, "strong bearish"), (0, "strong bearish")],
)  # fmt: skip
def test_labels(score: float, word: str) -> None:
    assert s.label(score) == word


def test_breakdown_explains_the_score() -> None:
    subs = {"rsi": 90.0, "macd": 70.0, "fib": 80.0, "volume": 50.0, "atr": 50.0, "rs": np.nan}
    b = s.breakdown({"rsi": 38.0, "atr": 1.9}, subs)
    assert b.score == pytest.approx(68.0)
    assert b.label == "bullish"
    parts = {p.name: p for p in b.parts}
    assert parts["rsi"].raw == 38.0 and parts["rsi"].sub == 90.0
    assert parts["rsi"].weight == pytest.approx(0.2)
    assert not parts["rs"].available and parts["rs"].weight == 0.0
    assert sum(p.weight for p in b.parts) == pytest.approx(1.0)
    assert b.as_dict()["rates"] == {"raw": None, "sub": None, "weight": 0.0}
