"""Digests: every symbol's score and the day's alerts, one per session through the outbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.backend import DaemonBackend
from daemon.bars import frame_to_batch
from daemon.digest import digest_alert
from daemon.outbox import Outbox
from daemon.rules_file import load_rules
from daemon.sinks.render import render_html, render_text
from signals.engine import EngineConfig
from signals.pipeline import Pipeline
from tests.daemon.minute_market import minute_market


def test_digest_lists_every_symbol_and_is_sent_once_per_session(tmp_path: Path) -> None:
    df, table = minute_market(n_sessions=2)
    pipe = Pipeline(EngineConfig(rvol_sessions=3), load_rules(), sessions=table)
    backend = DaemonBackend(pipe, ["IWM", "SPY", "QQQ"])
    assert digest_alert("close_digest", backend, 1_704_400_000.0, []).title.count("warming up") == 3
    for g in df.partition_by("time", maintain_order=True):
        backend.observe(pipe.on_minute_bars(frame_to_batch(g)).forming_daily)
    now = float(df["time"].max()) + 600  # type: ignore[arg-type]
    alert = digest_alert("close_digest", backend, now, [])
    assert alert.rule == "close_digest" and alert.symbol == "ALL"
    for sym in ("IWM", "SPY", "QQQ"):
        assert sym in alert.title and f"{sym}_alerts_today" in alert.values
    assert "0 alerts today" in alert.title
    assert "Close digest" in render_text(alert) and "Close digest" in render_html(alert)
    again = digest_alert("close_digest", backend, now + 60, [])
    assert again.id == alert.id  # same session, same id
    with Outbox.open(tmp_path / "outbox.sqlite", ["console"]) as outbox:
        assert len(outbox.record([alert], None, now)) == 1
        assert outbox.record([again], None, now + 60) == []
    with pytest.raises(ValueError, match="unknown digest"):
        digest_alert("lunch_digest", backend, now, [])
