"""The alert: what a rule decided, with everything a sink needs to explain it."""

from __future__ import annotations

import hashlib

import msgspec

SEVERITIES: tuple[str, ...] = ("info", "notable", "strong")


def alert_id(rule: str, symbol: str, timeframe: str, bar_start: int) -> str:
    """A stable id for one event: the same (rule, symbol, timeframe, bar start) gives the same id
    across reconnects, replays and restarts, so the outbox can refuse a second copy."""
    key = f"{rule}\x1f{symbol}\x1f{timeframe}\x1f{bar_start}".encode()
    return hashlib.sha256(key).hexdigest()[:24]


class Alert(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One alert.

    `bar_time` is the start of the bar that fired it (epoch seconds, UTC) and
    `time` when it was decided (the bar's close, or the evaluation time of a
    forming bar). `values` holds what fired it (e.g. `rvol`, `close`,
    `level`, `rsi14`); `breakdown` is the score's breakdown by signal, as in
    `signals.score.Breakdown.as_dict()`. `delayed` marks an alert decided
    late (after an outage), which sinks show as such rather than as news.
    """

    id: str
    rule: str
    symbol: str
    timeframe: str
    bar_time: int
    time: int
    severity: str = "info"
    title: str
    values: dict[str, float | str | None] = msgspec.field(default_factory=dict)
    score: float | None = None
    label: str = "warming up"
    breakdown: dict[str, dict[str, float | None]] = msgspec.field(default_factory=dict)
    delayed: bool = False

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")


def encode_alert(alert: Alert) -> bytes:
    """JSON bytes of an alert (the outbox, MQTT and JSONL formats)."""
    return msgspec.json.encode(alert)


def decode_alert(data: bytes | str) -> Alert:
    """An alert from its JSON; raises `msgspec.ValidationError` on a malformed one."""
    return msgspec.json.decode(data, type=Alert)
