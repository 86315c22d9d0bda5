"""`iwm-alerts backtest`: bar files through the same pipeline the daemon runs.

Daily files go bar time by bar time through the daily engine and rules;
1-minute files go minute by minute through the 1-minute engine, the
regular-session aggregation (XNYS calendar) and every rule, exactly as live.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import numpy as np
import polars as pl
from tqdm import tqdm

from daemon.bars import LoadedBars, frame_to_batch
from daemon.calendar import xnys_sessions
from signals.alerts import Alert
from signals.engine import COLUMNS, EngineConfig, Evaluation
from signals.pipeline import Pipeline
from signals.rates import RatesSeries
from signals.rules.spec import RuleSpec

# Daily bar times per pipeline call: large enough to amortise the call, small
# enough for a progress bar that moves. Minute input goes one minute per call,
# as live.
CHUNK_TIMES = 256
FORWARD_BARS = (5, 20)


@dataclass(frozen=True)
class BacktestResult:
    """Indicators per timeframe (one row per symbol-bar), the alerts, and what was rejected."""

    indicators: dict[str, pl.DataFrame]
    alerts: list[Alert]
    rejected: dict[str, int]
    timeframe: str

    @property
    def main(self) -> pl.DataFrame:
        """The indicators of the input timeframe."""
        return self.indicators[self.timeframe]


def _empty() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"symbol": pl.Utf8, "time": pl.Int64, **dict.fromkeys(COLUMNS, pl.Float64)}
    )


def run_backtest(
    bars: LoadedBars,
    config: EngineConfig,
    rules: Sequence[RuleSpec] = (),
    rates: RatesSeries | None = None,
    timeframe: str = "1d",
    progress: bool | None = None,
    daily_history: LoadedBars | None = None,
) -> BacktestResult:
    """Feed `bars` through a `Pipeline` in time order and collect evaluations and alerts.

    With 1-minute input, `daily_history` (daily bars) warms the daily timeframe
    up first, as the daemon does at start-up: only days before the first minute
    are used, and what they would have alerted is not part of the result.
    """
    df = bars.frame
    times = df["time"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, times[1:] != times[:-1], True])
    if timeframe == "1d":
        pipe = Pipeline(config, rules, rates=rates)
        step_times = CHUNK_TIMES
    else:
        first = datetime.fromtimestamp(int(times.min()) if len(times) else 0, UTC).date()
        last = datetime.fromtimestamp(int(times.max()) if len(times) else 0, UTC).date()
        sessions = xnys_sessions(first - timedelta(days=7), last + timedelta(days=7))
        pipe = Pipeline(config, rules, sessions=sessions, rates=rates)
        step_times = 1
        if daily_history is not None and len(times):
            first_day = int(times.min()) // 86_400 * 86_400
            warm = daily_history.frame.filter(pl.col("time") < first_day)
            pipe.on_daily_bars(frame_to_batch(warm))
    last_bound = len(bounds) - 1
    chunks = [
        (int(bounds[i]), int(bounds[min(i + step_times, last_bound)]))
        for i in range(0, last_bound, step_times)
    ]
    parts: dict[str, list[Evaluation]] = {}
    alerts: list[Alert] = []
    outside = 0

    def keep(closed: dict[str, Evaluation]) -> None:
        for name, ev in closed.items():
            if len(ev):
                parts.setdefault(name, []).append(ev)

    # disable=None lets tqdm show the bar only on a terminal.
    disable = None if progress is None else not progress
    with tqdm(total=df.height, unit="bar", disable=disable, leave=False) as bar:
        for a, b in chunks:
            batch = frame_to_batch(df.slice(a, b - a))
            step = pipe.on_daily_bars(batch) if timeframe == "1d" else pipe.on_minute_bars(batch)
            keep(step.closed)
            alerts += step.alerts
            outside += step.outside_hours
            bar.update(b - a)
    if timeframe != "1d" and len(times):
        step = pipe.flush(int(times.max()) + 10 * 86_400)
        keep(step.closed)
        alerts += step.alerts
    indicators = {name: _frame(p) for name, p in parts.items()}
    indicators.setdefault(timeframe, _empty())
    rejected = dict(bars.dropped)
    if outside:
        rejected["outside_regular_hours"] = outside
    for name in indicators:
        for k, v in pipe.engine(name).rejected_total.items():
            rejected[k] = rejected.get(k, 0) + v
    return BacktestResult(indicators, alerts, rejected, timeframe)


def _frame(evs: list[Evaluation]) -> pl.DataFrame:
    """One DataFrame from many evaluations, built once (not a frame per step)."""
    data: dict[str, object] = {
        "symbol": [s for ev in evs for s in ev.symbol],
        "time": np.concatenate([ev.time for ev in evs]),
    }
    for c in COLUMNS:
        data[c] = np.concatenate([ev.columns[c] for ev in evs])
    return pl.DataFrame(data).fill_nan(None)


def format_times(df: pl.DataFrame, timeframe: str) -> pl.DataFrame:
    """Epoch seconds -> `YYYY-MM-DD` for daily bars, ISO time in New York for intraday."""
    t = pl.from_epoch(pl.col("time"), time_unit="s")
    if timeframe == "1d":
        return df.with_columns(t.dt.date().cast(pl.Utf8).alias("time"))
    return df.with_columns(
        t.dt.replace_time_zone("UTC")
        .dt.convert_time_zone("America/New_York")
        .dt.strftime("%Y-%m-%dT%H:%M:%S%:z")
        .alias("time")
    )


def write_outputs(result: BacktestResult, out_dir: Path) -> list[Path]:
    """`indicators.csv` (input timeframe), `indicators_<tf>.csv` for the others, `alerts.jsonl`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in result.indicators.items():
        path = out_dir / (
            "indicators.csv" if name == result.timeframe else f"indicators_{name}.csv"
        )
        format_times(df, name).write_csv(path)
        written.append(path)
    path = out_dir / "alerts.jsonl"
    with path.open("wb") as fh:
        for alert in result.alerts:
            fh.write(msgspec.json.encode(alert_record(alert)) + b"\n")
    written.append(path)
    return written


def alert_record(alert: Alert) -> dict[str, object]:
    """The alerts.jsonl object: id, rule, symbol, timeframe, time, severity, values, score, breakdown."""
    when = datetime.fromtimestamp(alert.bar_time, UTC)
    time = when.date().isoformat() if alert.timeframe == "1d" else when.isoformat()
    return {
        "id": alert.id,
        "rule": alert.rule,
        "symbol": alert.symbol,
        "timeframe": alert.timeframe,
        "time": time,
        "severity": alert.severity,
        "title": alert.title,
        "values": alert.values,
        "score": alert.score,
        "label": alert.label,
        "breakdown": alert.breakdown,
    }


def forward_returns(result: BacktestResult) -> pl.DataFrame:
    """Per rule: alert count and mean forward return over 5 and 20 bars, against all bars.

    Forward return k = close k bars later / close - 1, on the rule's timeframe
    and symbol; "all bars" is the same mean over every bar of the symbols the
    rule fired on, the baseline the rule has to beat.
    """
    if not result.alerts:
        return pl.DataFrame()
    fwd: dict[str, pl.DataFrame] = {}
    for name, df in result.indicators.items():
        fwd[name] = (
            df.sort("symbol", "time")
            .with_columns(
                *(
                    (pl.col("close").shift(-k).over("symbol") / pl.col("close") - 1.0).alias(
                        f"fwd{k}"
                    )
                    for k in FORWARD_BARS
                )
            )
            .select("symbol", "time", *(f"fwd{k}" for k in FORWARD_BARS))
        )
    rows = pl.DataFrame(
        {
            "rule": [a.rule for a in result.alerts],
            "symbol": [a.symbol for a in result.alerts],
            "timeframe": [a.timeframe for a in result.alerts],
            "time": [a.bar_time for a in result.alerts],
        }
    )
    out = []
    for (rule, tf), g in rows.group_by("rule", "timeframe", maintain_order=True):
        table = fwd.get(str(tf))
        if table is None:
            continue
        hits = g.join(table, on=["symbol", "time"], how="left")
        base = table.filter(pl.col("symbol").is_in(g["symbol"].unique().to_list()))
        out.append(
            {
                "rule": rule,
                "timeframe": tf,
                "alerts": g.height,
                **{f"fwd{k}_after": hits[f"fwd{k}"].mean() for k in FORWARD_BARS},
                **{f"fwd{k}_all": base[f"fwd{k}"].mean() for k in FORWARD_BARS},
            }
        )
    return pl.DataFrame(out)


def alerts_per_year(result: BacktestResult) -> pl.DataFrame:
    """Alert counts by rule and calendar year (UTC date of the bar)."""
    if not result.alerts:
        return pl.DataFrame()
    df = pl.DataFrame(
        {"rule": [a.rule for a in result.alerts], "time": [a.bar_time for a in result.alerts]}
    ).with_columns(pl.from_epoch("time", time_unit="s").dt.year().alias("year"))
    return df.group_by("rule", "year").len().sort("rule", "year")


def summary_lines(result: BacktestResult) -> list[str]:
    """A human summary: bars, last score per symbol, alerts per rule per year, forward returns."""
    df = result.main
    if df.height == 0:
        return ["no bars processed"]
    last = df.group_by("symbol", maintain_order=True).agg(
        pl.len().alias("bars"),
        pl.col("score").last().alias("score"),
        pl.col("rsi14").last().alias("rsi14"),
    )
    lines = [f"{df.height} symbol-bars, {last.height} symbols ({result.timeframe})"]
    for row in last.iter_rows(named=True):
        score = "warming up" if row["score"] is None else f"{row['score']:.1f}"
        rsi = "-" if row["rsi14"] is None else f"{row['rsi14']:.1f}"
        lines.append(
            f"  {row['symbol']:<6} {row['bars']:>7} bars  last score {score:>10}  RSI {rsi}"
        )
    lines.append(f"{len(result.alerts)} alerts")
    per_year = alerts_per_year(result)
    if per_year.height:
        lines.append("alerts per rule per year:")
        for (rule,), g in per_year.group_by("rule", maintain_order=True):
            years = g["year"].to_list()
            counts = g["len"].to_list()
            span = max(years) - min(years) + 1
            detail = " ".join(f"{y}:{c}" for y, c in zip(years, counts, strict=True))
            lines.append(
                f"  {rule:<18} {sum(counts):>5} total, {sum(counts) / span:5.1f}/yr  {detail}"
            )
    fwd = forward_returns(result)
    if fwd.height:
        lines.append("mean forward return after each rule vs all bars (rule's timeframe):")
        lines.append(
            f"  {'rule':<18} {'tf':>3} {'n':>5} {'5 bars':>9} {'all':>9} {'20 bars':>9} {'all':>9}"
        )
        for r in fwd.iter_rows(named=True):
            lines.append(
                f"  {r['rule']:<18} {r['timeframe']:>3} {r['alerts']:>5} "
                f"{_pct(r['fwd5_after'])} {_pct(r['fwd5_all'])} {_pct(r['fwd20_after'])} {_pct(r['fwd20_all'])}"
            )
    if result.rejected:
        lines.append(
            "rejected: " + ", ".join(f"{k}={v}" for k, v in sorted(result.rejected.items()))
        )
    return lines


def _pct(x: float | None) -> str:
    return f"{'-':>9}" if x is None else f"{100 * x:+8.2f}%"
