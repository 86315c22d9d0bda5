"""The default `is_market_open`: the NYSE regular session from exchange-calendars."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from daemon.feeds.market_hours import MarketHours, xnys_is_open


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("utc", "is_open"),
    [
        ("2024-01-02 14:31", True),  # 09:31 EST
        ("2024-01-02 14:29", False),  # pre-market
        ("2024-01-02 20:59", True),
        ("2024-01-02 21:00", False),  # 16:00 EST: closed
        ("2024-07-01 13:31", True),  # 09:31 EDT
        ("2024-07-01 20:30", False),  # 16:30 EDT
        ("2024-01-06 15:00", False),  # Saturday
        ("2024-12-25 15:00", False),  # Christmas
        ("2024-11-29 17:59", True),  # day after Thanksgiving, closes 13:00 EST
        ("2024-11-29 18:01", False),
        ("2090-01-03 15:00", False),  # beyond the calendar: quiet, not a crash
    ],
)
def test_regular_session(utc: str, is_open: bool) -> None:
    assert xnys_is_open(_at(utc)) is is_open


def test_calendar_is_built_lazily() -> None:
    hours = MarketHours("XNYS")
    assert hours._calendar is None
    assert hours(_at("2024-01-02 15:00")) is True
