"""RelativeVolume: streaming == polars batch == a plain brute force, and hand-computed values.

There is no TA-Lib RVOL: the oracle is the definition written as a loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signals.arrays import FloatArray, IntArray
from signals.indicators.rvol import RelativeVolume, rvol_batch
from tests.signals.walks import assert_close, random_walk, stream_rows


@dataclass(frozen=True)
class Tape:
    """One symbol's 1-minute bars: session id, minute of session, volume."""

    session: IntArray
    minute: IntArray
    volume: FloatArray

    def __len__(self) -> int:
        return len(self.volume)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame({"session": self.session, "minute": self.minute, "volume": self.volume})

    def head(self, n: int) -> Tape:
        return Tape(self.session[:n], self.minute[:n], self.volume[:n])


def make_tape(
    seed: int,
    n_sessions: int,
    minutes: int,
    *,
    skip_minute: float = 0.2,
    skip_session: float = 0.2,
    early_close: float = 0.1,
    zero_volume: float = 0.0,
) -> Tape:
    """Sessions with skipped session ids, skipped minutes, late opens and early closes."""
    rng = np.random.default_rng(seed)
    sessions: list[IntArray] = []
    minute_runs: list[IntArray] = []
    sid = 738000  # a date ordinal
    for _ in range(n_sessions):
        sid += 1 + int(rng.random() < skip_session) * int(rng.integers(1, 4))
        end = minutes if rng.random() >= early_close else int(rng.integers(1, minutes + 1))
        present = np.flatnonzero(rng.random(end) >= skip_minute).astype(np.int64)
        sessions.append(np.full(len(present), sid, dtype=np.int64))
        minute_runs.append(present)
    session, minute = np.concatenate(sessions), np.concatenate(minute_runs)
    # A walk's volumes do not depend on its prices (start, flat runs): the plain walk will do.
    volume = random_walk(seed, len(session)).volume.copy()
    volume[rng.random(len(volume)) < zero_volume] = 0.0
    return Tape(session, minute, volume)


def brute(tape: Tape, sessions: int, minutes: int) -> FloatArray:
    """The definition, bar by bar."""
    ids = list(dict.fromkeys(tape.session.tolist()))  # sessions with bars, in order
    profile = {}
    for sid in ids:
        per_minute = np.zeros(minutes)
        here = tape.session == sid
        per_minute[tape.minute[here]] = tape.volume[here]
        profile[sid] = np.cumsum(per_minute)  # 0 before the first bar, carried forward
    out = np.full(len(tape), np.nan)
    so_far, current = 0.0, None
    for i, (sid, m, v) in enumerate(zip(tape.session, tape.minute, tape.volume, strict=True)):
        so_far = (so_far if sid == current else 0.0) + v
        current = sid
        k = ids.index(sid)
        if k >= sessions:
            mean = sum(profile[p][m] for p in ids[k - sessions : k]) / sessions
            if mean > 0.0:
                out[i] = so_far / mean
    return out


def stream(
    ind: RelativeVolume, tapes: list[Tape], seed: int, skip_prob: float
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Stream every tape as one row in random batches (cut to one length); RVOL and seen."""
    n = min(len(t) for t in tapes)
    out = np.full((len(tapes), n), np.nan)
    seen = np.zeros((len(tapes), n), dtype=bool)

    def step(rows: IntArray, idx: IntArray) -> None:
        session = np.array([tapes[r].session[i] for r, i in zip(rows, idx, strict=True)])
        minute = np.array([tapes[r].minute[i] for r, i in zip(rows, idx, strict=True)])
        volume = np.array([tapes[r].volume[i] for r, i in zip(rows, idx, strict=True)])
        out[rows, idx] = ind.update(rows, session, minute, volume)
        seen[rows, idx] = True

    stream_rows(n, len(tapes), step, seed, skip_prob)
    return out, seen


# Bar by bar: (session, minute, volume, expected RVOL) with sessions=2, minutes_per_session=3.
GOLDEN = [
    (10, 0, 100.0, None),  # profile of session 10: [100, 150, 180]
    (10, 1, 50.0, None),
    (10, 2, 30.0, None),
    (11, 1, 60.0, None),  # opens late: profile [0, 60, 80]
    (11, 2, 20.0, None),
    (13, 0, 40.0, 0.8),  # session 12 had no bars; 40 / mean(100, 0); early close: [40, 40, 40]
    (14, 0, 10.0, 0.5),  # 10 / mean(0, 40)
    (14, 1, 20.0, 0.6),  # 30 / mean(60, 40)
    (14, 2, 0.0, 0.5),  # 30 / mean(80, 40)
    (15, 0, 5.0, 0.2),  # 5 / mean(40, 10)
    (16, 1, 0.0, 0.0),  # 0 / mean(40, 30): session 15 closed early, carried forward to 5
]


def test_golden() -> None:
    ind = RelativeVolume(2, 3, n_rows=1)
    row = np.array([0], dtype=np.int64)
    got = [
        float(ind.update(row, np.array([s]), np.array([m]), np.array([v]))[0])
        for s, m, v, _ in GOLDEN
    ]
    want = [np.nan if e is None else e for *_, e in GOLDEN]
    np.testing.assert_allclose(got, want, rtol=0.0, atol=1e-15)
    tape = Tape(*(np.array(col) for col in list(zip(*GOLDEN, strict=True))[:3]))
    np.testing.assert_allclose(rvol_batch(tape.frame(), 2, 3).to_numpy(), want, atol=1e-15)
    np.testing.assert_allclose(brute(tape, 2, 3), want, atol=1e-15)


def test_zero_past_mean_is_nan() -> None:
    """Minutes before every past session's first bar have no normal volume to compare with."""
    tape = Tape(
        np.array([1, 2, 2], dtype=np.int64),
        np.array([2, 0, 2], dtype=np.int64),
        np.array([5.0, 7.0, 1.0]),
    )
    ind = RelativeVolume(1, 3, n_rows=1)
    row = np.array([0], dtype=np.int64)
    got = [
        float(
            ind.update(
                row, tape.session[i : i + 1], tape.minute[i : i + 1], tape.volume[i : i + 1]
            )[0]
        )
        for i in range(3)
    ]
    np.testing.assert_array_equal(got, [np.nan, np.nan, 1.6])  # 8 / 5 at minute 2
    np.testing.assert_array_equal(rvol_batch(tape.frame(), 1, 3).to_numpy(), got)


@pytest.mark.parametrize(
    ("n_sessions", "sessions", "minutes"),
    [(30, 20, 390), (60, 5, 30)],
)
def test_streaming_and_batch_equal_brute_force(
    n_sessions: int, sessions: int, minutes: int
) -> None:
    tapes = [make_tape(seed, n_sessions, minutes, zero_volume=0.05) for seed in range(3)]
    n = min(len(t) for t in tapes)
    assert n >= 1000
    out, seen = stream(RelativeVolume(sessions, minutes, n_rows=3), tapes, seed=n, skip_prob=0.1)
    for row, tape in enumerate(tapes):
        expected = brute(tape, sessions, minutes)
        assert_close(rvol_batch(tape.frame(), sessions, minutes).to_numpy(), expected)
        expected = expected[:n]
        mask = seen[row]
        assert mask.sum() > n // 2
        assert (~np.isnan(expected[mask])).sum() > 100
        assert_close(out[row, mask], expected[mask])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_sessions=st.integers(1, 14),
    n_rows=st.integers(1, 3),
    sessions=st.integers(1, 5),
    minutes=st.integers(5, 30),
    skip_minute=st.sampled_from([0.0, 0.3, 0.8]),
    skip_prob=st.sampled_from([0.0, 0.3]),
)
def test_streaming_equals_batch(
    *,
    seed: int,
    n_sessions: int,
    n_rows: int,
    sessions: int,
    minutes: int,
    skip_minute: float,
    skip_prob: float,
) -> None:
    tapes = [
        make_tape(seed + r, n_sessions, minutes, skip_minute=skip_minute, zero_volume=0.1)
        for r in range(n_rows)
    ]
    if min(len(t) for t in tapes) == 0:
        return
    out, seen = stream(RelativeVolume(sessions, minutes, n_rows), tapes, seed, skip_prob)
    for row, tape in enumerate(tapes):
        mask = seen[row]
        ref = rvol_batch(tape.frame(), sessions, minutes).to_numpy()[: len(mask)]
        assert_close(out[row, mask], ref[mask])


def test_peek_is_pure_and_equals_update() -> None:
    tapes = [make_tape(seed, 12, 8, zero_volume=0.1) for seed in range(3)]
    ind = RelativeVolume(3, 8, n_rows=3)
    n = min(len(t) for t in tapes)

    def step(rows: IntArray, idx: IntArray) -> None:
        args = [
            np.array([getattr(tapes[r], f)[i] for r, i in zip(rows, idx, strict=True)])
            for f in ("session", "minute", "volume")
        ]
        before = ind.state()
        peeked = ind.peek(rows, *args)
        for name, arr in ind.state().items():
            assert np.array_equal(arr, before[name], equal_nan=True), name
        assert np.array_equal(peeked, ind.update(rows, *args), equal_nan=True)

    stream_rows(n, 3, step, seed=7, skip_prob=0.2)


def test_reset_rows_equals_fresh() -> None:
    tape = make_tape(3, 10, 6)
    ind, fresh = RelativeVolume(2, 6, n_rows=2), RelativeVolume(2, 6, n_rows=2)
    both = np.arange(2, dtype=np.int64)
    half = len(tape) // 2
    for i in range(half):
        ind.update(
            both, *(np.full(2, getattr(tape, f)[i]) for f in ("session", "minute", "volume"))
        )
    ind.reset(np.array([1]))
    for name, arr in ind.state().items():
        assert np.array_equal(arr[1], fresh.state()[name][1], equal_nan=True), name
    one = np.array([1], dtype=np.int64)
    for i in range(half, len(tape)):
        args = [getattr(tape, f)[i : i + 1] for f in ("session", "minute", "volume")]
        assert np.array_equal(ind.update(one, *args), fresh.update(one, *args), equal_nan=True)


@pytest.mark.parametrize(
    ("session", "minute", "match"),
    [
        (5, 3, r"minute must be in \[0, 3\)"),
        (5, -1, r"minute must be in \[0, 3\)"),
        (4, 2, "session ids must not go back"),
        (5, 1, "minutes must increase"),
        (5, 0, "minutes must increase"),
    ],
)
def test_rejects_bad_bars_before_mutating(session: int, minute: int, match: str) -> None:
    ind = RelativeVolume(2, 3, n_rows=2)
    rows = np.array([0, 1], dtype=np.int64)
    ind.update(rows, np.array([5, 5]), np.array([1, 1]), np.array([10.0, 10.0]))
    before = ind.state()
    for method in (ind.peek, ind.update):
        with pytest.raises(ValueError, match=match):
            method(rows, np.array([6, session]), np.array([0, minute]), np.array([1.0, 1.0]))
    for name, arr in ind.state().items():
        assert np.array_equal(arr, before[name]), name


@pytest.mark.parametrize(
    ("sessions", "minutes", "n_rows"), [(0, 390, 0), (20, 0, 0), (-1, 390, 0), (20, 390, -1)]
)
def test_rejects_bad_parameters(sessions: int, minutes: int, n_rows: int) -> None:
    with pytest.raises(ValueError, match="must be >= "):
        RelativeVolume(sessions, minutes, n_rows)
