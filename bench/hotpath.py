"""Benchmark 1: the hot path per symbol-bar, ours against talipp, TA-Lib and pandas-ta-classic.

Every contender gets the same pre-encoded Alpaca frames (one per minute, every
symbol) and decodes them with msgspec. Ours then runs the daemon's path:
`AlpacaProtocol` (validation), `BarBatch.from_bars`, `Pipeline.on_minute_bars`
(all eight signals, score, the default rules, the forming-daily peek). The
peers only update indicators (RSI 14, MACD 12/26/9, ATR 14, EMA 10 and 40,
SMA 20 of volume, and for TA-Lib/pandas-ta a 20-bar high/low): they do no
scoring and no rules, which favours them. Warm-up minutes are not timed. Per
timed minute the contenders run back to back in a rotating order, so noise
hits them alike; ratios are medians measured in this process.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import numpy as np
import pandas as pd
import pandas_ta_classic as pta
import talib
from talipp.indicators import ATR, EMA, MACD, RSI, SMA
from talipp.ohlcv import OHLCV

from bench.common import (
    HANDSHAKE,
    Market,
    alpaca_frames,
    fmt_time,
    median,
    minute_times,
    p99,
    random_walk,
    sessions,
    subscription,
    table,
    yes_no,
)
from daemon.bars import frame_to_batch
from daemon.feeds.alpaca import AlpacaProtocol, BarsReceived
from daemon.rules_file import load_rules
from signals.bar import Bar, BarBatch
from signals.engine import EngineConfig
from signals.pipeline import Pipeline

WINDOW = 300
PANDAS_SUBSET = 10
FIRST_SESSION = 120  # minutes start here; the 60 sessions before are the daily warm-up


class WireBar(msgspec.Struct):
    """What the peers decode: the Alpaca bar fields, unvalidated."""

    S: str
    o: float
    h: float
    low: float = msgspec.field(name="l")
    c: float = 0.0
    v: float = 0.0
    t: str = ""


_decode_peer = msgspec.json.Decoder(list[WireBar])


class Ours:
    """The daemon's path minus the outbox: protocol -> BarBatch -> Pipeline."""

    name = "ours (protocol+8 signals+score+rules)"

    def __init__(self, market: Market, daily: Market) -> None:
        table = sessions(FIRST_SESSION + 10)
        self.pipe = Pipeline(EngineConfig(), load_rules(), sessions=table)
        self.pipe.on_daily_bars(frame_to_batch(daily.frame()))
        self.proto = AlpacaProtocol("bench-key", "bench-secret", market.symbols, channels=("bars",))
        for frame in (*HANDSHAKE, subscription(market.symbols)):
            self.proto.receive_frame(frame, 0.0)
        self.proto.events_received()
        self.proto.data_to_send()
        self.bars = 0
        self.alerts = 0
        self.last_rsi: dict[str, float] = {}

    def __call__(self, frame: bytes, now_s: float) -> None:
        self.proto.receive_frame(frame, now_s)
        bars: list[Bar] = []
        for event in self.proto.events_received():
            if not isinstance(event, BarsReceived):
                raise AssertionError(f"unexpected event {event!r}")
            bars.extend(event.bars)
        step = self.pipe.on_minute_bars(BarBatch.from_bars(bars))
        self.bars += len(bars)
        self.alerts += len(step.alerts)
        self._last = step

    def rsi(self, symbol: str) -> float:
        ev = self._last.closed["1m"]
        return float(ev.columns["rsi14"][ev.symbol.index(symbol)])


class Talipp:
    """talipp indicators per symbol, updated by one value per bar."""

    name = "talipp (incremental, per symbol)"

    def __init__(self, market: Market) -> None:
        self._ohlcv = OHLCV
        self.ind: dict[str, tuple[object, ...]] = {
            s: (RSI(14), MACD(12, 26, 9), ATR(14), EMA(10), EMA(40), SMA(20))
            for s in market.symbols
        }
        self.bars = 0

    def __call__(self, frame: bytes, now_s: float) -> None:
        ohlcv = self._ohlcv
        for b in _decode_peer.decode(frame):
            rsi, macd, atr, ema_f, ema_s, vsma = self.ind[b.S]
            rsi.add(b.c)  # type: ignore[attr-defined]
            macd.add(b.c)  # type: ignore[attr-defined]
            atr.add(ohlcv(b.o, b.h, b.low, b.c, b.v))  # type: ignore[attr-defined]
            ema_f.add(b.c)  # type: ignore[attr-defined]
            ema_s.add(b.c)  # type: ignore[attr-defined]
            vsma.add(b.v)  # type: ignore[attr-defined]
            self.bars += 1

    def rsi(self, symbol: str) -> float:
        value = self.ind[symbol][0][-1]  # type: ignore[index]
        return float("nan") if value is None else float(value)


class Windows:
    """Per-symbol OHLCV windows of the last `WINDOW` bars, shifted left each bar."""

    def __init__(self, market: Market) -> None:
        n = len(market.symbols)
        self.row = {s: i for i, s in enumerate(market.symbols)}
        self.o, self.h, self.l, self.c, self.v = (np.zeros((n, WINDOW)) for _ in range(5))
        self.count = 0

    def push(self, frame: bytes) -> list[int]:
        bars = _decode_peer.decode(frame)
        rows = [self.row[b.S] for b in bars]
        for arr, vals in (
            (self.o, [b.o for b in bars]),
            (self.h, [b.h for b in bars]),
            (self.l, [b.low for b in bars]),
            (self.c, [b.c for b in bars]),
            (self.v, [b.v for b in bars]),
        ):
            arr[rows, :-1] = arr[rows, 1:]
            arr[rows, -1] = vals
        self.count = min(WINDOW, self.count + 1)
        return rows


class TalibRecompute:
    """TA-Lib over each touched symbol's whole window, every bar."""

    name = f"TA-Lib recompute ({WINDOW}-bar window)"

    def __init__(self, market: Market) -> None:
        self.w = Windows(market)
        self.bars = 0
        self.last: dict[int, float] = {}

    def __call__(self, frame: bytes, now_s: float) -> None:
        w = self.w
        rows = w.push(frame)
        k = w.count
        for r in rows:
            c, h, lo, v = w.c[r, -k:], w.h[r, -k:], w.l[r, -k:], w.v[r, -k:]
            rsi = talib.RSI(c, 14)
            talib.MACD(c, 12, 26, 9)
            talib.ATR(h, lo, c, 14)
            talib.EMA(c, 10)
            talib.EMA(c, 40)
            talib.SMA(v, 20)
            talib.MAX(h, 20)
            talib.MIN(lo, 20)
            self.last[r] = float(rsi[-1])
            self.bars += 1

    def rsi(self, symbol: str) -> float:
        return self.last[self.w.row[symbol]]


class PandasTa:
    """pandas-ta-classic over each window, every bar, on the first `PANDAS_SUBSET` symbols only."""

    name = f"pandas-ta-classic recompute (first {PANDAS_SUBSET} symbols, extrapolated)"

    def __init__(self, market: Market) -> None:
        self.pd, self.ta = pd, pta
        self.w = Windows(market)
        self.subset = market.symbols[:PANDAS_SUBSET]
        self.bars = 0
        self.last: dict[str, float] = {}

    def timed_bars(self, n_symbols: int) -> int:
        """Bars per minute this contender actually computes."""
        return min(n_symbols, PANDAS_SUBSET)

    def __call__(self, frame: bytes, now_s: float) -> None:
        w, pd, ta = self.w, self.pd, self.ta
        w.push(frame)
        k = w.count
        for s in self.subset:
            r = w.row[s]
            c = pd.Series(w.c[r, -k:])
            h = pd.Series(w.h[r, -k:])
            lo = pd.Series(w.l[r, -k:])
            v = pd.Series(w.v[r, -k:])
            rsi = ta.rsi(c, length=14)
            ta.macd(c, fast=12, slow=26, signal=9)
            ta.atr(h, lo, c, length=14)
            ta.ema(c, length=10)
            ta.ema(c, length=40)
            ta.sma(v, length=20)
            h.rolling(20).max()
            lo.rolling(20).min()
            self.last[s] = float("nan") if rsi is None else float(rsi.iloc[-1])
            self.bars += 1

    def rsi(self, symbol: str) -> float:
        return self.last.get(symbol, float("nan"))


Contender = Ours | Talipp | TalibRecompute | PandasTa


@dataclass
class CaseResult:
    n_symbols: int
    per_minute: dict[str, list[float]]  # contender name -> seconds per timed minute
    bars_per_minute: dict[str, int]  # symbol-bars each contender computes per minute
    checks: list[str]
    alerts: int


def run_case(
    n_symbols: int, warm_minutes: int, timed_minutes: int, with_pandas: bool, seed: int = 7
) -> CaseResult:
    table_ = sessions(FIRST_SESSION + 10)
    times = minute_times(table_, warm_minutes + timed_minutes, FIRST_SESSION)
    market = random_walk(times, n_symbols, seed)
    daily = random_walk(
        table_.label[FIRST_SESSION - 60 : FIRST_SESSION], n_symbols, seed + 1, 0.015
    )
    frames = alpaca_frames(market)
    ours = Ours(market, daily)
    contenders: list[Contender] = [ours, Talipp(market), TalibRecompute(market)]
    if with_pandas:
        contenders.append(PandasTa(market))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(warm_minutes):
            for c in contenders:
                c(frames[i], float(times[i] + 60))
        per_minute: dict[str, list[float]] = {c.name: [] for c in contenders}
        clock = time.perf_counter
        for i in range(warm_minutes, warm_minutes + timed_minutes):
            frame, now = frames[i], float(times[i] + 60)
            shift = i % len(contenders)
            for c in contenders[shift:] + contenders[:shift]:
                t0 = clock()
                c(frame, now)
                per_minute[c.name].append(clock() - t0)
    per_bars = {
        c.name: (c.timed_bars(n_symbols) if isinstance(c, PandasTa) else n_symbols)
        for c in contenders
    }
    return CaseResult(n_symbols, per_minute, per_bars, _checks(market, contenders), ours.alerts)


def _checks(market: Market, contenders: list[Contender]) -> list[str]:
    """Every contender saw every bar, and RSI(14) on the last bar agrees with TA-Lib."""
    n_min = len(market.time)
    want = talib.RSI(market.close[:, 0], 14)[-1]
    sym = market.symbols[0]
    out = []
    for c in contenders:
        expect = n_min * (
            min(len(market.symbols), PANDAS_SUBSET)
            if isinstance(c, PandasTa)
            else len(market.symbols)
        )
        if c.bars != expect:
            raise AssertionError(f"{c.name} processed {c.bars} bars, expected {expect}")
        diff = abs(c.rsi(sym) - want)
        out.append(
            f"{c.name}: {c.bars} bars, |RSI14({sym}) - TA-Lib full-history RSI| = {diff:.2e}"
        )
    ours = contenders[0]
    if not abs(ours.rsi(sym) - want) < 1e-9:
        raise AssertionError(f"our RSI {ours.rsi(sym)} differs from TA-Lib {want}")
    return out


TARGET_US = 1e-6
TARGET_BATCH = 2e-3
TARGET_RATIO = {"talipp": 10.0, "TA-Lib": 15.0}


def report(results: list[CaseResult], warm: int, timed: str, quick: bool) -> str:
    rows: list[list[str]] = []
    notes: list[str] = []
    for res in results:
        ours_name = next(iter(res.per_minute))
        ours_med = median(res.per_minute[ours_name]) / res.bars_per_minute[ours_name]
        for name, xs in res.per_minute.items():
            nb = res.bars_per_minute[name]
            per_bar = [x / nb for x in xs]
            med = median(per_bar)
            ratio = med / ours_med
            if name == ours_name:
                target = "≤ 1 µs/bar, ≤ 2 ms/batch" if res.n_symbols >= 2000 else "-"
                met = (
                    yes_no(med <= TARGET_US and median(xs) <= TARGET_BATCH)
                    if res.n_symbols >= 2000
                    else "-"
                )
            else:
                key = next((k for k in TARGET_RATIO if name.startswith(k)), None)
                target = f"ours ≥ {TARGET_RATIO[key]:.0f}x faster" if key else "-"
                met = yes_no(ratio >= TARGET_RATIO[key]) if key else "-"
            batch = median(xs) * res.n_symbols / nb
            rows.append(
                [
                    f"{res.n_symbols} sym: {name}",
                    fmt_time(med),
                    fmt_time(p99(per_bar)),
                    fmt_time(batch) + (" (extrap.)" if nb != res.n_symbols else ""),
                    "1.0x"
                    if name == ours_name
                    else f"{ratio:.1f}x slower"
                    if ratio >= 1
                    else f"{1 / ratio:.1f}x faster",
                    target,
                    met,
                ]
            )
        notes += [f"- {res.n_symbols} symbols: {line}" for line in res.checks]
        notes.append(f"- {res.n_symbols} symbols: ours emitted {res.alerts} alerts in the run")
    title = (
        f"1. Hot path per symbol-bar ({warm} warm-up minutes untimed, so the TA-Lib/pandas-ta"
        f" window holds {min(warm, WINDOW)} bars; {timed} timed minutes{', QUICK sizes' if quick else ''})"
    )
    header = [
        "case",
        "median / symbol-bar",
        "p99 / symbol-bar",
        "median / minute batch",
        "vs ours",
        "target",
        "met",
    ]
    return table(title, header, rows) + "\nSanity checks:\n" + "\n".join(notes) + "\n"


def main(quick: bool, log: Callable[[str], None]) -> str:
    if quick:
        cases = [(3, 60, 60, True), (100, 60, 30, True), (2000, 60, 8, False)]
    else:
        cases = [(3, 300, 300, True), (100, 300, 100, True), (2000, 300, 30, True)]
    results = []
    for n, warm, timed, pandas in cases:
        log(f"hotpath: {n} symbols, {warm} warm-up + {timed} timed minutes")
        results.append(run_case(n, warm, timed, pandas))
    timed_desc = "/".join(str(c[2]) for c in cases)
    return report(results, cases[0][1], f"{timed_desc} (per case)", quick)
