"""The latency benchmark's probe: stamps at each seam of the daemon, per bar time.

It wraps the pipeline's and the outbox's methods on one daemon's instances, so
that the benchmark can split the end-to-end latency into stages; it crosses a
process boundary as JSON (the subprocess variant).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from daemon.app import Ingest
from signals.alerts import Alert
from signals.bar import BarBatch
from signals.pipeline import Step

clock = time.perf_counter_ns


@dataclass
class Probe:
    """Per bar time (epoch s): perf_counter_ns at each seam of the daemon."""

    stamps: dict[str, dict[int, int]] = field(default_factory=dict)
    _ids: dict[str, int] = field(default_factory=dict)

    def mark(self, seam: str, bar_time: int, t: int) -> None:
        self.stamps.setdefault(seam, {})[bar_time] = t

    def install(self, ingest: Ingest) -> None:
        """Wrap the pipeline's and the outbox's methods on these instances (not the classes)."""
        pipeline, outbox = ingest.pipeline, ingest.outbox
        on_minute, record = pipeline.on_minute_bars, outbox.record
        claim, delivered = outbox.claim, outbox.delivered

        def timed_minute(batch: BarBatch, wall_now: int | None = None) -> Step:
            t0 = clock()
            step = on_minute(batch, wall_now)
            t1 = clock()
            key = int(batch.time.max())
            self.mark("pipe_in", key, t0)
            self.mark("pipe_out", key, t1)
            return step

        def timed_record(alerts: Any, rule_state: Any, now: float) -> list[Alert]:
            t0 = clock()
            new = record(alerts, rule_state, now)
            t1 = clock()
            for a in new:
                self.mark("record_in", a.bar_time, t0)
                self.mark("record_out", a.bar_time, t1)
            return new

        def timed_claim(sink: str, now: float, limit: int) -> list[Alert]:
            t0 = clock()
            got = claim(sink, now, limit)
            t1 = clock()
            for a in got:
                self.mark("claim_in", a.bar_time, t0)
                self.mark("claim_out", a.bar_time, t1)
                self._ids[a.id] = a.bar_time
            return got

        def timed_delivered(alert_id: str, sink: str, now: float) -> None:
            delivered(alert_id, sink, now)
            if alert_id in self._ids:
                self.mark("delivered", self._ids[alert_id], clock())

        setattr(pipeline, "on_minute_bars", timed_minute)  # noqa: B010
        setattr(outbox, "record", timed_record)  # noqa: B010
        setattr(outbox, "claim", timed_claim)  # noqa: B010
        setattr(outbox, "delivered", timed_delivered)  # noqa: B010

    def dump(self) -> str:
        return json.dumps(
            {seam: {str(k): v for k, v in d.items()} for seam, d in self.stamps.items()}
        )

    @classmethod
    def load(cls, text: str) -> Probe:
        raw = json.loads(text)
        return cls({seam: {int(k): int(v) for k, v in d.items()} for seam, d in raw.items()})
