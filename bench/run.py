"""The benchmark suite: `python -m bench.run [--quick] [--only NAME...]`.

Names: hotpath, backtest, latency, memory, chart. Prints one markdown table per benchmark
(medians over repeated runs; ratios measured in the same process) plus the
machine. `--quick` uses scaled-down sizes (said so in each title) and takes
about a minute; the full run takes several minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from bench import chart, hotpath, latency
from bench.common import fmt_time, median, table, yes_no

NAMES = ("hotpath", "backtest", "latency", "memory", "chart")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _worker(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.rss", *args], check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return (
        f"Machine: {os.cpu_count()} CPUs (nproc), {cpu}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}\n"
    )


def bench_hotpath(quick: bool) -> str:
    return hotpath.main(quick, _log)


def bench_backtest(quick: bool) -> str:
    n_symbols = 2000
    minutes, repeats = (30, 3) if quick else (390, 3)
    full = 2000 * 20 * 390
    runs = []
    for i in range(repeats):
        _log(f"backtest: {n_symbols} symbols x {minutes} minutes, run {i + 1}/{repeats}")
        runs.append(_worker("backtest", "--symbols", str(n_symbols), "--minutes", str(minutes)))
    rates = [r["symbol_bars"] / r["seconds"] for r in runs]
    rate = median(rates)
    peak = median([r["peak_rss"] for r in runs])
    rows = [
        [
            f"run_backtest 1m, {n_symbols} sym x {minutes} min ({int(runs[0]['symbol_bars'])} symbol-bars)",
            f"{rate / 1e6:.3f} M symbol-bars/s",
            f"{min(rates) / 1e6:.3f} (worst of {repeats})",
            "≥ 3 M symbol-bars/s",
            yes_no(rate >= 3e6),
        ],
        [
            "peak RSS of that process",
            f"{peak / 2**20:.0f} MiB",
            "-",
            "-",
            "-",
        ],
        [
            f"full size {full / 1e6:.1f} M symbol-bars (2000 x 20 sessions), extrapolated",
            f"{fmt_time(full / rate)}",
            "-",
            f"≤ {fmt_time(full / 3e6)}",
            yes_no(rate >= 3e6),
        ],
    ]
    title = (
        f"2. Backtest throughput (a fraction: {minutes} minutes of the 20 x 390; "
        f"median of {repeats} fresh processes{', QUICK' if quick else ''})"
    )
    note = (
        "\nThe full size was not run: at the measured rate it takes the extrapolated time above, "
        "and run_backtest keeps every indicator column of every symbol-bar (~60 float columns), "
        f"about {full * 62 * 8 / 2**30:.0f} GiB at 15.6 M symbol-bars.\n"
    )
    return table(title, ["case", "median", "worst", "target", "met"], rows) + note


def bench_latency(quick: bool) -> str:
    return latency.main(quick, _log)


def bench_memory(quick: bool) -> str:
    repeats = 2 if quick else 3
    runs = []
    for i in range(repeats):
        _log(f"memory: 2000 symbols, 300 daily bars, 300 minutes, run {i + 1}/{repeats}")
        runs.append(_worker("memory", "--symbols", "2000", "--daily", "300", "--minutes", "300"))
    rss = median([r["rss"] for r in runs])
    delta = median([r["rss_delta"] for r in runs])
    state = median([r["state_bytes"] for r in runs])
    warm = [r["warmup_s"] for r in runs]
    rows = [
        [
            "process RSS, pipeline of 2000 symbols, full 1m and 1d rings",
            f"{rss / 2**20:.0f} MiB",
            "≤ 150 MB",
            yes_no(rss <= 150e6),
        ],
        [
            "  of which added by the pipeline (RSS after - before)",
            f"{delta / 2**20:.0f} MiB",
            "-",
            "-",
        ],
        ["  engine state arrays (snapshot nbytes, 1m + 1d)", f"{state / 2**20:.0f} MiB", "-", "-"],
        ["  largest arrays", runs[0]["top"], "-", "-"],
        [
            "peak RSS during warm-up and fill",
            f"{median([r['peak_rss'] for r in runs]) / 2**20:.0f} MiB",
            "-",
            "-",
        ],
        [
            "warm-up: 2000 sym x 300 daily bars (warm_up)",
            fmt_time(median(warm)),
            "≤ 2 s",
            yes_no(median(warm) <= 2.0),
        ],
    ]
    title = f"4. Memory and warm-up (median of {repeats} fresh processes)"
    return table(title, ["case", "median", "target", "met"], rows)


def bench_chart(quick: bool) -> str:
    return chart.main(quick, _log)


BENCHES: dict[str, Callable[[bool], str]] = {
    "hotpath": bench_hotpath,
    "backtest": bench_backtest,
    "latency": bench_latency,
    "memory": bench_memory,
    "chart": bench_chart,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="scaled-down sizes, about a minute")
    ap.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME", help=", ".join(NAMES))
    args = ap.parse_args(argv)
    print(f"## iwm-alerts benchmarks{' (--quick)' if args.quick else ''}\n")
    print(machine())
    for name in args.only or NAMES:
        print(BENCHES[name](args.quick), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
