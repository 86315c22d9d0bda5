"""Worker processes for the benchmarks that need a clean peak RSS (backtest, memory).

    python -m bench.rss backtest --symbols 2000 --minutes 390
    python -m bench.rss memory --symbols 2000

Each prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace

import numpy as np
import psutil

from bench.common import minute_times, random_walk, sessions
from daemon import heap
from daemon.app import warm_up
from daemon.backtest import BacktestOptions, run_backtest
from daemon.bars import LoadedBars, frame_to_batch
from daemon.rules_file import load_rules
from daemon.warmup import Warmup
from signals.engine import EngineConfig
from signals.pipeline import Pipeline
from signals.sessions import DAY_S


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def backtest(n_symbols: int, n_minutes: int) -> dict[str, float]:
    """1-minute bars through `run_backtest` (default rules); frame built before timing."""
    table = sessions(n_minutes // 390 + 12)
    times = minute_times(table, n_minutes, 10)
    loaded = LoadedBars(random_walk(times, n_symbols, 11).frame(), {})
    before = _rss()
    t0 = time.perf_counter()
    result = run_backtest(
        loaded, EngineConfig(), load_rules(), BacktestOptions(timeframe="1m", progress=False)
    )
    seconds = time.perf_counter() - t0
    rows = result.main.height
    if rows != n_symbols * n_minutes:
        raise AssertionError(f"backtest returned {rows} rows for {n_symbols * n_minutes} bars")
    return {
        "symbol_bars": float(rows),
        "seconds": seconds,
        "rss_before": float(before),
        "peak_rss": float(_peak()),
        "alerts": float(len(result.alerts)),
    }


def memory(n_symbols: int, daily_bars: int, minutes: int) -> dict[str, object]:
    """A daemon-shaped pipeline (1m engine, daily engine, default rules) with full rings."""
    table = sessions(daily_bars + 20)
    base = _rss()
    pipe = Pipeline(EngineConfig(), load_rules(), sessions=table)
    daily = random_walk(table.label[:daily_bars], n_symbols, 5, 0.015).frame()
    t0 = time.perf_counter()
    warm_up(pipe, Warmup(daily=daily))
    warm_s = time.perf_counter() - t0
    assert pipe.minute is not None
    mins = random_walk(minute_times(table, minutes, daily_bars + 1), n_symbols, 6).frame()
    batch = frame_to_batch(mins)
    loc = table.locate(batch.time)
    # Past sessions' minutes fill the 1-minute rings, as the daemon's warm-up does.
    pipe.minute.on_bars(replace(batch, session=loc.label // DAY_S, minute=loc.minute))
    del daily, mins, batch, loc
    heap.release()  # what the daemon's warm_up does after the same burst
    full = pipe.minute.rings.count(0) == pipe.config.ring_capacity
    daily_full = pipe.daily.rings.count(0) == min(daily_bars, pipe.config.ring_capacity)
    if not (full and daily_full):
        raise AssertionError("rings are not full")
    rss = _rss()
    state = 0
    biggest: list[tuple[int, str]] = []
    for name, engine in (("1m", pipe.minute), ("1d", pipe.daily)):
        _, arrays = engine.snapshot()
        for key, arr in arrays.items():
            state += arr.nbytes
            biggest.append((arr.nbytes, f"{name}:{key}"))
    biggest.sort(reverse=True)
    top = ", ".join(f"{k} {b / 2**20:.0f} MiB" for b, k in biggest[:4])
    return {
        "warmup_s": warm_s,
        "rss": float(rss),
        "rss_base": float(base),
        "rss_delta": float(rss - base),
        "peak_rss": float(_peak()),
        "state_bytes": float(state),
        "top": top,
        "ring_check": float(np.isfinite(pipe.minute.rings.column(0, "close", 300)).all()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["backtest", "memory"])
    ap.add_argument("--symbols", type=int, default=2000)
    ap.add_argument("--minutes", type=int, default=390)
    ap.add_argument("--daily", type=int, default=300)
    args = ap.parse_args()
    out: dict[str, object]
    if args.what == "backtest":
        out = dict(backtest(args.symbols, args.minutes))
    else:
        out = memory(args.symbols, args.daily, args.minutes)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
