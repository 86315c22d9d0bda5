"""The embedded demo session tells its three stories through the real pipeline."""

from __future__ import annotations

from dataclasses import replace

from daemon.bars import frame_to_batch
from daemon.rules_file import load_rules
from daemon.sample import demo_market
from signals.engine import EngineConfig
from signals.pipeline import Pipeline
from signals.sessions import DAY_S


def test_demo_day_fires_volume_rsi_and_score_rules() -> None:
    m = demo_market()
    assert m.today["time"].n_unique() == 390 and m.today["symbol"].n_unique() == 3
    pipe = Pipeline(EngineConfig(), load_rules(), sessions=m.sessions)
    pipe.on_daily_bars(frame_to_batch(m.daily))
    history = frame_to_batch(m.history)
    loc = m.sessions.locate(history.time)
    assert bool(loc.regular.all())
    assert pipe.minute is not None
    pipe.minute.on_bars(replace(history, session=loc.label // DAY_S, minute=loc.minute))
    alerts = []
    for g in m.today.partition_by("time", maintain_order=True):
        alerts += pipe.on_minute_bars(frame_to_batch(g)).alerts
    fired = {(a.rule, a.symbol) for a in alerts}
    assert {
        ("volume_breakout", "IWM"),
        ("score_cross_up", "IWM"),
        ("rsi_entry_zone", "SPY"),
    } <= fired
    assert demo_market().today.equals(m.today)  # deterministic
