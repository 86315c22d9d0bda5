"""Validate the backtest's indicators against TA-Lib on real daily bars.

Runs IWM, SPY and QQQ daily bars through the same engine `iwm-alerts backtest`
uses, then recomputes every TA-Lib-backed column with TA-Lib on whole arrays
and prints the largest absolute difference per column (and any disagreement
about where values start). Data is read from the shared folder, never copied.

    .venv/bin/python bench/validate_talib.py --data ../shared/data/market/daily
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import talib

from daemon.backtest import BacktestOptions, run_backtest
from daemon.bars import load_bars
from signals.engine import EngineConfig

Oracle = Callable[[dict[str, np.ndarray]], np.ndarray]


def _shift(x: np.ndarray, k: int = 1) -> np.ndarray:
    return np.concatenate([np.full(k, np.nan), x[:-k]])


ORACLES: dict[str, Oracle] = {
    "rsi14": lambda a: talib.RSI(a["close"], 14),
    "macd": lambda a: talib.MACD(a["close"], 12, 26, 9)[0],
    "macd_signal": lambda a: talib.MACD(a["close"], 12, 26, 9)[1],
    "macd_hist": lambda a: talib.MACD(a["close"], 12, 26, 9)[2],
    "atr14": lambda a: talib.ATR(a["high"], a["low"], a["close"], 14),
    "donchian_high20": lambda a: _shift(talib.MAX(a["high"], 20)),
    "donchian_low20": lambda a: _shift(talib.MIN(a["low"], 20)),
    "swing_high": lambda a: _shift(talib.MAX(a["high"], 60)),
    "swing_low": lambda a: _shift(talib.MIN(a["low"], 60)),
    "volume_ratio": lambda a: a["volume"] / _shift(talib.SMA(a["volume"], 20)),
    "ret20": lambda a: talib.ROCR(a["close"], 20) - 1.0,
    "rs_roc20": lambda a: talib.ROCR(a["close"] / a["bench_close"], 20) - 1.0,
    "breadth20": lambda a: (
        (talib.ROCR(a["close"], 20) - 1.0) - (talib.ROCR(a["comp_close"], 20) - 1.0)
    ),
}


def validate(data: Path, symbols: list[str]) -> pl.DataFrame:
    """Per symbol and column: rows compared, max |engine - TA-Lib|, NaN-pattern mismatches."""
    bars = load_bars([data / f"{s}.csv" for s in symbols])
    ind = run_backtest(bars, EngineConfig(), options=BacktestOptions(progress=False)).main
    closes = ind.select("symbol", "time", "close")
    rows = []
    for sym in symbols:
        df = ind.filter(pl.col("symbol") == sym).sort("time")
        # Cross-symbol oracles run on the dates both symbols have (as the engine's join does).
        df = df.join(
            closes.filter(pl.col("symbol") == "SPY").select(
                "time", pl.col("close").alias("bench_close")
            ),
            on="time",
            how="left",
        ).join(
            closes.filter(pl.col("symbol") == "QQQ").select(
                "time", pl.col("close").alias("comp_close")
            ),
            on="time",
            how="left",
        )
        a = {
            c: df[c].cast(pl.Float64).fill_null(np.nan).to_numpy()
            for c in df.columns
            if c not in ("symbol", "time")
        }
        for col, oracle in ORACLES.items():
            if (col == "rs_roc20" and sym == "SPY") or (col == "breadth20" and sym == "QQQ"):
                continue  # a symbol is never its own benchmark or comparator
            ref = oracle(a)
            got = a[col]
            both = ~np.isnan(ref) & ~np.isnan(got)
            mismatch = int(np.sum(np.isnan(ref) != np.isnan(got)))
            diff = float(np.max(np.abs(got[both] - ref[both]))) if both.any() else float("nan")
            rows.append({"symbol": sym, "column": col, "compared": int(both.sum()),
                         "nan_mismatch": mismatch, "max_abs_diff": diff})  # fmt: skip
    return pl.DataFrame(rows)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared/data/market/daily",
    )
    p.add_argument("--symbols", nargs="+", default=["IWM", "SPY", "QQQ"])
    args = p.parse_args()
    report = validate(args.data, args.symbols)
    with pl.Config(tbl_rows=200, float_precision=3, fmt_float="full"):
        print(report)
    worst = report.group_by("column", maintain_order=True).agg(
        pl.col("max_abs_diff").max(), pl.col("nan_mismatch").sum(), pl.col("compared").sum()
    )
    with pl.Config(tbl_rows=50):
        print("largest difference per column over all symbols:")
        print(worst)
    overall = float(report["max_abs_diff"].max())  # type: ignore[arg-type]
    print(
        f"overall max |engine - TA-Lib| = {overall:.3e}; NaN mismatches = {int(report['nan_mismatch'].sum())}"
    )
    return 0 if overall <= 1e-9 and int(report["nan_mismatch"].sum()) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
