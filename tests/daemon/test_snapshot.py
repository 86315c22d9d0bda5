"""A restart from a snapshot continues the indicators exactly and sends no alert twice."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import structlog

from daemon.bars import frame_to_batch
from daemon.rules_file import load_rules
from daemon.snapshot import load_snapshot, save_snapshot
from signals.alerts import Alert
from signals.engine import COLUMNS, EngineConfig, Evaluation
from signals.pipeline import Pipeline
from signals.registry import SIGNALS
from signals.rules.spec import RuleSpec, parse_rules
from tests.daemon.minute_market import minute_market
from tests.signals.test_signal_seam import DOWN, UP

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


def _refusals(pipe: Pipeline, directory: Path) -> tuple[float | None, list[str]]:
    with structlog.testing.capture_logs() as logs:
        taken_at = load_snapshot(pipe, directory)
    return taken_at, [e["reason"] for e in logs if e["event"] == "snapshot.ignored"]


def test_an_old_schema_snapshot_is_refused_with_one_clear_line_and_a_cold_start(
    tmp_path: Path,
) -> None:
    df, table = minute_market(n_sessions=1)
    first = Pipeline(CONFIG, _rules(), sessions=table)
    _run(first, df.partition_by("time", maintain_order=True)[:30])
    save_snapshot(first, tmp_path / "snapshot", taken_at=1.0)
    meta_path = tmp_path / "snapshot" / "meta.json"
    meta = json.loads(meta_path.read_text())

    meta["version"] = 1  # a file written before state was keyed by name
    meta_path.write_text(json.dumps(meta))
    cold = Pipeline(CONFIG, _rules(), sessions=table)
    assert _refusals(cold, tmp_path / "snapshot") == (
        None,
        ["snapshot version 1, this daemon reads 2"],
    )
    assert cold.engine("1m").symbols == () and cold.engine("1d").symbols == ()

    meta["version"] = 2  # the file's layout is current, one engine's schema is not
    meta["engines"]["1m"] = {
        "symbols": meta["engines"]["1m"]["symbols"],
        "config": "EngineConfig(...)",
        "rejected_total": {},
    }
    meta_path.write_text(json.dumps(meta))
    cold = Pipeline(CONFIG, _rules(), sessions=table)
    assert _refusals(cold, tmp_path / "snapshot") == (
        None,
        ["engine snapshot schema 1, this engine reads schema 2"],
    )
    # Refused before anything is loaded: not even the daily engine, checked first.
    assert cold.engine("1m").symbols == () and cold.engine("1d").symbols == ()


def test_a_snapshot_restores_signal_state_by_name_in_a_reordered_registry(tmp_path: Path) -> None:
    df, table = minute_market(n_sessions=1)
    minutes = df.partition_by("time", maintain_order=True)
    config = replace(CONFIG, signals={**SIGNALS, "up": UP, "down": DOWN})
    whole = Pipeline(config, _rules(), sessions=table)
    whole_evs, _ = _run(whole, minutes)

    first = Pipeline(config, _rules(), sessions=table)
    _run(first, minutes[:100])
    save_snapshot(first, tmp_path / "snapshot", taken_at=5.0)
    reordered = replace(CONFIG, signals={"down": DOWN, "up": UP, **SIGNALS})
    second = Pipeline(reordered, _rules(), sessions=table)
    assert _refusals(second, tmp_path / "snapshot") == (5.0, [])
    after_evs, _ = _run(second, minutes[100:])
    for got, want in zip(after_evs, whole_evs[100:], strict=True):
        for c in ("streak_+1", "streak_-1", "sub_up", "sub_down", *COLUMNS[:-1]):
            assert np.array_equal(got.columns[c], want.columns[c], equal_nan=True), c
    assert max(ev.columns["streak_-1"].max() for ev in after_evs) >= 2


def test_a_snapshot_without_a_registered_signal_is_refused(tmp_path: Path) -> None:
    df, table = minute_market(n_sessions=1)
    first = Pipeline(replace(CONFIG, signals={**SIGNALS, "up": UP}), _rules(), sessions=table)
    _run(first, df.partition_by("time", maintain_order=True)[:30])
    save_snapshot(first, tmp_path / "snapshot", taken_at=1.0)
    plain = Pipeline(CONFIG, _rules(), sessions=table)
    assert _refusals(plain, tmp_path / "snapshot") == (
        None,
        ["the snapshot holds state for ['signal.up'] and none for []"],
    )
    assert plain.engine("1d").symbols == ()
