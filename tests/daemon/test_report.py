"""The backtest report: summary.json against an independent count from alerts.jsonl and
indicators.csv, the per-year rate over the data span, a self-contained report.html
with every alert marked, and a terminal summary that fits in 100 columns."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.image import imread

from daemon.backtest import BacktestResult
from daemon.cli import main
from daemon.plot import render_history
from daemon.rule_stats import summary
from signals.alerts import Alert

DAY = 86_400


def _independent(out: Path) -> dict[tuple[str, str], dict[str, object]]:
    """Per (rule, timeframe), from the written files with plain Python only."""
    closes: dict[str, list[tuple[str, float]]] = defaultdict(list)
    with (out / "indicators.csv").open() as fh:
        for row in csv.DictReader(fh):
            closes[row["symbol"]].append((row["time"], float(row["close"])))
    index = {sym: {t: i for i, (t, _) in enumerate(sorted(rows))} for sym, rows in closes.items()}
    series = {sym: [c for _, c in sorted(rows)] for sym, rows in closes.items()}

    def fwd(sym: str, i: int, k: int) -> float | None:
        s = series[sym]
        return s[i + k] / s[i] - 1.0 if i + k < len(s) else None

    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    by_rule: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for a in alerts:
        by_rule[(a["rule"], a["timeframe"])].append(a)
    result = {}
    for key, group in by_rule.items():
        symbols = sorted({a["symbol"] for a in group})
        days = {t for s in symbols for t, _ in closes[s]}
        entry: dict[str, object] = {
            "count": len(group),
            "per_year": len(group) / (len(days) / 252),
            "by_year": Counter(a["time"][:4] for a in group),
        }
        for k in (5, 20):
            after = [fwd(a["symbol"], index[a["symbol"]][a["time"]], k) for a in group]
            base = [fwd(s, i, k) for s in symbols for i in range(len(series[s]))]
            for name, values in (("after", after), ("all", base)):
                xs = [v for v in values if v is not None]
                entry[f"{name}{k}"] = (
                    len(xs), sum(v > 0 for v in xs) / len(xs), statistics.fmean(xs),
                    statistics.median(xs),
                )  # fmt: skip
        result[key] = entry
    return result


def _stats(s: dict[str, float]) -> tuple[float, ...]:
    return (s["n"], s["hit_rate"], s["mean"], s["median"])


def test_summary_json_equals_an_independent_computation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = Path("out")
    assert main(["backtest", "--sample", "--out", "out", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    got = json.loads((out / "summary.json").read_text())
    want = _independent(out)
    assert len(want) >= 3  # the sample fires several rules
    assert {(r["rule"], r["timeframe"]) for r in got["rules"]} == set(want)
    for r in got["rules"]:
        w = want[(r["rule"], r["timeframe"])]
        assert r["count"] == w["count"]
        assert r["per_year"] == pytest.approx(w["per_year"], rel=1e-12)
        fired = {y: c for y, c in r["by_year"].items() if c}
        assert fired == dict(w["by_year"])  # type: ignore[call-overload]
        assert set(r["by_year"]) == {str(y) for y in range(2023, 2025)}  # zeros included
        for k in ("5", "20"):
            assert _stats(r["forward"][k]) == pytest.approx(w[f"after{k}"], rel=1e-9)
            assert _stats(r["baseline"][k]) == pytest.approx(w[f"all{k}"], rel=1e-9)
    # The terminal summary fits in 100 columns, has every rule and says where the report is.
    lines = printed.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert f"report: {out / 'report.html'}" in printed
    for rule, _ in want:
        assert rule in printed


def _result(alert_days: list[int], years: int = 3) -> BacktestResult:
    """IWM daily bars over `years` x 252 trading days; an alert on each of `alert_days`."""
    n = 252 * years
    start = 1_577_836_800  # 2020-01-01
    # Five bars a week, so 252 bars run about a calendar year.
    days = [start + DAY * (7 * (i // 5) + i % 5) for i in range(n)]
    close = 100.0 + np.sin(np.arange(n) / 10.0)
    frame = pl.DataFrame({"symbol": ["IWM"] * n, "time": days, "close": close,
                          "score": 50.0 + 30 * np.sin(np.arange(n) / 25.0)})  # fmt: skip
    alerts = [Alert(id=str(i), rule="rare", symbol="IWM", timeframe="1d", bar_time=days[i],
                    time=days[i] + DAY, title="rare") for i in alert_days]  # fmt: skip
    return BacktestResult({"1d": frame}, alerts, {}, "1d")


def test_the_rate_per_year_is_over_the_data_span() -> None:
    # Six alerts, all in the first year of three: 2 a year, not 6.
    stats = summary(_result([10, 20, 30, 40, 50, 60]))
    (rule,) = stats.rules
    assert stats.trading_days == 756 and stats.years == pytest.approx(3.0)
    assert rule.count == 6 and rule.per_year == pytest.approx(2.0)
    assert rule.by_year == {"2020": 6, "2021": 0, "2022": 0}
    assert rule.forward["20"].n == 6 and rule.baseline["20"].n == 756 - 20


def test_the_report_is_self_contained_and_marks_every_alert(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["backtest", "--sample", "--out", str(out), "--no-progress"]) == 0
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert len(images) == len({a["symbol"] for a in alerts})
    for data in images:
        image = imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert image.shape[:2] == (900, 1600)
    got = json.loads((out / "summary.json").read_text())
    for r in got["rules"]:
        assert f"<td>{r['count']}</td>" in page and f">{r['per_year']:.2f}</td>" in page


def test_the_history_chart_marks_every_alert_by_rule() -> None:
    result = _result([10, 20, 300, 700])
    extra = Alert(id="x", rule="other", symbol="IWM", timeframe="1d",
                  bar_time=int(result.main["time"][400]), time=0, title="other")  # fmt: skip
    marks = [(a.bar_time, a.rule) for a in [*result.alerts, extra]]
    picture = render_history("IWM", result.main, marks)
    assert picture.marked == {"rare": 4, "other": 1}
    image = imread(io.BytesIO(picture.png), format="png")
    for name in ("price", "alerts", "score"):
        x0, y0, x1, y1 = picture.panels[name]
        crop = image[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2, :3]
        drawn = int((crop.min(axis=-1) < 0.8).sum())  # pixels well off the white background
        assert drawn > 100, name
