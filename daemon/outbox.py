"""The outbox: alerts and the rule state that fired them, durable together, then delivered per sink.

One SQLite file (WAL, `synchronous=FULL`). `record` writes new alerts, one
pending delivery row per alert and configured sink, and the rule-book state
in a single transaction: after a crash either the alert exists *and* the
state knows it fired, or neither does, so a restart neither loses nor
re-fires it. Alert ids are the primary key, so the same event is refused a
second time across reconnects, replays and restarts.

Each sink's delivery loop `claim`s due rows (marked `sending`), sends them and
settles each one (`delivered`, `retry`, `rejected`). A row still `sending`
when the file is opened again was interrupted by a crash: it goes back to
`pending`, so delivery is at-least-once and the only possible duplicate is
the alert that was in flight.

Every method is synchronous: a transaction takes well under a millisecond
(plus one fsync for `record`), and the ingest path that calls `record` is
synchronous too. Only `record` waits for the disk: the delivery marks
(`claim`, `delivered`, `retry`, ...) commit without an fsync, which a killed
process never loses (WAL) and a power cut can only roll back to "pending",
i.e. one more delivery of an alert, which at-least-once allows. That keeps
one fsync, not three, on the path from a bar to a subscriber.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

import msgspec
import structlog

from daemon.sqlite import connect_durable, immediate
from signals.alerts import Alert, decode_alert, encode_alert

_log = structlog.get_logger(__name__)

STATUSES: Final = ("pending", "sending", "delivered", "rejected")
SCHEMA_VERSION: Final = 1
RULE_STATE_KEY: Final = "rule_state"
# Errors are kept for /status and debugging; a sink's error text has no business being long.
_MAX_ERROR_CHARS = 500

# Migration N (index N-1) takes the schema from user_version N-1 to N, in one transaction.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """
        CREATE TABLE alerts (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE,
            alert TEXT NOT NULL,
            created_at REAL NOT NULL
        )
        """,
        "CREATE INDEX alerts_created ON alerts (created_at, seq)",
        """
        CREATE TABLE deliveries (
            alert_id TEXT NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
            sink TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'sending', 'delivered', 'rejected')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT,
            updated_at REAL NOT NULL,
            PRIMARY KEY (alert_id, sink)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX deliveries_queue ON deliveries (sink, status)",
        """
        CREATE TABLE state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
    ),
)

# Oldest first; `seq` (the order `record` saw them) breaks ties within one transaction.
_QUEUE_SQL = """
    SELECT a.id, a.alert, d.next_attempt_at
    FROM deliveries AS d JOIN alerts AS a ON a.id = d.alert_id
    WHERE d.sink = ? AND d.status = 'pending'
    ORDER BY a.created_at, a.seq
    LIMIT ?
"""


class _Settled(NamedTuple):
    """A delivery's new state; an error or next attempt of None keeps the stored one."""

    status: str
    now: float
    error: str | None = None
    next_attempt_at: float | None = None


class OutboxError(Exception):
    """The outbox file cannot be used as is (made by a newer version, not a database...)."""


class Outbox:
    """Alerts, their per-sink delivery rows and the rule state, in one SQLite file.

    Create with `Outbox.open(path, sinks)`; use as a context manager or call
    `close()`. Not thread-safe: use it from the event loop's thread only.
    """

    def __init__(self, conn: sqlite3.Connection, sinks: Sequence[str]) -> None:
        """Wrap an open, migrated connection; use `Outbox.open` rather than this."""
        self._conn = conn
        self.sinks: tuple[str, ...] = tuple(dict.fromkeys(sinks))

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        sinks: Sequence[str],
        *,
        busy_timeout_s: float = 5.0,
        now: float | None = None,
    ) -> Outbox:
        """Open (creating or migrating) the outbox at `path` for the configured `sinks`.

        Rows left `sending` by a crash go back to `pending`. New sinks only get
        rows for alerts recorded from now on: old alerts are not replayed to them.
        """
        if not sinks:
            raise ValueError("an outbox needs at least one sink")
        target = Path(path)
        opened = False
        try:
            conn = connect_durable(target, busy_timeout_s)
        except sqlite3.DatabaseError as exc:  # not a database, or no WAL
            raise OutboxError(f"{target}: {exc}") from exc
        try:
            _migrate(conn, target)
            outbox = cls(conn, sinks)
            reset = outbox._reset_interrupted(time.time() if now is None else now)
            opened = True
        except sqlite3.DatabaseError as exc:  # not a database, corrupt, locked for too long
            raise OutboxError(f"{target}: {exc}") from exc
        finally:
            if not opened:
                conn.close()
        _log.info("outbox.opened", path=str(target), sinks=list(outbox.sinks), requeued=reset)
        return outbox

    def close(self) -> None:
        """Close the database (the last connection's close checkpoints the WAL)."""
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

    def _transaction(self, *, fsync: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._conn, fsync=fsync)

    def _reset_interrupted(self, now: float) -> int:
        with self._transaction() as tx:
            cur = tx.execute(
                "UPDATE deliveries SET status = 'pending', updated_at = ? WHERE status = 'sending'",
                (now,),
            )
            return cur.rowcount

    # -- ingest ---------------------------------------------------------------------------

    def record(
        self, alerts: Sequence[Alert], rule_state: Mapping[str, Any] | None, now: float
    ) -> list[Alert]:
        """Store `alerts` and `rule_state` in one transaction; return the alerts that are new.

        An alert whose id is already stored is skipped (it was recorded before,
        perhaps by a run that crashed). Each new alert gets a pending delivery
        row per configured sink, due at once. `rule_state` (JSON-able, NaN
        allowed) replaces the stored state; None leaves it as it is. If
        anything fails, nothing is written.
        """
        new: list[Alert] = []
        with self._transaction() as tx:
            seq = tx.execute("SELECT COALESCE(MAX(seq), 0) FROM alerts").fetchone()[0]
            for alert in alerts:
                seq += 1
                cur = tx.execute(
                    "INSERT OR IGNORE INTO alerts (id, seq, alert, created_at) VALUES (?, ?, ?, ?)",
                    (alert.id, seq, encode_alert(alert).decode(), now),
                )
                if cur.rowcount == 1:
                    new.append(alert)
            tx.executemany(
                "INSERT INTO deliveries (alert_id, sink, status, attempts, next_attempt_at,"
                " updated_at) VALUES (?, ?, 'pending', 0, ?, ?)",
                [(a.id, sink, now, now) for a in new for sink in self.sinks],
            )
            if rule_state is not None:
                # Serialised inside the transaction: a state that cannot be written
                # takes the alerts down with it.
                blob = json.dumps(rule_state, separators=(",", ":"))
                tx.execute(
                    "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                    " updated_at = excluded.updated_at",
                    (RULE_STATE_KEY, blob, now),
                )
        return new

    def load_rule_state(self) -> dict[str, Any] | None:
        """The rule state last written by `record`, or None if there is none yet."""
        row = self._conn.execute(
            "SELECT value FROM state WHERE key = ?", (RULE_STATE_KEY,)
        ).fetchone()
        if row is None:
            return None
        state = json.loads(row[0])
        if not isinstance(state, dict):
            raise OutboxError(f"stored rule state is a {type(state).__name__}, not an object")
        return state

    # -- delivery -------------------------------------------------------------------------

    def claim(self, sink: str, now: float, limit: int) -> list[Alert]:
        """Mark up to `limit` due pending alerts of `sink` as sending (attempts + 1), oldest first.

        The queue is ordered per sink: a pending alert that is not due yet (it
        is waiting out a retry delay) holds back the alerts behind it, so a
        sink never receives alerts out of order. An alert that can no longer
        be decoded (written by another version) is rejected and skipped.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        claimed: list[Alert] = []
        with self._transaction(fsync=False) as tx:
            for alert_id, text, next_attempt_at in tx.execute(_QUEUE_SQL, (sink, limit)).fetchall():
                if next_attempt_at > now:
                    break
                try:
                    alert = decode_alert(text)
                except msgspec.DecodeError as exc:
                    _log.warning("outbox.undecodable", alert_id=alert_id, sink=sink)
                    self._settle(
                        tx, alert_id, sink, _Settled("rejected", now, f"undecodable alert: {exc}")
                    )
                    continue
                tx.execute(
                    "UPDATE deliveries SET status = 'sending', attempts = attempts + 1,"
                    " updated_at = ? WHERE alert_id = ? AND sink = ?",
                    (now, alert_id, sink),
                )
                claimed.append(alert)
        return claimed

    def next_due(self, sink: str) -> float | None:
        """When the head of `sink`'s queue is due (epoch s), or None if nothing is pending."""
        row = self._conn.execute(_QUEUE_SQL, (sink, 1)).fetchone()
        return None if row is None else float(row[2])

    def attempts(self, alert_id: str, sink: str) -> int:
        """How many times delivery of `alert_id` to `sink` was started (0 if there is no row)."""
        row = self._conn.execute(
            "SELECT attempts FROM deliveries WHERE alert_id = ? AND sink = ?", (alert_id, sink)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def delivered(self, alert_id: str, sink: str, now: float) -> None:
        """`sink` took the alert."""
        with self._transaction(fsync=False) as tx:
            self._settle(tx, alert_id, sink, _Settled("delivered", now))

    def retry(self, alert_id: str, sink: str, now: float, delay_s: float, error: str) -> None:
        """`sink` could not take the alert now: pending again, due `delay_s` from `now`."""
        if not math.isfinite(delay_s) or delay_s < 0:
            raise ValueError(f"delay_s must be finite and >= 0, got {delay_s}")
        with self._transaction(fsync=False) as tx:
            self._settle(tx, alert_id, sink, _Settled("pending", now, error, now + delay_s))

    def due_now(self, sink: str, now: float) -> int:
        """Every pending alert of `sink` waiting out a retry delay is due at `now` (the sink
        came up again: its backlog should not sit out the backoff). Returns how many."""
        with self._transaction(fsync=False) as tx:
            cur = tx.execute(
                "UPDATE deliveries SET next_attempt_at = ?, updated_at = ?"
                " WHERE sink = ? AND status = 'pending' AND next_attempt_at > ?",
                (now, now, sink, now),
            )
            return cur.rowcount

    def rejected(self, alert_id: str, sink: str, now: float, error: str) -> None:
        """`sink` will never take the alert: give up on it for that sink."""
        with self._transaction(fsync=False) as tx:
            self._settle(tx, alert_id, sink, _Settled("rejected", now, error))

    def release(self, alert_ids: Sequence[str], sink: str, now: float) -> None:
        """Return claimed alerts that were never attempted to pending, uncounting the claim."""
        with self._transaction(fsync=False) as tx:
            tx.executemany(
                "UPDATE deliveries SET status = 'pending', attempts = MAX(attempts - 1, 0),"
                " updated_at = ? WHERE alert_id = ? AND sink = ? AND status = 'sending'",
                [(now, alert_id, sink) for alert_id in alert_ids],
            )

    @staticmethod
    def _settle(tx: sqlite3.Connection, alert_id: str, sink: str, settled: _Settled) -> None:
        status, now, error, next_attempt_at = settled
        if error is not None and len(error) > _MAX_ERROR_CHARS:
            error = error[: _MAX_ERROR_CHARS - 1] + "…"
        cur = tx.execute(
            "UPDATE deliveries SET status = ?, last_error = COALESCE(?, last_error),"
            " next_attempt_at = COALESCE(?, next_attempt_at), updated_at = ?"
            " WHERE alert_id = ? AND sink = ?",
            (status, error, next_attempt_at, now, alert_id, sink),
        )
        if cur.rowcount != 1:
            raise KeyError(f"no delivery of alert {alert_id} to sink {sink!r}")

    # -- inspection and upkeep ------------------------------------------------------------

    def depth(self, sink: str | None = None) -> int:
        """Alerts not yet delivered nor rejected, for `sink` or summed over the configured sinks."""
        sinks = self.sinks if sink is None else (sink,)
        marks = ",".join("?" * len(sinks))
        row = self._conn.execute(
            "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'sending')"
            f" AND sink IN ({marks})",
            sinks,
        ).fetchone()
        return int(row[0])

    def stats(self) -> dict[str, dict[str, int]]:
        """Delivery rows per sink and status; every configured sink is listed, with zeros."""
        out = {sink: dict.fromkeys(STATUSES, 0) for sink in self.sinks}
        for sink, status, count in self._conn.execute(
            "SELECT sink, status, COUNT(*) FROM deliveries GROUP BY sink, status"
        ):
            out.setdefault(sink, dict.fromkeys(STATUSES, 0))[status] = int(count)
        return out

    def recent(self, limit: int = 20) -> list[Alert]:
        """The last `limit` alerts recorded, newest first."""
        rows = self._conn.execute(
            "SELECT alert FROM alerts ORDER BY created_at DESC, seq DESC LIMIT ?", (limit,)
        ).fetchall()
        out: list[Alert] = []
        for (text,) in rows:
            try:
                out.append(decode_alert(text))
            except msgspec.DecodeError:
                continue  # written by another version: not worth failing /status over
        return out

    def prune(self, older_than_s: float, now: float) -> int:
        """Delete alerts recorded before `now - older_than_s` whose configured sinks are all settled.

        Rows of sinks no longer configured do not keep an alert alive (nothing
        will ever deliver them). Returns how many alerts were deleted.
        """
        marks = ",".join("?" * len(self.sinks))
        with self._transaction(fsync=False) as tx:
            cur = tx.execute(
                "DELETE FROM alerts WHERE created_at < ? AND NOT EXISTS ("
                " SELECT 1 FROM deliveries AS d WHERE d.alert_id = alerts.id"
                f" AND d.status IN ('pending', 'sending') AND d.sink IN ({marks}))",
                (now - older_than_s, *self.sinks),
            )
            return cur.rowcount


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise OutboxError(
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
            if conn.in_transaction:  # failed: the file stays at the last complete version
                conn.rollback()
        _log.info("outbox.migrated", path=str(path), schema_version=target)
