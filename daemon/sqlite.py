"""The SQLite settings every durable store here uses, and its write transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def connect_durable(target: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """A connection in WAL mode with `synchronous = FULL`: a commit survives a crash.

    `isolation_level=None`: callers issue BEGIN/COMMIT themselves (`immediate`), so a
    transaction is exactly theirs. Raises `sqlite3.DatabaseError` (the connection
    closed) when the file is not a database or WAL cannot be had.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(target, timeout=busy_timeout_s, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot use WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError:
        conn.close()
        raise
    return conn


@contextmanager
def immediate(conn: sqlite3.Connection, *, fsync: bool = True) -> Iterator[sqlite3.Connection]:
    """A write transaction: committed if the body returns, rolled back if it raises.

    `fsync=False` commits without waiting for the disk (WAL `synchronous = NORMAL`):
    the commit survives the process being killed, and can only be lost, not
    corrupted, by a power cut or an OS crash; the next full commit makes it durable
    too. For bookkeeping whose loss is harmless (a delivery mark: at worst the
    alert is sent again), not for data that must survive.
    """
    if not fsync:
        conn.execute("PRAGMA synchronous = NORMAL")
    # IMMEDIATE takes the write lock up front: no upgrade deadlock with another writer.
    try:
        conn.execute("BEGIN IMMEDIATE")
    except BaseException:
        if not fsync:
            conn.execute("PRAGMA synchronous = FULL")
        raise
    try:
        yield conn
        conn.commit()
    finally:
        # Still open here means the body (or the commit) failed: undo all of it.
        if conn.in_transaction:
            conn.rollback()
        if not fsync:
            conn.execute("PRAGMA synchronous = FULL")
