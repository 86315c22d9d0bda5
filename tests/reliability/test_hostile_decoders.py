"""Hostile input, decoders fed directly: fuzzed frames into the three feed protocols.

Each provider's sans-I/O protocol (`AlpacaProtocol`, `MassiveProtocol`,
`FinnhubProtocol`) is fed the frames of `tests.reliability.hostile.Frames`.
The generator knows what each record must become, so the properties are
exact: no exception escapes, the valid records come through as exactly the
bars they describe, and every invalid record is one rejection with the reason
predicted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.feeds.alpaca import AlpacaProtocol
from daemon.feeds.alpaca import BarsReceived as AlpacaBars
from daemon.feeds.finnhub import BarsReceived as FinnhubBars
from daemon.feeds.finnhub import FinnhubProtocol, Pinged
from daemon.feeds.massive import BarsReceived as MassiveBars
from daemon.feeds.massive import MassiveProtocol
from daemon.feeds.minute_builder import MinuteBuilder
from daemon.feeds.reconnect import Rejection
from signals.bar import Bar
from tests.daemon.feeds.feedkit import KEY, SECRET
from tests.reliability.hostile import (
    ALPACA_BAD_UTF8,
    SYMBOLS,
    T0,
    Batch,
    Frames,
    HypothesisPick,
    minute_bars,
    obj,
)
from tests.reliability.scale import scale

pytestmark = pytest.mark.reliability

NOW = T0 + 30 * 86_400  # the decoders' wall clock: a month after the first bar
FRAMES_PER_EXAMPLE = 25
EXAMPLES = scale(100, 420)
MIN_FRAMES = scale(2_000, 10_000)


@dataclass
class Outcome:
    """What a decoder made of a batch: bars with their kind, rejections, anything else."""

    bars: list[tuple[str, Bar]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    other: list[object] = field(default_factory=list)


def _alpaca_streaming(now_s: float) -> AlpacaProtocol:
    proto = AlpacaProtocol(KEY, SECRET, SYMBOLS)
    for frame in (
        '[{"T":"success","msg":"connected"}]',
        '[{"T":"success","msg":"authenticated"}]',
        '[{"T":"subscription","bars":["IWM","SPY","QQQ"],"updatedBars":[],"dailyBars":[]}]',
    ):
        proto.receive_frame(frame, now_s)
    proto.events_received()
    assert proto.state == "streaming"
    return proto


def _massive_streaming(now_s: float) -> MassiveProtocol:
    proto = MassiveProtocol("mAsSiVe-KEY-0123456789abcdef", SYMBOLS)
    for status in ("connected", "auth_success", "success"):
        proto.receive_frame(f'[{{"ev":"status","status":"{status}","message":"x"}}]', now_s)
    proto.events_received()
    assert proto.state == "streaming"
    return proto


def _decode(provider: str, frames: Sequence[str | bytes], now_s: float) -> Outcome:
    """Feed `frames` to a fresh decoder of `provider`; any exception escapes (that is a bug)."""
    out = Outcome()
    events: list[object] = []
    if provider == "alpaca":
        alpaca = _alpaca_streaming(now_s)
        for data in frames:
            alpaca.receive_frame(data, now_s)
        events = list(alpaca.events_received())
        assert alpaca.state == "streaming"
    elif provider == "massive":
        massive = _massive_streaming(now_s)
        for data in frames:
            massive.receive_frame(data, now_s)
        events = list(massive.events_received())
        assert massive.state == "streaming"
    else:
        finnhub = FinnhubProtocol(SYMBOLS, MinuteBuilder(2.0), token="fInNhUb-tok3n-0123456789")
        for data in frames:
            finnhub.receive_frame(data, now_s)
        finnhub.tick(now_s)  # closes every minute still open
        events = [e for e in finnhub.events_received() if not isinstance(e, Pinged)]
        bars = [bar for e in events if isinstance(e, FinnhubBars) for bar in e.bars]
        events = [e for e in events if not isinstance(e, FinnhubBars)]
        # Each message's bars are ordered; across messages they close as trades arrive.
        out.bars = [("live", bar) for bar in sorted(bars, key=lambda b: (b.time, b.symbol))]
    for event in events:
        if isinstance(event, Rejection):
            out.reasons[event.reason] += 1
        elif isinstance(event, AlpacaBars):
            out.bars += [(event.kind, bar) for bar in event.bars]
        elif isinstance(event, MassiveBars | FinnhubBars):
            out.bars += [("live", bar) for bar in event.bars]
        else:
            out.other.append(event)
    return out


FUZZ_TOTALS: dict[str, Counter[str]] = {}


@pytest.mark.parametrize("provider", ["alpaca", "massive", "finnhub"])
def test_fuzzed_frames_never_crash_a_decoder_and_every_bad_record_is_counted(
    provider: str,
) -> None:
    totals: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        pick = HypothesisPick(data)
        frames = Frames(provider, NOW, T0)
        batch = Batch()
        for _ in range(FRAMES_PER_EXAMPLE):
            frames.frame(pick, batch)
        got = _decode(provider, batch.frames, NOW)
        want = minute_bars(batch.trades) if provider == "finnhub" else batch.bars
        assert got.other == []
        assert got.bars == want
        assert got.reasons == batch.reasons
        totals["frames"] += len(batch.frames)
        totals["hostile_frames"] += batch.hostile_frames
        totals["rejections"] += sum(got.reasons.values())
        totals["bars"] += len(got.bars)
        totals["valid_trades"] += len(batch.trades)
        totals.update({f"reason:{k}": v for k, v in got.reasons.items()})

    fuzz()
    FUZZ_TOTALS[provider] = totals
    print(f"\n{provider}: {dict(sorted(totals.items()))}")
    assert totals["frames"] >= MIN_FRAMES
    assert totals["rejections"] > totals["frames"] // 2 and totals["bars"] > 0
    # every reason the generator aims at was really produced
    want_reasons = {"bad_json", "too_deep", "bad_field", "non_finite", "non_positive_price",
                    "negative_volume", "bad_time", "future_time", "bad_symbol",
                    "unsubscribed_symbol"}  # fmt: skip
    assert want_reasons <= {k.removeprefix("reason:") for k in totals}


def test_finnhub_volumes_that_overflow_a_minute_are_rejected_not_raised() -> None:
    ms = T0 * 1000
    frame = obj([("type", '"trade"'), ("data", "[" + ",".join(
        obj([("s", '"IWM"'), ("p", "10.0"), ("t", str(ms + i)), ("v", "1e308")]) for i in range(3)
    ) + "]")])  # fmt: skip
    got = _decode("finnhub", [frame], NOW)
    assert got.reasons == Counter(non_finite=2)
    assert got.bars == [("live", Bar("IWM", T0, 10.0, 10.0, 10.0, 10.0, 1e308))]


def test_alpaca_binary_frame_with_invalid_utf8_in_a_string_is_one_rejection() -> None:
    got = _decode("alpaca", [ALPACA_BAD_UTF8], NOW)
    assert got.reasons == Counter(bad_json=1) and got.bars == []
