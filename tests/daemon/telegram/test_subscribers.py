"""The subscriber store: settings, filters, quiet hours, migration, delivery records."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.telegram.subscribers import (
    NEW_YORK,
    QuietHours,
    SubscriberStore,
    SubscriberStoreError,
    parse_symbols,
)
from tests.daemon.telegram.kit import make_alert


def test_subscribe_settings_and_reopen(tmp_path: Path) -> None:
    clock = [1000.0]
    path = tmp_path / "subs.sqlite"
    with SubscriberStore.open(path, clock=lambda: clock[0]) as store:
        sub = store.subscribe(42, 7)
        assert (sub.active, sub.symbols, sub.min_severity, sub.quiet) == (True, (), "info", None)
        clock[0] = 2000.0
        assert store.set_symbols(42, ["IWM", "SPY"])
        assert store.set_min_severity(42, "notable")
        assert store.set_quiet(42, QuietHours.parse("22:00-07:00"))
        assert store.set_muted_until(42, 5000.0)
        assert not store.set_symbols(99, ["IWM"])  # unknown chat
        with pytest.raises(ValueError, match="severity"):
            store.set_min_severity(42, "loud")
        with pytest.raises(ValueError, match="symbol"):
            store.set_symbols(42, ["iwm;drop"])
    with SubscriberStore.open(path) as store:
        found = store.get(42)
        assert found is not None
        sub = found
        assert sub.symbols == ("IWM", "SPY") and sub.min_severity == "notable"
        assert str(sub.quiet) == "22:00-07:00" and sub.muted_until == 5000.0
        assert (sub.created, sub.updated) == (1000.0, 2000.0)
        assert store.unsubscribe(42) and not store.unsubscribe(42)
        assert store.counts() == (0, 1) and store.active() == []
        again = store.subscribe(42, 8)
        assert again.active and again.min_severity == "notable" and again.user_id == 8
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "subs.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SubscriberStoreError, match="newer"):
        SubscriberStore.open(path)


def test_skip_reasons(store: SubscriberStore) -> None:
    evening = datetime(2026, 7, 1, 23, 0, tzinfo=NEW_YORK).timestamp()
    noon = datetime(2026, 7, 1, 12, 0, tzinfo=NEW_YORK).timestamp()
    alert = make_alert(severity="notable", symbol="IWM")
    store.subscribe(1, 1)
    sub = store.get(1)
    assert sub is not None and sub.skip_reason(alert, noon) is None
    store.set_symbols(1, ["SPY"])
    assert (s := store.get(1)) and s.skip_reason(alert, noon) == "symbol"
    store.set_symbols(1, [])
    store.set_min_severity(1, "strong")
    assert (s := store.get(1)) and s.skip_reason(alert, noon) == "severity"
    store.set_min_severity(1, "notable")
    store.set_muted_until(1, noon + 60)
    assert (s := store.get(1)) and s.skip_reason(alert, noon) == "muted"
    assert s.skip_reason(alert, noon + 60) is None
    store.set_quiet(1, QuietHours.parse("22:00-07:00"))
    assert (s := store.get(1)) and s.skip_reason(alert, evening) == "quiet"
    assert s.skip_reason(alert, noon + 120) is None
    store.unsubscribe(1)
    assert (s := store.get(1)) and s.skip_reason(alert, noon) == "inactive"


@given(
    st.integers(0, 1439),
    st.integers(0, 1439),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
)
def test_quiet_hours_match_a_minute_by_minute_reading(start: int, end: int, at: datetime) -> None:
    if start == end:
        with pytest.raises(ValueError):
            QuietHours.parse(f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}")
        return
    quiet = QuietHours.parse(f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}")
    local = at.replace(tzinfo=NEW_YORK)
    minute = local.hour * 60 + local.minute
    inside = {(start + k) % 1440 for k in range((end - start) % 1440)}
    assert quiet.contains(local) == (minute in inside)
    assert quiet.contains(local.astimezone(NEW_YORK) + timedelta(0)) == (minute in inside)


def test_quiet_hours_parse_errors() -> None:
    assert QuietHours.parse(" 09:30 - 16:00 ") == QuietHours(dtime(9, 30), dtime(16, 0))
    for bad in ("22:00", "24:00-01:00", "9:30-16:00", "22:00-07:00-08:00", "noon-night"):
        with pytest.raises(ValueError):
            QuietHours.parse(bad)


def test_parse_symbols() -> None:
    assert parse_symbols("iwm, spy IWM") == ("IWM", "SPY")
    assert parse_symbols("all") == () == parse_symbols("  ")
    with pytest.raises(ValueError, match="not a symbol"):
        parse_symbols("IWM,<b>")


def test_migration_keeps_settings_and_deliveries(store: SubscriberStore) -> None:
    store.subscribe(-5, 1)
    store.set_min_severity(-5, "strong")
    store.record("a1", [(-5, "sent")])
    assert store.migrate(-5, -1005)
    assert store.get(-5) is None
    moved = store.get(-1005)
    assert moved is not None and moved.min_severity == "strong"
    assert store.served("a1") == {-1005: "sent"}
    assert not store.migrate(-5, -1005)  # the service message after the send: already done


def test_migration_onto_an_existing_row_keeps_the_newer_one(store: SubscriberStore) -> None:
    store.subscribe(-5, 1)
    store.subscribe(-1005, 2)
    store.set_symbols(-1005, ["SPY"])
    store.record("a1", [(-5, "sent"), (-1005, "maybe")])
    assert store.migrate(-5, -1005)
    assert [s.chat_id for s in store.all()] == [-1005]
    assert (s := store.get(-1005)) and s.symbols == ("SPY",)
    assert store.served("a1") == {-1005: "maybe"}


def test_deliveries_upsert_and_prune(tmp_path: Path) -> None:
    clock = [100.0]
    with SubscriberStore.open(tmp_path / "s.sqlite", clock=lambda: clock[0]) as store:
        store.record("a", [(1, "maybe"), (2, "skipped")])
        store.record("a", [(1, "sent")])
        store.record("b", [])
        assert store.served("a") == {1: "sent", 2: "skipped"}
        clock[0] = 200.0
        store.record("b", [(1, "sent")])
        assert store.prune(older_than_s=50.0) == 2
        assert store.served("a") == {} and store.served("b") == {1: "sent"}
