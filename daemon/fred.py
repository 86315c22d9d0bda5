"""FRED series CSV (`observation_date,DGS2` or `DATE,DGS2`; blank or `.` on holidays)."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from signals.rates import RatesSeries


class RatesFileError(ValueError):
    """A rates CSV cannot be used; the message names the file and the problem."""


def parse_fred_csv(text: str, source: str, series: str = "DGS2") -> RatesSeries:
    """Parse FRED CSV text into a `RatesSeries` (times at 00:00 UTC of each observation date)."""
    try:
        df = pl.read_csv(io.StringIO(text), infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        raise RatesFileError(f"{source}: not a CSV: {exc}") from exc
    date_col = next((c for c in df.columns if c.lower() in ("observation_date", "date")), None)
    if date_col is None or series not in df.columns:
        raise RatesFileError(
            f"{source}: expected columns observation_date (or DATE) and {series}, got {df.columns}"
        )
    try:
        out = (
            df.select(
                pl.col(date_col).str.to_date().cast(pl.Datetime("us")).dt.epoch("s").alias("t"),
                pl.col(series).replace({".": None, "": None}).cast(pl.Float64).alias("v"),
            )
            .drop_nulls()
            .sort("t")
        )
    except pl.exceptions.PolarsError as exc:
        raise RatesFileError(f"{source}: cannot parse dates or values: {exc}") from exc
    if out.height == 0:
        raise RatesFileError(f"{source}: no observations")
    return RatesSeries(out["t"].to_numpy(), out["v"].to_numpy())


def read_fred_csv(path: Path, series: str = "DGS2") -> RatesSeries:
    """Read a FRED CSV file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RatesFileError(f"{path}: cannot read: {exc}") from exc
    return parse_fred_csv(text, str(path), series)
