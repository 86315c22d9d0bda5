"""The one retry policy and the one Retry-After parser: exact values, edges, invariants."""

from __future__ import annotations

import itertools
import math
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.feeds.wserrors import retry_after_s
from daemon.retry import RetryPolicy, parse_retry_after

# The policy: exact values with the draw pinned.


def test_without_jitter_the_delay_doubles_to_the_cap() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=30.0)
    assert [policy.delay_s(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert policy.delay_s(10_000) == 30.0


def test_jitter_takes_up_to_its_fraction_off_the_ceiling() -> None:
    policy = RetryPolicy(base_s=2.0, cap_s=60.0, jitter=0.5)
    assert policy.delay_s(1, rand=lambda: 0.0) == 2.0  # a draw of 0 waits the ceiling
    assert policy.delay_s(2, rand=lambda: 0.5) == 3.0  # 4 less a quarter
    assert policy.delay_s(7, rand=lambda: 1.0) == 30.0  # the cap, less half of it at most


def test_full_jitter_spans_the_floor_to_the_ceiling() -> None:
    policy = RetryPolicy(base_s=90.0, cap_s=900.0, jitter=1.0, floor_s=60.0)
    assert [policy.delay_s(n, rand=lambda: 1.0) for n in range(1, 5)] == [60.0] * 4
    assert [policy.delay_s(n, rand=lambda: 0.0) for n in range(1, 7)] == [
        90.0,
        180.0,
        360.0,
        720.0,
        900.0,
        900.0,
    ]


def test_a_floor_above_the_base_holds() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=100.0, floor_s=10.0)
    assert [policy.delay_s(n) for n in range(1, 6)] == [10.0, 10.0, 10.0, 10.0, 16.0]


def test_a_huge_attempt_or_factor_never_overflows() -> None:
    assert RetryPolicy(base_s=1.0, cap_s=30.0, factor=10.0).delay_s(5_000) == 30.0
    unbounded = RetryPolicy(base_s=1.0, cap_s=math.inf, jitter=0.5)
    assert unbounded.delay_s(5_000, rand=lambda: 0.9) == math.inf
    assert unbounded.delay_s(3, rand=lambda: 0.0) == 4.0
    assert RetryPolicy(base_s=0.0, cap_s=5.0).delay_s(5_000) == 0.0


def test_delays_is_delay_s_by_attempt() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=4.0, jitter=0.5)
    seq = list(itertools.islice(policy.delays(random.Random(3).random), 20))
    draws = random.Random(3)
    assert seq == [policy.delay_s(n, draws.random) for n in range(1, 21)]


def test_the_draw_comes_from_the_injected_rand() -> None:
    calls: list[int] = []

    def rand() -> float:
        calls.append(1)
        return 0.25

    assert RetryPolicy(base_s=8.0, cap_s=8.0, jitter=1.0).delay_s(1, rand) == 6.0
    assert calls == [1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_s": -1.0},
        {"base_s": math.nan},
        {"base_s": math.inf},
        {"cap_s": math.nan},
        {"jitter": -0.1},
        {"jitter": 1.5},
        {"factor": 0.5},
        {"factor": math.inf},
        {"floor_s": -1.0},
        {"floor_s": 100.0, "cap_s": 60.0},
        {"retry_after_max_s": -1.0},
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RetryPolicy(**kwargs)


# Retry-After in the policy.


def test_a_longer_retry_after_wins_a_shorter_one_does_not() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=60.0)
    assert policy.delay_s(1, retry_after_s=7.0) == 7.0
    assert policy.delay_s(4, retry_after_s=2.0) == 8.0  # never sooner than our own backoff
    assert policy.delay_s(4, retry_after_s=None) == 8.0


def test_retry_after_is_capped_only_when_the_policy_says() -> None:
    assert RetryPolicy(base_s=1.0, cap_s=60.0).delay_s(1, retry_after_s=3600.0) == 3600.0
    capped = RetryPolicy(base_s=1.0, cap_s=60.0, retry_after_max_s=60.0)
    assert capped.delay_s(1, retry_after_s=3600.0) == 60.0


def test_a_non_finite_retry_after_is_ignored() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=60.0)
    assert policy.delay_s(2, retry_after_s=math.inf) == 2.0
    assert policy.delay_s(2, retry_after_s=math.nan) == 2.0


# The policy: invariants.

policies = st.builds(
    RetryPolicy,
    base_s=st.floats(0.0, 1e6),
    cap_s=st.floats(0.0, 1e7),
    jitter=st.floats(0.0, 1.0),
    factor=st.floats(1.0, 100.0),
    floor_s=st.just(0.0),
)
unit = st.floats(0.0, 1.0, exclude_max=True)


@given(policies, st.integers(1, 10_000), unit)
def test_delays_stay_within_zero_and_the_cap(policy: RetryPolicy, attempt: int, u: float) -> None:
    delay = policy.delay_s(attempt, rand=lambda: u)
    assert 0.0 <= delay <= policy.cap_s
    assert delay >= policy.ceiling_s(attempt) * (1.0 - policy.jitter) * (1 - 1e-12)


floored = st.floats(0.0, 1e4).flatmap(
    lambda floor: st.builds(
        RetryPolicy,
        base_s=st.floats(0.0, 1e3),
        cap_s=st.floats(floor, floor + 1e4),
        jitter=st.floats(0.0, 1.0),
        factor=st.floats(1.0, 10.0),
        floor_s=st.just(floor),
    )
)


@given(floored, st.integers(1, 500), unit)
def test_a_floor_holds_with_any_draw(policy: RetryPolicy, attempt: int, u: float) -> None:
    assert policy.floor_s <= policy.delay_s(attempt, rand=lambda: u) <= policy.cap_s


@given(policies, st.integers(1, 2_000))
def test_the_ceiling_never_decreases(policy: RetryPolicy, attempt: int) -> None:
    assert policy.ceiling_s(attempt) <= policy.ceiling_s(attempt + 1)


@given(policies, st.integers(1, 2_000), unit, st.floats(0.0, 1e9))
def test_retry_after_is_a_lower_bound_up_to_its_cap(
    policy: RetryPolicy, attempt: int, u: float, retry_after: float
) -> None:
    delay = policy.delay_s(attempt, rand=lambda: u, retry_after_s=retry_after)
    assert delay >= min(retry_after, policy.retry_after_max_s)
    assert delay >= policy.delay_s(attempt, rand=lambda: u)


# The parser.

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),  # nonsense that can only mean "now"
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),  # RFC 850, still to be accepted
        ("Wed Oct 21 07:28:45 2015", 45.0),  # asctime, also still to be accepted
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: now
        ("Wed, 21 Oct 2015 09:28:20 +0200", 20.0),  # an offset is honoured
        ("Wed, 21 Oct 2015 07:28:10 -0000", 10.0),  # no zone: taken as GMT
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("12s", None),
        ("Wed, 32 Oct 2015 07:28:30 GMT", None),
        ("Wed, 21 Oct 2015", None),
        ("Wed, 21 Oct 99999 07:28:30 GMT", None),
        ("1e400", None),
    ],
)
def test_retry_after_forms(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@given(st.text(max_size=40))
def test_any_header_value_is_a_wait_or_none(value: str) -> None:
    got = parse_retry_after(value, NOW)
    assert got is None or (math.isfinite(got) and got >= 0.0)


@given(st.integers(0, 10**6))
def test_seconds_and_the_same_instant_as_a_date_agree(seconds: int) -> None:
    date = datetime.fromtimestamp(NOW + seconds, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after(date, NOW) == parse_retry_after(str(seconds), NOW) == seconds


def test_the_feeds_header_reader_uses_the_one_parser() -> None:
    date = "Wed, 21 Oct 2015 07:28:30 GMT"
    assert retry_after_s([("Retry-After", date)], NOW) == 30.0
    assert retry_after_s([("retry-after", "7")]) == 7.0
    assert retry_after_s([("Retry-After", "soon"), ("X-RateLimit-Reset", "0")], NOW) is None
    assert retry_after_s([("X-RateLimit-Reset", str(NOW + 12))], NOW) == 12.0
    assert retry_after_s([("X-RateLimit-Reset", str(NOW + 12))]) is None  # no clock given
