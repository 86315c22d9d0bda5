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


@dataclass(frozen=True, kw_only=True)
class BacktestOptions:
    """The input's `timeframe`, the `rates` series (None: none), whether to show a
    progress bar (None: on a terminal only), and, with 1-minute input, the daily bars
    (`daily_history`) that warm the daily timeframe up first."""

    rates: RatesSeries | None = None
    timeframe: str = "1d"
    progress: bool | None = None
    daily_history: LoadedBars | None = None


def run_backtest(
    bars: LoadedBars,
    config: EngineConfig,
    rules: Sequence[RuleSpec] = (),
    options: BacktestOptions = BacktestOptions(),
) -> BacktestResult:
    """Feed `bars` through a `Pipeline` in time order and collect evaluations and alerts.

    With 1-minute input, `options.daily_history` warms the daily timeframe up first,
    as the daemon does at start-up: only days before the first minute are used, and
    what they would have alerted is not part of the result.
    """
    rates, timeframe = options.rates, options.timeframe
    progress, daily_history = options.progress, options.daily_history
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
