"""What the feed-fault suites share: the seed of their random choices, and the figures line."""

from __future__ import annotations

SEED = 8


def report(line: str) -> None:
    """One line of figures per test (shown with `pytest -s` or `-rP`)."""
    print(f"reliability: {line}")
