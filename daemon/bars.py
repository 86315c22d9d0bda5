"""Bar files: CSV or parquet with `date` or `timestamp`, OHLCV, and a symbol column or file stem."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from signals.bar import BarBatch

PRICE_COLUMNS = ("open", "high", "low", "close", "volume")


class BarFileError(ValueError):
    """A bar file cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class LoadedBars:
    """Validated bars, sorted by time then symbol, and what was dropped and why."""

    frame: pl.DataFrame  # symbol, time (epoch s, bar start UTC), open, high, low, close, volume
    dropped: dict[str, int]

    def batch(self) -> BarBatch:
        """The whole frame as one `BarBatch`."""
        return frame_to_batch(self.frame)


def frame_to_batch(df: pl.DataFrame) -> BarBatch:
    """A `BarBatch` from a frame with symbol, time and OHLCV columns."""
    return BarBatch(
        symbol=df["symbol"].to_list(),
        time=df["time"].to_numpy().astype(np.int64),
        open=df["open"].to_numpy().astype(np.float64),
        high=df["high"].to_numpy().astype(np.float64),
        low=df["low"].to_numpy().astype(np.float64),
        close=df["close"].to_numpy().astype(np.float64),
        volume=df["volume"].to_numpy().astype(np.float64),
    )


def read_bar_file(path: Path) -> pl.DataFrame:
    """One file as (symbol, time, open, high, low, close, volume); `time` in epoch seconds UTC."""
    try:
        raw = (
            pl.read_parquet(path)
            if path.suffix.lower() == ".parquet"
            else pl.read_csv(path, infer_schema_length=10000)
        )
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise BarFileError(f"{path}: cannot read bars: {exc}") from exc
    cols = {c.lower(): c for c in raw.columns}
    missing = [c for c in PRICE_COLUMNS if c not in cols]
    time_col = cols.get("timestamp") or cols.get("date")
    if missing or time_col is None:
        need = missing + ([] if time_col else ["date or timestamp"])
        raise BarFileError(f"{path}: missing column(s) {', '.join(need)}; has {raw.columns}")
    symbol = (
        pl.col(cols["symbol"]).cast(pl.Utf8).str.to_uppercase()
        if "symbol" in cols
        else pl.lit(path.stem.upper())
    )
    try:
        out = raw.select(
            symbol.alias("symbol"),
            _epoch_seconds(raw[time_col]).alias("time"),
            *(pl.col(cols[c]).cast(pl.Float64).alias(c) for c in PRICE_COLUMNS),
        )
    except pl.exceptions.PolarsError as exc:
        raise BarFileError(f"{path}: cannot parse column values: {exc}") from exc
    return out


def _epoch_seconds(col: pl.Series) -> pl.Expr:
    """Bar start in epoch seconds: dates at 00:00 UTC, zoned timestamps converted to UTC."""
    if col.dtype == pl.Utf8:
        sample = col.drop_nulls().head(1).to_list()
        if sample and len(str(sample[0])) <= 10:
            expr = pl.lit(col).str.to_date().cast(pl.Datetime("us"))
        else:
            expr = pl.lit(col).str.to_datetime(time_zone="UTC", time_unit="us")
    elif col.dtype == pl.Date:
        expr = pl.lit(col).cast(pl.Datetime("us"))
    elif isinstance(col.dtype, pl.Datetime):
        expr = pl.lit(col)
        if col.dtype.time_zone is not None:
            expr = expr.dt.convert_time_zone("UTC")
    else:
        raise BarFileError(
            f"time column {col.name!r} has type {col.dtype}, expected text, date or datetime"
        )
    return expr.dt.epoch("s")


def load_bars(paths: Iterable[Path]) -> LoadedBars:
    """Read, validate, deduplicate and sort bars from every file."""
    frames = [read_bar_file(Path(p)) for p in paths]
    if not frames:
        raise BarFileError("no bar files given")
    df = pl.concat(frames, how="vertical")
    dropped: dict[str, int] = {}
    nulls = df.filter(pl.any_horizontal(pl.all().is_null()))
    if nulls.height:
        dropped["missing_value"] = nulls.height
        df = df.drop_nulls()
    problems = frame_to_batch(df).problems()
    bad = np.array([p is not None for p in problems], dtype=bool)
    for p in problems:
        if p is not None:
            dropped[p] = dropped.get(p, 0) + 1
    df = df.filter(pl.Series(~bad))
    before = df.height
    df = df.unique(subset=["symbol", "time"], keep="last", maintain_order=True)
    if df.height < before:
        dropped["duplicate"] = before - df.height
    return LoadedBars(df.sort(["time", "symbol"]), dropped)
