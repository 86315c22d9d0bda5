"""The outbox: ids refused twice, alert and rule state in one transaction, claims in order,
retries, restarts (including SIGKILL mid-write), and upkeep."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from daemon.outbox import SCHEMA_VERSION, Outbox, OutboxError
from daemon.sqlite import connect_durable, immediate
from signals.alerts import Alert, alert_id, decode_alert

ROOT = Path(__file__).resolve().parents[2]
SINKS = ("console", "jsonl")
T0 = 1_750_000_000.0


def make_alert(n: int, *, rule: str = "volume_breakout", symbol: str = "IWM") -> Alert:
    bar = 1_750_000_000 + 60 * n
    return Alert(
        id=alert_id(rule, symbol, "1m", bar),
        rule=rule,
        symbol=symbol,
        timeframe="1m",
        bar_time=bar,
        time=bar + 60,
        title=f"{symbol} alert {n}",
        values={"close": 200.0 + n, "level_name": "20-day high"},
        score=70.0,
        label="strong bullish",
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite"


def _ids(alerts: list[Alert]) -> list[str]:
    return [a.id for a in alerts]


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# -- opening -------------------------------------------------------------------------------


def test_open_creates_the_schema_with_wal_and_a_version(path: Path) -> None:
    with Outbox.open(path, SINKS) as outbox:
        assert outbox.sinks == SINKS
        assert outbox.depth() == 0
        assert outbox.load_rule_state() is None
    assert _rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert _rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in _rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"alerts", "deliveries", "state"} <= tables


def test_open_refuses_a_newer_schema_and_a_non_database(path: Path, tmp_path: Path) -> None:
    Outbox.open(path, SINKS).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(OutboxError, match="newer"):
        Outbox.open(path, SINKS)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, it only has a name like one" * 100)
    with pytest.raises(OutboxError):
        Outbox.open(junk, SINKS)
    with pytest.raises(ValueError, match="sink"):
        Outbox.open(tmp_path / "x.sqlite", [])


# -- record --------------------------------------------------------------------------------


def test_record_refuses_duplicates_within_and_across_calls(path: Path) -> None:
    a, b, c = make_alert(1), make_alert(2), make_alert(3)
    with Outbox.open(path, SINKS) as outbox:
        assert _ids(outbox.record([a, b, a], None, T0)) == [a.id, b.id]
        assert _ids(outbox.record([b, c], None, T0 + 1)) == [c.id]
        assert outbox.record([a, b, c], None, T0 + 2) == []
        assert outbox.depth() == 3 * len(SINKS)
        assert outbox.stats() == {s: {"pending": 3, "sending": 0, "delivered": 0, "rejected": 0}
                                  for s in SINKS}  # fmt: skip


def test_record_refuses_duplicates_across_restarts(path: Path) -> None:
    a, b = make_alert(1), make_alert(2)
    with Outbox.open(path, SINKS) as outbox:
        assert outbox.record([a], None, T0) == [a]
        outbox.delivered(a.id, "console", T0 + 1)
    with Outbox.open(path, SINKS) as outbox:
        # A replay after the restart decides the same event again: it is not sent twice.
        assert outbox.record([a, b], None, T0 + 10) == [b]
        assert outbox.claim("console", T0 + 10, 10) == [b]
        assert outbox.recent(10) == [b, a]


def test_rule_state_round_trips_nan_and_none_leaves_it(path: Path) -> None:
    state = {"symbols": ["IWM"], "rules": {"r": {"prev": [math.nan, 1.5], "armed": [True]}}}
    with Outbox.open(path, SINKS) as outbox:
        outbox.record([], state, T0)
        outbox.record([make_alert(1)], None, T0 + 1)
    with Outbox.open(path, SINKS) as outbox:
        loaded = outbox.load_rule_state()
    assert loaded is not None
    prev = loaded["rules"]["r"]["prev"]
    assert math.isnan(prev[0]) and prev[1] == 1.5
    assert loaded["symbols"] == ["IWM"] and loaded["rules"]["r"]["armed"] == [True]


def test_a_state_that_cannot_be_serialised_rolls_the_alerts_back(path: Path) -> None:
    with Outbox.open(path, SINKS) as outbox:
        outbox.record([make_alert(1)], {"gen": 1}, T0)
        with pytest.raises(TypeError):
            outbox.record([make_alert(2)], {"gen": 2, "bad": object()}, T0 + 1)
        # Neither the alert nor the state of the failed transaction exists...
        assert _ids(outbox.recent(10)) == [make_alert(1).id]
        assert outbox.load_rule_state() == {"gen": 1}
        assert outbox.depth() == len(SINKS)
        # ...so deciding the alert again later records it.
        assert outbox.record([make_alert(2)], {"gen": 2}, T0 + 2) == [make_alert(2)]


def test_a_database_failure_writing_the_state_rolls_the_alerts_back(path: Path) -> None:
    with Outbox.open(path, SINKS) as outbox:
        outbox.record([make_alert(1)], {"gen": 1}, T0)
        # The failure comes from SQLite itself, after the alerts and deliveries were inserted.
        conn = sqlite3.connect(path)
        conn.execute(
            "CREATE TRIGGER fail_state BEFORE UPDATE ON state BEGIN SELECT RAISE(ABORT, 'disk'); END"
        )
        conn.commit()
        conn.close()
        with pytest.raises(sqlite3.DatabaseError, match="disk"):
            outbox.record([make_alert(2), make_alert(3)], {"gen": 2}, T0 + 1)
        assert _ids(outbox.recent(10)) == [make_alert(1).id]
        assert outbox.load_rule_state() == {"gen": 1}
        assert outbox.stats()["console"]["pending"] == 1
        # The outbox is still usable after the rollback.
        assert outbox.record([make_alert(2)], None, T0 + 2) == [make_alert(2)]


# -- restart -------------------------------------------------------------------------------


def test_sending_rows_go_back_to_pending_on_reopen(path: Path) -> None:
    a, b = make_alert(1), make_alert(2)
    with Outbox.open(path, SINKS) as outbox:
        outbox.record([a, b], None, T0)
        assert outbox.claim("console", T0, 10) == [a, b]
        outbox.delivered(a.id, "console", T0 + 1)
        # "crash" here: b is still sending
    with Outbox.open(path, SINKS, now=T0 + 5) as outbox:
        assert outbox.stats()["console"] == {
            "pending": 1,
            "sending": 0,
            "delivered": 1,
            "rejected": 0,
        }
        assert outbox.claim("console", T0 + 5, 10) == [b]
        assert outbox.attempts(b.id, "console") == 2  # the interrupted try counts


def test_a_new_sink_gets_only_new_alerts_and_a_removed_one_is_not_counted(path: Path) -> None:
    old, new = make_alert(1), make_alert(2)
    with Outbox.open(path, ["console"]) as outbox:
        outbox.record([old], None, T0)
    with Outbox.open(path, ["jsonl", "mqtt"]) as outbox:
        outbox.record([new], None, T0 + 1)
        assert outbox.claim("mqtt", T0 + 1, 10) == [new]
        assert outbox.claim("jsonl", T0 + 1, 10) == [new]
        assert outbox.depth() == 2  # the old console row belongs to no configured sink
        assert outbox.depth("console") == 1
        assert outbox.stats()["console"]["pending"] == 1


# -- claim and settle ----------------------------------------------------------------------


def test_claim_is_oldest_first_within_limit_and_only_due(path: Path) -> None:
    alerts = [make_alert(n) for n in range(6)]
    with Outbox.open(path, SINKS) as outbox:
        # Recorded out of bar order: the order of recording is what counts.
        outbox.record([alerts[3], alerts[1]], None, T0)
        outbox.record([alerts[0]], None, T0 + 1)
        outbox.record([alerts[5], alerts[2], alerts[4]], None, T0 + 2)
        assert outbox.claim("console", T0 - 1, 10) == []  # nothing due before it was recorded
        assert outbox.claim("console", T0 + 1, 2) == [alerts[3], alerts[1]]
        assert outbox.claim("console", T0 + 5, 10) == [alerts[0], alerts[5], alerts[2], alerts[4]]
        assert outbox.claim("console", T0 + 5, 10) == []  # all are sending now
        assert all(outbox.attempts(a.id, "console") == 1 for a in alerts)
        # The other sink's queue is untouched.
        assert outbox.claim("jsonl", T0 + 5, 1) == [alerts[3]]
        with pytest.raises(ValueError):
            outbox.claim("jsonl", T0, 0)


def test_retry_honours_next_attempt_at_and_holds_back_the_queue(path: Path) -> None:
    a, b = make_alert(1), make_alert(2)
    with Outbox.open(path, SINKS) as outbox:
        outbox.record([a], None, T0)
        outbox.record([b], None, T0 + 1)
        assert outbox.claim("console", T0 + 1, 1) == [a]
        outbox.retry(a.id, "console", T0 + 2, 30.0, "broker down")
        assert outbox.next_due("console") == T0 + 32
        # b is due, but it is behind a: the sink must not see b first.
        assert outbox.claim("console", T0 + 31, 10) == []
        assert outbox.claim("console", T0 + 32, 10) == [a, b]
        assert outbox.attempts(a.id, "console") == 2
        err = _rows(path, f"SELECT last_error FROM deliveries WHERE alert_id = '{a.id}'"
                    " AND sink = 'console'")  # fmt: skip
        assert err == [("broker down",)]
        with pytest.raises(ValueError):
            outbox.retry(a.id, "console", T0, -1.0, "x")
        with pytest.raises(KeyError):
            outbox.delivered("no-such-alert", "console", T0)


def test_release_returns_unattempted_claims_uncounted(path: Path) -> None:
    a, b = make_alert(1), make_alert(2)
    with Outbox.open(path, SINKS) as outbox:
        outbox.record([a, b], None, T0)
        assert outbox.claim("console", T0, 10) == [a, b]
        outbox.release([b.id], "console", T0)
        assert outbox.attempts(b.id, "console") == 0
        assert outbox.stats()["console"]["sending"] == 1
        assert outbox.claim("console", T0, 10) == [b]


def test_rejected_and_delivered_settle_depth_and_stats(path: Path) -> None:
    a, b, c = make_alert(1), make_alert(2), make_alert(3)
    with Outbox.open(path, SINKS) as outbox:
        outbox.record([a, b, c], None, T0)
        outbox.claim("console", T0, 10)
        outbox.delivered(a.id, "console", T0 + 1)
        outbox.rejected(b.id, "console", T0 + 1, "x" * 10_000)
        assert outbox.depth("console") == 1
        assert outbox.depth("jsonl") == 3
        assert outbox.depth() == 4
        assert outbox.stats()["console"] == {
            "pending": 0,
            "sending": 1,
            "delivered": 1,
            "rejected": 1,
        }
    (err,) = _rows(path, f"SELECT last_error FROM deliveries WHERE alert_id = '{b.id}'"
                   " AND sink = 'console'")[0]  # fmt: skip
    assert isinstance(err, str) and len(err) <= 500 and err.endswith("…")


def test_an_undecodable_row_is_rejected_not_a_blocker(path: Path) -> None:
    a, b = make_alert(1), make_alert(2)
    with Outbox.open(path, SINKS) as outbox:
        outbox.record([a], None, T0)
        outbox.record([b], None, T0 + 1)
        conn = sqlite3.connect(path)
        conn.execute("UPDATE alerts SET alert = '{\"id\": 1}' WHERE id = ?", (a.id,))
        conn.commit()
        conn.close()
        assert outbox.claim("console", T0 + 1, 10) == [b]
        assert outbox.stats()["console"]["rejected"] == 1
        assert outbox.recent(10) == [b]


def test_prune_removes_only_old_fully_settled_alerts(path: Path) -> None:
    old_done, old_open, new_done = make_alert(1), make_alert(2), make_alert(3)
    with Outbox.open(path, ["console"]) as outbox:
        outbox.record([old_done, old_open], None, T0)
    with Outbox.open(path, SINKS) as outbox:
        outbox.record([new_done], None, T0 + 1000)
        outbox.claim("console", T0 + 1000, 10)
        outbox.claim("jsonl", T0 + 1000, 10)
        outbox.delivered(old_done.id, "console", T0 + 1000)
        outbox.delivered(new_done.id, "console", T0 + 1000)
        outbox.rejected(new_done.id, "jsonl", T0 + 1000, "too big")
        removed = outbox.prune(older_than_s=500, now=T0 + 1100)
        assert removed == 1
        assert outbox.recent(10) == [new_done, old_open]
        assert _rows(path, f"SELECT COUNT(*) FROM deliveries WHERE alert_id = '{old_done.id}'") == [
            (0,)
        ]
        assert outbox.prune(older_than_s=0, now=T0 + 2000) == 1  # new_done: settled everywhere
        assert outbox.recent(10) == [old_open]


# -- crash safety --------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from daemon.outbox import Outbox
    from signals.alerts import Alert, alert_id

    outbox = Outbox.open(sys.argv[1], ["console", "jsonl"])
    state = outbox.load_rule_state()
    batch = 0 if state is None else state["batch"] + 1  # resume where the last run died
    while True:
        alerts = []
        for j in range(3):
            bar = 1_750_000_000 + 60 * (3 * batch + j)
            alerts.append(Alert(
                id=alert_id("r", "IWM", "1m", bar), rule="r", symbol="IWM", timeframe="1m",
                bar_time=bar, time=bar + 60, title="x" * 200, values={"batch": float(batch)},
            ))
        for alert in outbox.record(alerts, {"batch": batch, "pad": "y" * 500}, float(batch)):
            print("ID", alert.id, flush=True)
        batch += 1
    """
)


def _run_and_kill(path: Path, count: int) -> list[str]:
    """Start the writer, read `count` acknowledged ids, SIGKILL it while it keeps writing."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acknowledged: list[str] = []
    try:
        while len(acknowledged) < count:
            line = proc.stdout.readline()
            assert line, "the writer died before being killed"
            if line.startswith("ID "):  # other lines are its log
                acknowledged.append(line.split()[1])
        proc.send_signal(signal.SIGKILL)  # no chance to close or checkpoint anything
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return acknowledged


def test_sigkill_mid_loop_loses_no_recorded_alert(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    acknowledged: set[str] = set()
    for _ in range(3):  # killed, reopened and killed again: recovery must hold each time
        acknowledged |= set(_run_and_kill(path, 90))
        assert _rows(path, "PRAGMA integrity_check") == [("ok",)]
        with Outbox.open(path, ["console", "jsonl"]) as outbox:
            stored = {a.id: a for a in outbox.recent(1_000_000)}
            assert acknowledged <= set(stored)
            # Every stored alert has its delivery rows, and the state is the one written
            # with the last batch of alerts: they were committed together.
            assert outbox.depth() == 2 * len(stored)
            state = outbox.load_rule_state()
            assert state is not None
            batches = sorted({int(a.values["batch"]) for a in stored.values()})  # type: ignore[arg-type]
            assert batches == list(range(len(batches)))
            assert state["batch"] == batches[-1]
            assert len(stored) == 3 * len(batches)
        for (text,) in _rows(path, "SELECT alert FROM alerts"):
            assert isinstance(text, str)
            decode_alert(text)


def test_bookkeeping_commits_skip_the_fsync_and_leave_the_connection_durable(
    tmp_path: Path,
) -> None:
    """Delivery marks commit with synchronous=NORMAL; everything else (and `record`) stays FULL,
    even after a bookkeeping transaction that failed."""
    full, normal = 2, 1
    conn = connect_durable(tmp_path / "x.sqlite", 1.0)
    conn.execute("CREATE TABLE t (x)")
    with immediate(conn, fsync=False):
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == normal
        conn.execute("INSERT INTO t VALUES (1)")
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == full
    with pytest.raises(RuntimeError), immediate(conn, fsync=False):
        conn.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("boom")
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == full
    with immediate(conn):
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == full
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    conn.close()
