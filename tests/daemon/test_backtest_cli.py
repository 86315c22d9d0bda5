"""`iwm-alerts backtest` end to end: files in, indicators.csv out, through the streaming engine."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import polars as pl
import pytest
import talib

from daemon.cli import main
from daemon.sample import sample_daily
from tests.daemon.minute_market import minute_market

REQUIRED = [
    "symbol", "time", "close", "rsi14", "macd", "macd_signal", "macd_hist", "atr14", "atr_pct",
    "volume_ratio", "donchian_high20", "donchian_low20", "swing_high", "swing_low", "rs_roc20",
    "breadth20", "score", "sub_rsi", "sub_macd", "sub_fib", "sub_volume", "sub_atr", "sub_rs",
    "sub_breadth", "sub_rates", "rates_delta20",
]  # fmt: skip


def _write_sample(tmp: Path) -> list[Path]:
    """The bundled sample split into one file per symbol (symbol from the file stem)."""
    paths = []
    for (sym,), g in sample_daily().group_by("symbol", maintain_order=True):
        p = tmp / f"{str(sym).lower()}.csv"
        g.drop("symbol").write_csv(p)
        paths.append(p)
    return paths


def _fred(tmp: Path) -> Path:
    days = pl.date_range(pl.date(2022, 12, 1), pl.date(2025, 12, 31), eager=True)
    values = [None if d.weekday() >= 5 else f"{4.0 + 0.001 * i:.2f}" for i, d in enumerate(days)]
    p = tmp / "DGS2.csv"
    pl.DataFrame({"observation_date": days, "DGS2": values}).write_csv(p)
    return p


def test_backtest_writes_talib_exact_indicators(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _write_sample(tmp_path)
    out = tmp_path / "out"
    rc = main(["backtest", "--bars", *map(str, files), "--timeframe", "1d", "--out", str(out),
               "--rates", str(_fred(tmp_path)), "--no-progress"])  # fmt: skip
    assert rc == 0
    df = pl.read_csv(out / "indicators.csv")
    assert set(REQUIRED) <= set(df.columns)
    assert sorted(df["symbol"].unique().to_list()) == ["IWM", "QQQ", "SPY"]
    assert df.height == 1500
    iwm = df.filter(pl.col("symbol") == "IWM")
    assert iwm["time"][0] == "2023-01-03"
    close = iwm["close"].to_numpy()
    high, low = iwm["high"].to_numpy(), iwm["low"].to_numpy()
    for col, ref in [
        ("rsi14", talib.RSI(close, 14)),
        ("macd_hist", talib.MACD(close, 12, 26, 9)[2]),
        ("atr14", talib.ATR(high, low, close, 14)),
    ]:
        got = iwm[col].cast(pl.Float64).fill_null(np.nan).to_numpy()
        assert np.array_equal(np.isnan(got), np.isnan(ref)), col
        assert np.nanmax(np.abs(got - ref)) < 1e-9, col
    # Five signals (RSI, ATR, volume, RS, breadth, rates) are warm from bar 20, before MACD and swing.
    assert iwm["score"].null_count() == 20 and iwm["score"][20] is not None
    assert iwm["sub_macd"].null_count() == 33 and iwm["sub_fib"].null_count() == 60
    assert iwm["sub_rates"].drop_nulls().len() > 400
    assert df.filter(pl.col("symbol") == "SPY")["rs_roc20"].null_count() == 500
    printed = capsys.readouterr().out
    assert "1500 symbol-bars, 3 symbols" in printed and "indicators.csv" in printed


def test_backtest_sample_runs(tmp_path: Path) -> None:
    assert main(["backtest", "--sample", "--out", str(tmp_path), "--no-progress"]) == 0
    df = pl.read_csv(tmp_path / "indicators.csv")
    assert df["sub_rates"].null_count() == df.height  # no --rates: the signal drops out
    assert df["score"].drop_nulls().len() > 1000


def test_bad_bar_files_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "IWM.csv"
    bad.write_text("date,open,high,close\n2024-01-02,1,2,1.5\n")
    assert main(["backtest", "--bars", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "IWM.csv" in err and "low" in err and "volume" in err


def test_invalid_bars_are_dropped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "IWM.csv"
    p.write_text(
        "date,open,high,low,close,volume\n"
        "2024-01-02,10,11,9,10.5,100\n"
        "2024-01-03,10,9,11,10.5,100\n"  # high < low
        "2024-01-04,10,11,9,10.5,-5\n"  # negative volume
        "2024-01-05,10,11,9,10.5,100\n"
        "2024-01-05,10,11,9,10.5,100\n"  # duplicate
    )
    assert main(["backtest", "--bars", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "duplicate=1" in out and "high_below_low=1" in out and "negative_volume=1" in out
    assert pl.read_csv(tmp_path / "o" / "indicators.csv").height == 2


ALERT_KEYS = {
    "id",
    "rule",
    "symbol",
    "timeframe",
    "time",
    "severity",
    "values",
    "score",
    "breakdown",
}


def test_backtest_writes_alerts_and_the_rule_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _write_sample(tmp_path)
    assert (
        main(
            ["backtest", "--bars", *map(str, files), "--out", str(tmp_path / "o"), "--no-progress"]
        )
        == 0
    )
    lines = (tmp_path / "o" / "alerts.jsonl").read_text().splitlines()
    assert lines
    records = [msgspec.json.decode(line) for line in lines]
    assert all(set(r) >= ALERT_KEYS for r in records)
    assert len({r["id"] for r in records}) == len(records)
    assert {r["timeframe"] for r in records} == {"1d"}
    out = capsys.readouterr().out
    assert "alerts per year over the data span" in out and "after 20 bars" in out
    assert (tmp_path / "o" / "report.html").is_file() and (
        tmp_path / "o" / "summary.json"
    ).is_file()
    for rule in {r["rule"] for r in records}:
        assert rule in out


def test_rules_file_replaces_the_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "hot"\noperator = "greater_than"\nvalue = "rsi14"\nthreshold = 70.0\n'
                     'rearm_below = 50.0\n')  # fmt: skip
    args = [
        "backtest",
        "--sample",
        "--out",
        str(tmp_path / "o"),
        "--rules",
        str(rules),
        "--no-progress",
    ]
    assert main(args) == 0
    records = [
        msgspec.json.decode(x) for x in (tmp_path / "o" / "alerts.jsonl").read_text().splitlines()
    ]
    assert records and {r["rule"] for r in records} == {"hot"}
    assert all(r["values"]["rsi14"] > 70 for r in records)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "x"\noperator = "sideways"\n')
    assert main(["backtest", "--sample", "--out", str(tmp_path / "p"), "--rules", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "operator" in err


def test_minute_backtest_runs_the_intraday_path(tmp_path: Path) -> None:
    df, _ = minute_market(n_sessions=3)
    for (sym,), g in df.group_by("symbol"):
        g.with_columns(
            pl.from_epoch("time", time_unit="s").dt.replace_time_zone("UTC")
            .dt.convert_time_zone("America/New_York").dt.strftime("%Y-%m-%dT%H:%M:%S%:z").alias("timestamp")
        ).drop("symbol", "time").write_csv(tmp_path / f"{sym}.csv")  # fmt: skip
    files = [str(tmp_path / f"{s}.csv") for s in ("IWM", "SPY", "QQQ")]
    out = tmp_path / "o"
    assert (
        main(
            ["backtest", "--bars", *files, "--timeframe", "1m", "--out", str(out), "--no-progress"]
        )
        == 0
    )
    minutes = pl.read_csv(out / "indicators.csv")
    daily = pl.read_csv(out / "indicators_1d.csv")
    assert minutes.height == df.height
    assert daily.height == 9 and sorted(set(daily["time"].to_list())) == [
        "2024-01-02",
        "2024-01-03",
        "2024-01-04",
    ]
    assert minutes["time"][0].endswith("-05:00")
    assert (out / "alerts.jsonl").exists()
