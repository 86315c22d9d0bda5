"""A restart from a snapshot continues the indicators exactly and sends no alert twice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from daemon.bars import frame_to_batch
from daemon.rules_file import load_rules
from daemon.snapshot import load_snapshot, save_snapshot
from signals.alerts import Alert
from signals.engine import COLUMNS, EngineConfig, Evaluation
from signals.pipeline import Pipeline
from signals.rules.spec import RuleSpec, parse_rules
from tests.daemon.minute_market import minute_market

CONFIG = EngineConfig(rvol_sessions=3)


def _run(pipe: Pipeline, minutes: list[pl.DataFrame]) -> tuple[list[Evaluation], list[Alert]]:
    evs, alerts = [], []
    for g in minutes:
        step = pipe.on_minute_bars(frame_to_batch(g))
        evs.append(step.closed["1m"])
        alerts += step.alerts
    return evs, alerts


def _rules() -> list[RuleSpec]:
    extra = parse_rules(
        {
            "rule": [
                {
                    "name": "px",
                    "operator": "crossing_up",
                    "timeframe": "1m",
                    "value": "close",
                    "threshold": 202.0,
                }
            ]
        }
    )
    return [*load_rules(), *extra]


def test_restart_from_snapshot_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    df, table = minute_market()
    minutes = df.partition_by("time", maintain_order=True)
    cut = len(minutes) * 2 // 3 + 17  # mid-session, mid-swing
    whole = Pipeline(CONFIG, _rules(), sessions=table)
    whole_evs, whole_alerts = _run(whole, minutes)

    first = Pipeline(CONFIG, _rules(), sessions=table)
    _, before = _run(first, minutes[:cut])
    save_snapshot(first, tmp_path / "snapshot", taken_at=123.0)

    second = Pipeline(CONFIG, _rules(), sessions=table)
    assert load_snapshot(second, tmp_path / "snapshot") == 123.0
    after_evs, after = _run(second, minutes[cut:])

    for got, want in zip(after_evs, whole_evs[cut:], strict=True):
        assert got.symbol == want.symbol
        for c in COLUMNS:
            assert np.array_equal(got.columns[c], want.columns[c], equal_nan=True), c
    assert [a.id for a in before + after] == [a.id for a in whole_alerts]
    assert len(whole_alerts) > 2 and len(before) > 0 and len(after) > 0
    resumed, uninterrupted = second.engine("1d"), whole.engine("1d")
    assert resumed.rings.frame(resumed.row("IWM")).equals(
        uninterrupted.rings.frame(uninterrupted.row("IWM"))
    )


def test_a_snapshot_from_another_config_is_ignored(tmp_path: Path) -> None:
    df, table = minute_market(n_sessions=1)
    first = Pipeline(CONFIG, _rules(), sessions=table)
    _run(first, df.partition_by("time", maintain_order=True)[:30])
    save_snapshot(first, tmp_path / "snapshot", taken_at=1.0)
    other = Pipeline(EngineConfig(rvol_sessions=5), _rules(), sessions=table)
    assert load_snapshot(other, tmp_path / "snapshot") is None
    assert other.engine("1m").symbols == ()
    assert load_snapshot(other, tmp_path / "missing") is None


def test_saving_twice_replaces_the_snapshot(tmp_path: Path) -> None:
    df, table = minute_market(n_sessions=1)
    pipe = Pipeline(CONFIG, _rules(), sessions=table)
    minutes = df.partition_by("time", maintain_order=True)
    _run(pipe, minutes[:10])
    save_snapshot(pipe, tmp_path / "snapshot", taken_at=1.0)
    _run(pipe, minutes[10:20])
    save_snapshot(pipe, tmp_path / "snapshot", taken_at=2.0)
    fresh = Pipeline(CONFIG, _rules(), sessions=table)
    assert load_snapshot(fresh, tmp_path / "snapshot") == 2.0
    assert fresh.engine("1m").last_time("IWM") == int(minutes[19]["time"][0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot"]
