"""Telegram subscribers and what each chat was sent, in one SQLite file (WAL).

A subscriber is a chat (private, group or supergroup) with its own filters:
the symbols it wants (none: all), a minimum severity, optional quiet hours in
New York time and a mute deadline. `deliveries` remembers, per (alert id,
chat id), what became of that alert in that chat (`sent`, `maybe` after a
read timeout, `skipped` by the chat's filters, `rejected` by Telegram), so an
outbox retry of the same alert only goes to chats not yet served.

Not thread-safe: use it from the event loop's thread only. Every call is a
small local transaction, quick enough to run inline.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from datetime import time as dtime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self
from zoneinfo import ZoneInfo

import structlog

from daemon.sqlite import connect_durable, immediate
from signals.alerts import SEVERITIES, Alert

_log = structlog.get_logger(__name__)

NEW_YORK: Final = ZoneInfo("America/New_York")
SEVERITY_RANK: Final = {name: rank for rank, name in enumerate(SEVERITIES)}
SYMBOL: Final = re.compile(r"[A-Z0-9.-]{1,10}")

DeliveryStatus = Literal["sent", "maybe", "skipped", "rejected"]
SkipReason = Literal["inactive", "symbol", "severity", "muted", "quiet"]

_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_COLUMNS = (
    "chat_id, user_id, active, symbols, min_severity, quiet_start, quiet_end, "
    "muted_until, created, updated"
)
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE subscribers (
            chat_id      INTEGER PRIMARY KEY,
            user_id      INTEGER,
            active       INTEGER NOT NULL DEFAULT 1,
            symbols      TEXT    NOT NULL DEFAULT '',
            min_severity TEXT    NOT NULL DEFAULT 'info',
            quiet_start  TEXT,
            quiet_end    TEXT,
            muted_until  REAL    NOT NULL DEFAULT 0,
            created      REAL    NOT NULL,
            updated      REAL    NOT NULL
        )""",
        """CREATE TABLE deliveries (
            alert_id TEXT    NOT NULL,
            chat_id  INTEGER NOT NULL,
            status   TEXT    NOT NULL,
            at       REAL    NOT NULL,
            PRIMARY KEY (alert_id, chat_id)
        )""",
        "CREATE INDEX deliveries_at ON deliveries (at)",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)


class SubscriberStoreError(Exception):
    """The subscribers database cannot be used (corrupt, locked, from a newer version)."""


@dataclass(frozen=True)
class QuietHours:
    """A daily window in New York time when a chat gets no alerts; may wrap midnight."""

    start: dtime
    end: dtime

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        """`HH:MM-HH:MM` (24-hour, New York time); `ValueError` naming the problem."""
        parts = text.strip().split("-")
        if len(parts) != 2:
            raise ValueError(f"quiet hours must look like 22:00-07:00, got {text!r}")
        times = []
        for part in parts:
            match = _HHMM.fullmatch(part.strip())
            if match is None:
                raise ValueError(f"not a 24-hour HH:MM time: {part.strip()!r}")
            times.append(dtime(int(match[1]), int(match[2])))
        if times[0] == times[1]:
            raise ValueError("quiet hours need different start and end times")
        return cls(times[0], times[1])

    def contains(self, at: datetime) -> bool:
        """Whether `at` (converted to New York time) falls in the window [start, end)."""
        local = at.astimezone(NEW_YORK).time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class Subscriber:
    """One chat's subscription. `symbols` empty means every symbol; times are epoch seconds."""

    chat_id: int
    user_id: int | None
    active: bool
    symbols: tuple[str, ...]
    min_severity: str
    quiet: QuietHours | None
    muted_until: float
    created: float
    updated: float

    def skip_reason(self, alert: Alert, now: float) -> SkipReason | None:
        """Why this chat should not get `alert` at `now`, or None when it should."""
        if not self.active:
            return "inactive"
        if self.symbols and alert.symbol not in self.symbols:
            return "symbol"
        if SEVERITY_RANK[alert.severity] < SEVERITY_RANK[self.min_severity]:
            return "severity"
        if now < self.muted_until:
            return "muted"
        if self.quiet is not None and self.quiet.contains(datetime.fromtimestamp(now, NEW_YORK)):
            return "quiet"
        return None


def parse_symbols(text: str) -> tuple[str, ...]:
    """`IWM,SPY` (commas or spaces) as a tuple in the given order; `all` or empty: ()."""
    names = [s for s in re.split(r"[,\s]+", text.strip().upper()) if s]
    if names in ([], ["ALL"]):
        return ()
    for name in names:
        if not SYMBOL.fullmatch(name):
            raise ValueError(f"not a symbol: {name!r}")
    return tuple(dict.fromkeys(names))


class SubscriberStore:
    """Subscribers and per-chat delivery records. Create with `SubscriberStore.open(path)`.

    `clock` gives epoch seconds for the `created` / `updated` / delivery stamps.
    """

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float] = time.time) -> None:
        """Wrap an open, migrated connection; use `SubscriberStore.open` rather than this."""
        self._conn = conn
        self._clock = clock

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
    ) -> SubscriberStore:
        """Open (creating or migrating) the store at `path`."""
        target = Path(path)
        opened = False
        try:
            # Durable: a delivery row lost in a crash would mean a duplicate message after restart.
            conn = connect_durable(target, busy_timeout_s)
        except sqlite3.DatabaseError as exc:
            raise SubscriberStoreError(f"{target}: {exc}") from exc
        try:
            _migrate(conn, target)
            opened = True
        except sqlite3.DatabaseError as exc:
            raise SubscriberStoreError(f"{target}: {exc}") from exc
        finally:
            if not opened:
                conn.close()
        return cls(conn, clock)

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._conn)

    # -- subscribers ----------------------------------------------------------------------

    def subscribe(self, chat_id: int, user_id: int | None) -> Subscriber:
        """Subscribe `chat_id` (or re-activate it, keeping its settings)."""
        now = self._clock()
        with self._transaction() as tx:
            tx.execute(
                "INSERT INTO subscribers (chat_id, user_id, created, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (chat_id) DO UPDATE SET active = 1, user_id = excluded.user_id, "
                "updated = excluded.updated",
                (chat_id, user_id, now, now),
            )
        sub = self.get(chat_id)
        assert sub is not None  # just written
        return sub

    def unsubscribe(self, chat_id: int) -> bool:
        """Deactivate `chat_id`, keeping its settings for a later /start. False if it was
        not an active subscriber."""
        with self._transaction() as tx:
            cur = tx.execute(
                "UPDATE subscribers SET active = 0, updated = ? WHERE chat_id = ? AND active = 1",
                (self._clock(), chat_id),
            )
            return cur.rowcount > 0

    def get(self, chat_id: int) -> Subscriber | None:
        """The subscriber for `chat_id`, active or not."""
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM subscribers WHERE chat_id = ?", (chat_id,)
        ).fetchone()
        return None if row is None else _subscriber(row)

    def active(self) -> list[Subscriber]:
        """Every active subscriber, oldest first."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM subscribers WHERE active = 1 ORDER BY created, chat_id"
        ).fetchall()
        return [_subscriber(r) for r in rows]

    def all(self, limit: int = 1000) -> list[Subscriber]:
        """Up to `limit` subscribers, active first, then oldest first."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM subscribers ORDER BY active DESC, created, chat_id LIMIT ?",
            (limit,),
        ).fetchall()
        return [_subscriber(r) for r in rows]

    def counts(self) -> tuple[int, int]:
        """(active, total) subscribers."""
        row = self._conn.execute(
            "SELECT COALESCE(SUM(active), 0), COUNT(*) FROM subscribers"
        ).fetchone()
        return int(row[0]), int(row[1])

    def set_symbols(self, chat_id: int, symbols: Sequence[str]) -> bool:
        """Only alerts for `symbols` from now on (empty: all). False if `chat_id` is unknown."""
        for name in symbols:
            if not SYMBOL.fullmatch(name):
                raise ValueError(f"not a symbol: {name!r}")
        return self._set(chat_id, "symbols", ",".join(symbols))

    def set_min_severity(self, chat_id: int, severity: str) -> bool:
        """Only alerts at `severity` or above. False if `chat_id` is unknown."""
        if severity not in SEVERITY_RANK:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        return self._set(chat_id, "min_severity", severity)

    def set_quiet(self, chat_id: int, quiet: QuietHours | None) -> bool:
        """Set (or with None clear) the chat's quiet hours. False if `chat_id` is unknown."""
        start, end = (
            (None, None) if quiet is None else (f"{quiet.start:%H:%M}", f"{quiet.end:%H:%M}")
        )
        with self._transaction() as tx:
            cur = tx.execute(
                "UPDATE subscribers SET quiet_start = ?, quiet_end = ?, updated = ? "
                "WHERE chat_id = ?",
                (start, end, self._clock(), chat_id),
            )
            return cur.rowcount > 0

    def set_muted_until(self, chat_id: int, until: float) -> bool:
        """No alerts before `until` (epoch seconds; 0 unmutes). False if `chat_id` is unknown."""
        return self._set(chat_id, "muted_until", float(until))

    def _set(self, chat_id: int, column: str, value: object) -> bool:
        # `column` is always one of our literals, never user input.
        with self._transaction() as tx:
            cur = tx.execute(
                f"UPDATE subscribers SET {column} = ?, updated = ? WHERE chat_id = ?",
                (value, self._clock(), chat_id),
            )
            return cur.rowcount > 0

    def migrate(self, old_chat_id: int, new_chat_id: int) -> bool:
        """Move a group that became a supergroup to its new id, settings and deliveries included.

        If the new id already has a row (someone ran /start there after the
        upgrade), that newer row is kept and the old one dropped. False if
        `old_chat_id` is unknown.
        """
        if old_chat_id == new_chat_id:
            return False
        with self._transaction() as tx:
            if tx.execute("SELECT 1 FROM subscribers WHERE chat_id = ?", (old_chat_id,)).fetchone():
                exists = tx.execute(
                    "SELECT 1 FROM subscribers WHERE chat_id = ?", (new_chat_id,)
                ).fetchone()
                if exists:
                    tx.execute("DELETE FROM subscribers WHERE chat_id = ?", (old_chat_id,))
                else:
                    tx.execute(
                        "UPDATE subscribers SET chat_id = ?, updated = ? WHERE chat_id = ?",
                        (new_chat_id, self._clock(), old_chat_id),
                    )
                moved = True
            else:
                moved = False
            # OR IGNORE: a row the new id already has is the more recent truth.
            tx.execute(
                "UPDATE OR IGNORE deliveries SET chat_id = ? WHERE chat_id = ?",
                (new_chat_id, old_chat_id),
            )
            tx.execute("DELETE FROM deliveries WHERE chat_id = ?", (old_chat_id,))
        return moved

    # -- deliveries -----------------------------------------------------------------------

    def served(self, alert_id: str) -> dict[int, DeliveryStatus]:
        """What became of `alert_id` so far, by chat id."""
        rows = self._conn.execute(
            "SELECT chat_id, status FROM deliveries WHERE alert_id = ?", (alert_id,)
        ).fetchall()
        return {int(chat): status for chat, status in rows}

    def record(self, alert_id: str, outcomes: Iterable[tuple[int, DeliveryStatus]]) -> None:
        """Remember what became of `alert_id` in each chat, in one transaction."""
        now = self._clock()
        rows = [(alert_id, chat, status, now) for chat, status in outcomes]
        if not rows:
            return
        with self._transaction() as tx:
            tx.executemany(
                "INSERT INTO deliveries (alert_id, chat_id, status, at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (alert_id, chat_id) DO UPDATE SET status = excluded.status, "
                "at = excluded.at",
                rows,
            )

    def prune(self, older_than_s: float) -> int:
        """Forget delivery records older than `older_than_s`; returns how many went."""
        with self._transaction() as tx:
            cur = tx.execute("DELETE FROM deliveries WHERE at < ?", (self._clock() - older_than_s,))
            return cur.rowcount


def _subscriber(row: tuple[Any, ...]) -> Subscriber:
    chat_id, user_id, active, symbols, severity, q_start, q_end, muted, created, updated = row
    quiet = (
        QuietHours(dtime.fromisoformat(q_start), dtime.fromisoformat(q_end))
        if q_start is not None and q_end is not None
        else None
    )
    return Subscriber(
        chat_id=int(chat_id),
        user_id=None if user_id is None else int(user_id),
        active=bool(active),
        symbols=tuple(s for s in str(symbols).split(",") if s),
        min_severity=str(severity),
        quiet=quiet,
        muted_until=float(muted),
        created=float(created),
        updated=float(updated),
    )


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SubscriberStoreError(
            f"{path}: schema version {version} is newer than this version supports "
            f"({SCHEMA_VERSION}); upgrade iwm-alerts or move the file away"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.commit()
        finally:
            if conn.in_transaction:
                conn.rollback()
        _log.info("telegram.subscribers_migrated", path=str(path), schema_version=target)
