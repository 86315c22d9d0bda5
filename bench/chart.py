"""Benchmark 5: drawing pictures. `python -m bench.chart [--quick]`, or `bench.run --only chart`.

A fresh process (so the first call pays matplotlib's import, as the daemon's
first /chart does) makes the /chart reply (`render_chart`: the picture, the
caption, handing freed heap back) for 120 daily bars with 13 levels and 10
alerts, then makes it again `repeats` times; and the report's history
picture of 6,300 daily bars (IWM since 2000) with 500 alerts. Medians of the
repeated draws, each from data built before timing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import polars as pl

from bench.common import fmt_time, median, random_walk, table, yes_no
from signals.alerts import Alert

DAY = 86_400
START = 946_684_800  # 2000-01-01
LEVELS = ("donchian_high20", "donchian_low20", "swing_high", "swing_low", "fib_236", "fib_382",
          "fib_500", "fib_618", "fib_786", "fib_1272", "fib_1618", "prior_day_high",
          "prior_day_low")  # fmt: skip
RULES = ("volume_breakout", "rsi_entry_zone", "score_cross_up", "rs_flip_down")


def _bars(n: int, seed: int) -> pl.DataFrame:
    times = START + DAY * np.arange(n, dtype=np.int64)
    m = random_walk(times, 1, seed, sigma=0.012)
    score = 50.0 + 25.0 * np.sin(np.arange(n) / 17.0)
    return pl.DataFrame({"time": times, "open": m.open[:, 0], "high": m.high[:, 0],
                         "low": m.low[:, 0], "close": m.close[:, 0], "volume": m.volume[:, 0],
                         "score": score})  # fmt: skip


def _alerts(times: list[int], n: int, seed: int) -> list[tuple[int, str]]:
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(times), size=min(n, len(times)), replace=False)
    return [(times[int(i)], RULES[k % len(RULES)]) for k, i in enumerate(picks)]


def _timed(draw: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        draw()
        out.append(time.perf_counter() - t0)
    return out


def measure(repeats: int) -> dict[str, object]:
    """In this process: import + first /chart, then repeated /chart and history draws."""
    from daemon.plot import render_history  # noqa: PLC0415 - timed below
    from daemon.telegram.chart import render_chart  # noqa: PLC0415 - timed below

    bars = _bars(120, 3)
    close = bars["close"].to_numpy()
    levels = {name: float(close[-1] * (0.85 + 0.025 * i)) for i, name in enumerate(LEVELS)}
    alerts = [
        Alert(id=f"a{i}", rule=rule, symbol="IWM", timeframe="1d", bar_time=t, time=t + DAY,
              title=rule)
        for i, (t, rule) in enumerate(_alerts(bars["time"].to_list(), 10, 4))
    ]  # fmt: skip
    history = _bars(6_300, 5)
    history_marks = _alerts(history["time"].to_list(), 500, 6)

    def chart() -> object:
        return render_chart("IWM", bars, levels, alerts)

    def report() -> object:
        return render_history("IWM · 1d", history, history_marks)

    t0 = time.perf_counter()
    first_chart = render_chart("IWM", bars, levels, alerts)
    first = time.perf_counter() - t0
    png = b"" if first_chart is None else first_chart.png
    return {
        "first_s": first,
        "chart_s": _timed(chart, repeats),
        "history_s": _timed(report, max(3, repeats // 4)),
        "png_bytes": len(png),
    }


def main(quick: bool, log: Callable[[str], None]) -> str:
    repeats = 8 if quick else 30
    log(f"chart: a fresh process, {repeats} draws")
    out = subprocess.run([sys.executable, "-m", "bench.chart", "--worker", str(repeats)],
                         check=True, capture_output=True, text=True)  # fmt: skip
    r = json.loads(out.stdout.strip().splitlines()[-1])
    chart, history = median(r["chart_s"]), median(r["history_s"])
    rows = [
        ["/chart (120 daily bars, 13 levels, 10 alerts), median", fmt_time(chart),
         f"{fmt_time(max(r['chart_s']))} (worst of {len(r['chart_s'])})", "< 1 s",
         yes_no(chart < 1.0)],
        ["  the first one in a process (imports matplotlib)", fmt_time(r["first_s"]), "-",
         "< 2 s", yes_no(r["first_s"] < 2.0)],
        ["report history (6,300 daily bars, 500 alerts), median", fmt_time(history),
         f"{fmt_time(max(r['history_s']))} (worst of {len(r['history_s'])})", "-", "-"],
        ["/chart PNG size", f"{r['png_bytes'] / 1024:.0f} KiB", "-", "< 10 MiB (Telegram photo)",
         yes_no(r["png_bytes"] < 10 * 2**20)],
    ]  # fmt: skip
    title = f"5. Charts (matplotlib, Agg; one fresh process{', QUICK' if quick else ''})"
    return table(title, ["case", "median", "worst", "target", "met"], rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.chart", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--worker", type=int, metavar="N", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker)))
    else:
        print(main(args.quick, lambda msg: print(f"[bench] {msg}", file=sys.stderr)))
