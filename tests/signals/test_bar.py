"""The validated bar rejects every kind of bad input with a stable reason."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from signals.bar import Bar, BarBatch, BarRejected, bar_problem


def test_good_bar_builds() -> None:
    bar = Bar("IWM", 1_700_000_000, 200.0, 201.5, 199.0, 201.0, 1_000_000.0)
    assert bar.close == 201.0
    assert Bar("BRK.B", 0, 2.0, 2.0, 2.0, 2.0, 0.0).volume == 0.0


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (("IWM", 0, math.nan, 2.0, 1.0, 1.5, 1.0), "non_finite"),
        (("IWM", 0, 1.5, math.inf, 1.0, 1.5, 1.0), "non_finite"),
        (("IWM", 0, 1.5, 2.0, 1.0, 1.5, math.nan), "non_finite"),
        (("IWM", 0, 1.5, 1e400, 1.0, 1.5, 1.0), "non_finite"),
        (("IWM", 0, 0.0, 2.0, 0.0, 1.5, 1.0), "non_positive_price"),
        (("IWM", 0, -1.0, 2.0, -2.0, 1.5, 1.0), "non_positive_price"),
        (("IWM", 0, 1.5, 1.0, 2.0, 1.5, 1.0), "high_below_low"),
        (("IWM", 0, 2.5, 2.0, 1.0, 1.5, 1.0), "open_close_outside_range"),
        (("IWM", 0, 1.5, 2.0, 1.0, 0.5, 1.0), "open_close_outside_range"),
        (("IWM", 0, 1.5, 2.0, 1.0, 1.5, -1.0), "negative_volume"),
        (("iwm", 0, 1.5, 2.0, 1.0, 1.5, 1.0), "bad_symbol"),
        (("IWM/", 0, 1.5, 2.0, 1.0, 1.5, 1.0), "bad_symbol"),
        (("A+B", 0, 1.5, 2.0, 1.0, 1.5, 1.0), "bad_symbol"),
        (("<script>", 0, 1.5, 2.0, 1.0, 1.5, 1.0), "bad_symbol"),
        (("ABCDEFGHIJK", 0, 1.5, 2.0, 1.0, 1.5, 1.0), "bad_symbol"),
        (("", 0, 1.5, 2.0, 1.0, 1.5, 1.0), "bad_symbol"),
    ],
)
def test_bad_bar_rejected_with_reason(fields: tuple[object, ...], reason: str) -> None:
    with pytest.raises(BarRejected) as info:
        Bar(*fields)  # type: ignore[arg-type]
    assert info.value.reason == reason
    assert reason in str(info.value)


def test_decoding_validates_too() -> None:
    raw = b'{"symbol":"IWM","time":1,"open":1.0,"high":0.5,"low":1.0,"close":1.0,"volume":1}'
    with pytest.raises(msgspec.ValidationError, match="high_below_low"):
        msgspec.json.decode(raw, type=Bar)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw.replace(b'"open":1.0', b'"open":"1.0"'), type=Bar)


prices = st.floats(allow_nan=True, allow_infinity=True, width=64)


@given(o=prices, h=prices, lo=prices, c=prices, v=prices)
def test_batch_problems_agree_with_bar(o: float, h: float, lo: float, c: float, v: float) -> None:
    """The vectorised check and the one-bar check give the same verdict."""
    batch = BarBatch(["IWM"], np.array([0]), *(np.array([x]) for x in (o, h, lo, c, v)))
    try:
        Bar("IWM", 0, o, h, lo, c, v)
        expected = None
    except BarRejected as exc:
        expected = exc.reason
    assert batch.problems() == [expected]


def test_batch_columns_must_have_one_length() -> None:
    with pytest.raises(ValueError, match="column close"):
        BarBatch(["A", "B"], np.zeros(2, np.int64), *(np.ones(2),) * 3, np.ones(1), np.ones(2))


anything = st.one_of(
    prices,
    st.integers(min_value=-(10**20), max_value=10**20),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.decimals(allow_nan=True),
)
symbols = st.one_of(
    st.sampled_from(["IWM", "SPY", "BRK.B", "iwm", "", "TOOLONGSYMBOL", "A\n"]),
    st.text(max_size=12),
    st.none(),
    st.lists(st.integers(), max_size=1),
)


@given(sym=symbols, o=anything, h=anything, lo=anything, c=anything, v=anything)
def test_fast_path_gives_the_full_checks_verdict(
    sym: object, o: object, h: object, lo: object, c: object, v: object
) -> None:
    """`Bar` skips the full check for plain valid bars; every verdict still equals `bar_problem`.

    Each pair is built twice: the second time the symbol is known good (cached), so the
    fast path is what answers.
    """
    for _ in range(2):
        try:
            want = bar_problem(sym, (o, h, lo, c, v))  # type: ignore[arg-type]
        except TypeError:
            want = "type_error"
        try:
            Bar(sym, 0, o, h, lo, c, v)  # type: ignore[arg-type]
            got = None
        except BarRejected as exc:
            got = exc.reason
        except TypeError:
            got = "type_error"
        assert got == want


@given(
    st.lists(
        st.one_of(st.floats(min_value=-1.0, max_value=1e308), st.just(math.nan)),
        min_size=4,
        max_size=4,
    ),
    st.one_of(st.floats(min_value=-1.0), st.just(math.nan)),
    st.permutations(range(4)),
)
def test_fast_path_on_nearly_valid_bars(xs: list[float], v: float, order: list[int]) -> None:
    """Mostly valid bars (sorted prices, some shuffled): the fast path's own territory."""
    lo, a, b, h = sorted(xs) if not any(math.isnan(x) for x in xs) else xs
    o, c = (a, b) if order[0] < 2 else (h, lo)
    for _ in range(2):
        want = bar_problem("IWM", (o, h, lo, c, v))
        try:
            Bar("IWM", 0, o, h, lo, c, v)
            got = None
        except BarRejected as exc:
            got = exc.reason
        assert got == want
