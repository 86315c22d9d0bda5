"""Late bars (after an outage) alert as delayed; very old ones (warm-up, long outages) not at all."""

from __future__ import annotations

from pathlib import Path

from daemon.app import STALE_AFTER_S, Ingest
from daemon.bars import frame_to_batch
from daemon.outbox import Outbox
from signals.engine import EngineConfig
from signals.pipeline import Pipeline
from signals.rules.spec import parse_rules
from tests.daemon.minute_market import minute_market

RULES = parse_rules(
    {
        "rule": [
            {
                "name": "every",
                "operator": "greater_than",
                "timeframe": "1m",
                "value": "close",
                "threshold": 0.0,
            }
        ]
    }
)


def test_delayed_and_stale_alerts(tmp_path: Path) -> None:
    df, table = minute_market(n_sessions=1)
    minutes = df.partition_by("time", maintain_order=True)
    pipe = Pipeline(EngineConfig(), RULES, sessions=table, delayed_after_s=120)
    end = int(minutes[0]["time"][0]) + 60
    on_time = pipe.on_minute_bars(frame_to_batch(minutes[0]), wall_now=end + 5).alerts
    late = pipe.on_minute_bars(frame_to_batch(minutes[1]), wall_now=end + 60 + 600).alerts
    assert on_time and not any(a.delayed for a in on_time)
    assert late and all(a.delayed for a in late)

    with Outbox.open(tmp_path / "o.sqlite", ["console"]) as outbox:
        ingest = Ingest(pipe, outbox, wall_clock=None)
        old = pipe.on_minute_bars(frame_to_batch(minutes[2])).alerts
        assert ingest.decide(old, wall=old[0].time + STALE_AFTER_S + 1) == []
        assert ingest.stats.alerts_stale == len(old)
        recent = pipe.on_minute_bars(frame_to_batch(minutes[3])).alerts
        assert len(ingest.decide(recent, wall=recent[0].time + 60)) == len(recent) == 3
        assert (
            ingest.decide(recent, wall=recent[0].time + 60) == []
        )  # the same event twice: refused
