"""What a backtest's alerts were worth, per rule: the numbers of `summary.json` and the report.

Definitions (the report prints them too):

- a rule's data span is the number of distinct trading days with bars of the
  symbols it fired on (on its timeframe) divided by 252, so its alerts per
  year are its count over the whole data, not over the years it happened to
  fire in;
- the forward return over k bars is close k bars later / close - 1, on the
  rule's timeframe and symbol; an alert within k bars of the end has none
  (`n` counts those that have one);
- hit rate is the share of those returns above zero;
- the baseline is the same over every bar of the symbols the rule fired on,
  the figure a rule has to beat (or, for a rule that expects a fall, undercut).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl

from daemon.backtest import BacktestResult

FORWARD_BARS = (5, 20)
TRADING_DAYS_PER_YEAR = 252
FEW = 10  # fewer forward returns than this: flagged, the mean says little


@dataclass(frozen=True)
class ReturnStats:
    """Forward returns that exist: how many, the share above zero, mean and median."""

    n: int
    hit_rate: float | None
    mean: float | None
    median: float | None


@dataclass(frozen=True)
class RuleStats:
    """One rule on one timeframe. `forward` and `baseline` are keyed by bars ahead ("5", "20")."""

    rule: str
    timeframe: str
    symbols: list[str]
    count: int
    years: float  # the data span its rate is over
    per_year: float | None
    forward: dict[str, ReturnStats]
    baseline: dict[str, ReturnStats]
    by_year: dict[str, int]


@dataclass(frozen=True)
class Summary:
    """What `summary.json` carries (and the report and the terminal show)."""

    timeframe: str
    first: str | None
    last: str | None
    trading_days: int
    years: float
    symbols: list[str]
    alerts: int
    forward_bars: list[int]
    few: int
    rules: list[RuleStats]
    rejected: dict[str, int]


def returns_stats(values: Sequence[float | None]) -> ReturnStats:
    """n, hit rate, mean and median of the forward returns that exist."""
    xs = sorted(v for v in values if v is not None and math.isfinite(v))
    n = len(xs)
    if n == 0:
        return ReturnStats(0, None, None, None)
    mid = n // 2
    median = xs[mid] if n % 2 else (xs[mid - 1] + xs[mid]) / 2
    return ReturnStats(n, sum(1 for v in xs if v > 0) / n, math.fsum(xs) / n, median)


def _date(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).date().isoformat()


def _forward(df: pl.DataFrame) -> pl.DataFrame:
    return (
        df.sort("symbol", "time")
        .with_columns(
            *(
                (pl.col("close").shift(-k).over("symbol") / pl.col("close") - 1.0).alias(f"fwd{k}")
                for k in FORWARD_BARS
            )
        )
        .select("symbol", "time", *(f"fwd{k}" for k in FORWARD_BARS))
    )


def summary(result: BacktestResult) -> Summary:
    """The data span and, per rule, its count, alerts per year over the data span,
    forward-return statistics against the baseline, and its count in each calendar
    year of the data (zeros included)."""
    times = result.main["time"].to_numpy()
    days = len(np.unique(times // 86_400))
    years = days / TRADING_DAYS_PER_YEAR
    first = _date(int(times.min())) if len(times) else None
    last = _date(int(times.max())) if len(times) else None
    years_of_data = range(int(first[:4]), int(last[:4]) + 1) if first and last else range(0)
    forward = {name: _forward(df) for name, df in result.indicators.items()}
    alerts = pl.DataFrame(
        {
            "rule": [a.rule for a in result.alerts],
            "symbol": [a.symbol for a in result.alerts],
            "timeframe": [a.timeframe for a in result.alerts],
            "time": [a.bar_time for a in result.alerts],
        },
        schema={"rule": pl.Utf8, "symbol": pl.Utf8, "timeframe": pl.Utf8, "time": pl.Int64},
    )
    rules = []
    for (rule, tf), g in alerts.group_by("rule", "timeframe", maintain_order=True):
        symbols = sorted(g["symbol"].unique().to_list())
        table = forward.get(str(tf))
        fwd: dict[str, ReturnStats] = {}
        base: dict[str, ReturnStats] = {}
        rule_years = years
        if table is not None:
            hits = g.join(table, on=["symbol", "time"], how="left")
            everything = table.filter(pl.col("symbol").is_in(symbols))
            rule_days = (everything["time"] // 86_400).n_unique()
            rule_years = rule_days / TRADING_DAYS_PER_YEAR
            for k in FORWARD_BARS:
                fwd[str(k)] = returns_stats(hits[f"fwd{k}"].to_list())
                base[str(k)] = returns_stats(everything[f"fwd{k}"].to_list())
        by_year = dict.fromkeys(years_of_data, 0)
        for t in g["time"].to_list():
            year = datetime.fromtimestamp(t, UTC).year
            by_year[year] = by_year.get(year, 0) + 1
        rules.append(
            RuleStats(
                rule=str(rule),
                timeframe=str(tf),
                symbols=symbols,
                count=g.height,
                years=rule_years,
                per_year=g.height / rule_years if rule_years > 0 else None,
                forward=fwd,
                baseline=base,
                by_year={str(y): c for y, c in sorted(by_year.items())},
            )
        )
    return Summary(
        timeframe=result.timeframe,
        first=first,
        last=last,
        trading_days=days,
        years=years,
        symbols=sorted(result.main["symbol"].unique().to_list()),
        alerts=len(result.alerts),
        forward_bars=list(FORWARD_BARS),
        few=FEW,
        rules=rules,
        rejected=dict(sorted(result.rejected.items())),
    )
