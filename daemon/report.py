"""The backtest's report: `report.html` (one self-contained file), `summary.json`, and the
terminal summary, all from one `rule_stats.Summary`.

The HTML needs no network: its pictures are PNGs inlined as data: URIs and
its style is in the page.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import msgspec
import polars as pl

from daemon import rule_stats
from daemon.backtest import BacktestResult
from daemon.plot import mark_time, render_history, rule_words
from daemon.rule_stats import FORWARD_BARS, TRADING_DAYS_PER_YEAR, ReturnStats, RuleStats, Summary

MAX_CHARTS = 4  # symbols drawn, those with the most alerts first
WIDTH = 100  # terminal columns

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1600px;
       padding: 0 16px; color: #1f2328; }
h1 { font-size: 24px; } h2 { font-size: 19px; margin-top: 32px; }
img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 3px 9px; border-bottom: 1px solid #d0d7de; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.base td { color: #57606a; font-style: italic; }
.few { color: #cf222e; } .zero { color: #afb8c1; }
p.note { color: #57606a; max-width: 1000px; }
"""


def _pct(x: float | None, signed: bool = True) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.2f}%" if signed else f"{100 * x:.0f}%"


def _n(stats: ReturnStats, few: int) -> str:
    return f"{stats.n}!" if stats.n < few else str(stats.n)


def write_summary(summary: Summary, path: Path) -> Path:
    """`summary.json`: the same numbers as the report, for scripts."""
    path.write_bytes(msgspec.json.format(msgspec.json.encode(summary), indent=2) + b"\n")
    return path


def summary_lines(result: BacktestResult, summary: Summary, report: Path | None) -> list[str]:
    """The terminal summary, at most `WIDTH` columns: data, last score per symbol, per rule
    count, rate over the data span and forward returns, and where the report is."""
    df = result.main
    if df.height == 0:
        return ["no bars processed"]
    lines = [
        f"{df.height} symbol-bars, {len(summary.symbols)} symbols ({result.timeframe}), "
        f"{summary.first} to {summary.last}: {summary.trading_days} trading days "
        f"= {summary.years:.2f} years"
    ]
    last = df.group_by("symbol", maintain_order=True).agg(
        pl.len().alias("bars"), pl.col("score").last(), pl.col("rsi14").last()
    )
    for row in last.iter_rows(named=True):
        score = "warming up" if row["score"] is None else f"{row['score']:.1f}"
        rsi = "-" if row["rsi14"] is None else f"{row['rsi14']:.1f}"
        lines.append(
            f"  {row['symbol']:<6} {row['bars']:>7} bars  last score {score:>10}  RSI {rsi}"
        )
    lines.append(f"{summary.alerts} alerts")
    if summary.rules:
        k1, k2 = FORWARD_BARS
        lines.append(
            f"per rule: alerts per year over the data span, and forward returns after {k1} "
            f"and {k2} bars"
        )
        lines.append(f"  {'':<38}| {f'after {k1} bars':^27} | {f'after {k2} bars':^27}")
        lines.append(
            f"  {'rule':<20} {'tf':>3} {'alerts':>6} {'/yr':>6} | {'n':>5} {'hit':>4} "
            f"{'mean':>7} {'median':>7} | {'n':>5} {'hit':>4} {'mean':>7} {'median':>7}"
        )
        seen: set[tuple[str, tuple[str, ...]]] = set()
        for rule in summary.rules:
            lines.append(_rule_line(rule.rule, rule.timeframe, rule, rule.forward, summary.few))
            seen.add((rule.timeframe, tuple(rule.symbols)))
        for rule in summary.rules:
            key = (rule.timeframe, tuple(rule.symbols))
            if key in seen and rule.baseline:
                seen.discard(key)
                name = "all bars " + ",".join(rule.symbols)
                lines.append(_rule_line(name, rule.timeframe, None, rule.baseline, summary.few))
        if any(s.n < summary.few for r in summary.rules for s in r.forward.values()):
            lines.append(f"  n! fewer than {summary.few} returns: the mean says little")
    if summary.rejected:
        lines.append("rejected: " + ", ".join(f"{k}={v}" for k, v in summary.rejected.items()))
    if report is not None:
        lines.append(f"report: {report} (per-year table, charts; numbers in summary.json)")
    return lines


def _rule_line(
    name: str, tf: str, rule: RuleStats | None, fwd: dict[str, ReturnStats], few: int
) -> str:
    count = "" if rule is None else str(rule.count)
    rate = "" if rule is None or rule.per_year is None else f"{rule.per_year:.2f}"
    cells = []
    for k in FORWARD_BARS:
        s = fwd.get(str(k), ReturnStats(0, None, None, None))
        cells.append(
            f"{_n(s, few):>5} {_pct(s.hit_rate, signed=False):>4} "
            f"{_pct(s.mean):>7} {_pct(s.median):>7}"
        )
    short = name if len(name) <= 20 else name[:19] + "~"
    return f"  {short:<20} {tf:>3} {count:>6} {rate:>6} | {cells[0]} | {cells[1]}"


def _picture(result: BacktestResult, symbol: str, rules: Sequence[str]) -> str:
    frame = result.main.filter(pl.col("symbol") == symbol).sort("time")
    marks = [(mark_time(a, result.timeframe), a.rule) for a in result.alerts if a.symbol == symbol]
    title = f"{symbol} · {result.timeframe} · close, every alert by rule · score with 30 / 70"
    picture = render_history(title, frame, marks, intraday=result.timeframe != "1d", rules=rules)
    data = base64.b64encode(picture.png).decode("ascii")
    alt = html.escape(f"{symbol}: close with {len(marks)} alerts marked, and the score")
    return f'<p><img alt="{alt}" src="data:image/png;base64,{data}"></p>'


def _stats_cells(s: ReturnStats | None, few: int) -> str:
    if s is None:
        return "<td>-</td>" * 4
    n = f'<span class="few" title="fewer than {few}">{s.n}</span>' if s.n < few else str(s.n)
    return (
        f"<td>{n}</td><td>{_pct(s.hit_rate, signed=False)}</td>"
        f"<td>{_pct(s.mean)}</td><td>{_pct(s.median)}</td>"
    )


def _rules_table(summary: Summary) -> str:
    k1, k2 = FORWARD_BARS
    head = (
        "<tr><th rowspan=2>rule</th><th rowspan=2>tf</th><th rowspan=2>alerts</th>"
        f"<th rowspan=2>per year</th><th colspan=4>after {k1} bars</th>"
        f"<th colspan=4>after {k2} bars</th></tr><tr>"
        + "<th>n</th><th>hit rate</th><th>mean</th><th>median</th>" * 2
        + "</tr>"
    )
    rows = []
    for r in summary.rules:
        rate = "-" if r.per_year is None else f"{r.per_year:.2f}"
        cells = "".join(_stats_cells(r.forward.get(str(k)), summary.few) for k in FORWARD_BARS)
        rows.append(
            f"<tr><td>{html.escape(rule_words(r.rule))}</td><td>{r.timeframe}</td>"
            f'<td>{r.count}</td><td title="over {r.years:.2f} years">{rate}</td>{cells}</tr>'
        )
        base = "".join(_stats_cells(r.baseline.get(str(k)), summary.few) for k in FORWARD_BARS)
        rows.append(
            f'<tr class="base"><td>all bars ({html.escape(", ".join(r.symbols))})</td>'
            f"<td>{r.timeframe}</td><td></td><td></td>{base}</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _years_table(rules: Sequence[RuleStats]) -> str:
    years = sorted({y for r in rules for y in r.by_year})
    head = "<tr><th>year</th>" + "".join(
        f"<th>{html.escape(rule_words(r.rule))}</th>" for r in rules
    )
    rows = []
    for y in years:
        cells = "".join(
            '<td class="zero">0</td>' if r.by_year.get(y, 0) == 0 else f"<td>{r.by_year[y]}</td>"
            for r in rules
        )
        rows.append(f"<tr><td>{y}</td>{cells}</tr>")
    totals = "".join(f"<td><b>{r.count}</b></td>" for r in rules)
    return f"<table>{head}</tr>{''.join(rows)}<tr><td><b>total</b></td>{totals}</tr></table>"


def render_report(result: BacktestResult, summary: Summary) -> str:
    """The report as one HTML page."""
    counts = Counter(a.symbol for a in result.alerts)
    # The symbols with alerts, most first; with none at all, the first one for its score.
    symbols = [s for s, _ in counts.most_common(MAX_CHARTS)] or summary.symbols[:1]
    names = list(dict.fromkeys(r.rule for r in summary.rules))
    charts = "".join(_picture(result, s, names) for s in symbols if s in summary.symbols)
    span = (
        f"{summary.first} to {summary.last}, {summary.trading_days} trading days = "
        f"{summary.years:.2f} years ({summary.trading_days} / {TRADING_DAYS_PER_YEAR}), "
        f"{', '.join(summary.symbols)}, {summary.timeframe} bars; {summary.alerts} alerts"
    )
    rules = (
        _rules_table(summary) + "<h2>Alerts per calendar year</h2>" + _years_table(summary.rules)
        if summary.rules
        else "<p>No rule fired.</p>"
    )
    k1, k2 = FORWARD_BARS
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>iwm-alerts backtest report</title><style>{_CSS}</style></head><body>
<h1>Backtest report</h1>
<p>{html.escape(span)}</p>
{charts}
<h2>Per rule</h2>
<p class="note">Per year: alerts over the whole data span of the symbols the rule fired on
(trading days with bars / {TRADING_DAYS_PER_YEAR}), not over the years it fired in. Forward return after k bars: close k bars later / close
&minus; 1 on the rule's timeframe and symbol; n counts alerts with k bars after them; hit
rate: share above zero. The italic row under each rule is the same over every bar of its
symbols: the baseline it has to beat. <span class="few">Red n</span>: fewer than
{summary.few}, so the mean says little. Returns after {k1} and {k2} bars overlap from one
alert to the next.</p>
{rules}
</body></html>
"""


def write_report(result: BacktestResult, out_dir: Path) -> tuple[Summary, list[Path]]:
    """`report.html` and `summary.json` in `out_dir`."""
    stats = rule_stats.summary(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report.html"
    report.write_text(render_report(result, stats), encoding="utf-8")
    return stats, [report, write_summary(stats, out_dir / "summary.json")]
