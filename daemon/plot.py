"""Price pictures drawn with matplotlib: the /chart candles and the backtest report's history.

matplotlib is imported inside the functions that draw, never at module level:
the daemon imports this module at start-up (through the bot's commands) and
must not pay for the library until somebody asks for a picture. Figures are
built with the object API (`matplotlib.figure.Figure`, Agg), never through
pyplot, so no global figure registry grows in a long-running process.

The x axis is the bar index (no gaps over nights and weekends); its tick
labels are the bars' dates or times.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import polars as pl

from signals.alerts import Alert
from signals.indicators.rsi import rsi_batch

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.ticker import Formatter, Locator

FloatArray = npt.NDArray[np.float64]
NEW_YORK = ZoneInfo("America/New_York")

# Phone-first: Telegram shows a photo about 400 points wide, so text is large
# against the picture (about 1/40 of its width) and the panels are few.
CHART_PX = (960, 1200)
REPORT_PX = (1600, 900)
_BAR_WIDTH = 0.7  # of a bar's slot: candles and volume bars alike
_DPI = 100
_BG, _FG, _GRID = "#ffffff", "#1f2328", "#d0d7de"
_UP, _DOWN = "#1a7f37", "#cf222e"
_RSI_ZONE = "#ddf4ff"
_LEVEL_COLORS = {"high": "#bc4c00", "low": "#0969da", "fib": "#6e7781"}
# One colour and marker per rule, in order of first appearance.
_RULE_STYLES = (
    ("#8250df", "^"), ("#bf3989", "v"), ("#0969da", "o"), ("#bc4c00", "s"), ("#1a7f37", "D"),
    ("#cf222e", "P"), ("#57606a", "X"), ("#9a6700", "*"), ("#0550ae", "p"), ("#953800", "h"),
)  # fmt: skip
_TEXT_BOX = {"facecolor": _BG, "edgecolor": "none", "alpha": 0.8, "pad": 2}
RSI_ZONE = (35.0, 42.0)
LABEL_CHARS = 30  # what fits right of the price panel at the label size
RVOL_BARS = 20

_WORDS = {
    "prior_day_high": "prior-day high",
    "prior_day_low": "prior-day low",
    "donchian_high20": "20-day high",
    "donchian_low20": "20-day low",
    "swing_high": "swing high",
    "swing_low": "swing low",
}


def level_words(name: str) -> str:
    """A level's column name in words: `fib_1272` -> `Fib 127.2%`, `donchian_high20` -> `20-day high`."""
    if name in _WORDS:
        return _WORDS[name]
    if name.startswith("fib_") and name[4:].isdigit():
        return f"Fib {int(name[4:]) / 10:g}%"
    return name.replace("_", " ")


def _level_kind(name: str) -> str:
    if name.startswith("fib_"):
        return "fib"
    return "low" if name.endswith(("low", "low20")) else "high"


@dataclass(frozen=True)
class LevelLabel:
    """One label at the right edge: the levels it names (lowest first), their prices,
    and the price it sits at after spreading."""

    levels: tuple[tuple[str, float], ...]
    y: float

    @property
    def lines(self) -> list[str]:
        """One line per distinct price, highest first: `247.18 20-day high · swing high`;
        a line longer than `LABEL_CHARS` becomes one line per level."""
        by_price: dict[str, list[str]] = {}
        for name, value in sorted(self.levels, key=lambda item: -item[1]):
            by_price.setdefault(f"{value:.2f}", []).append(level_words(name))
        out = []
        for price, words in by_price.items():
            line = f"{price} {' · '.join(words)}"
            out += [line] if len(line) <= LABEL_CHARS else [f"{price} {w}" for w in words]
        return out

    @property
    def text(self) -> str:
        """The label as drawn."""
        return "\n".join(self.lines)

    @property
    def mid(self) -> float:
        """Where its leader line points: the middle of its levels."""
        return (self.levels[0][1] + self.levels[-1][1]) / 2


def merge_levels(
    levels: Mapping[str, float], lo: float, hi: float, merge: float, line: float
) -> list[LevelLabel]:
    """Labels for `levels` in the price range [lo, hi]: levels within `merge` of each
    other share a label (a line per price), and labels are then pushed apart so none
    overlaps the next (`line`: the height of a line of text in price units)."""
    shown = sorted((v, n) for n, v in levels.items() if lo <= v <= hi)
    groups: list[list[tuple[float, str]]] = []
    for v, n in shown:  # a group spans less than `merge`: no chains of near neighbours
        if groups and v - groups[-1][0][0] < merge:
            groups[-1].append((v, n))
        else:
            groups.append([(v, n)])
    labels = [LevelLabel(tuple((n, v) for v, n in g), 0.0) for g in groups]
    heights = [len(lab.lines) * line for lab in labels]
    ys = [lab.mid for lab in labels]
    for i in range(1, len(ys)):  # push up from the bottom, then back down from the top
        ys[i] = max(ys[i], ys[i - 1] + (heights[i - 1] + heights[i]) / 2)
    if ys and ys[-1] + heights[-1] / 2 > hi:
        ys[-1] = hi - heights[-1] / 2
        for i in range(len(ys) - 2, -1, -1):
            ys[i] = min(ys[i], ys[i + 1] - (heights[i] + heights[i + 1]) / 2)
    return [LevelLabel(lab.levels, y) for lab, y in zip(labels, ys, strict=True)]


@dataclass(frozen=True)
class Picture:
    """A rendered PNG, its size, where each panel is (pixels, origin top-left), and
    how many alert markers were drawn per rule."""

    png: bytes
    width: int
    height: int
    panels: dict[str, tuple[int, int, int, int]]
    marked: dict[str, int]
    labels: tuple[LevelLabel, ...] = ()


def mark_time(alert: Alert, timeframe: str) -> int:
    """Where to mark `alert` on a chart of `timeframe` bars: its bar on that timeframe, or
    else the moment it was decided (a daily alert fires during some minute of the day)."""
    return alert.bar_time if alert.timeframe == timeframe else alert.time - 1


def rule_words(rule: str) -> str:
    """A rule name for a legend: `volume_breakout` -> `volume breakout`."""
    return rule.replace("_", " ")


def _plain(text: str) -> str:
    """`text` as it reads: a `$` would otherwise start matplotlib's math mode (rule names
    come from the user's rules file)."""
    return text.replace("$", r"\$")


def _figure(size_px: tuple[int, int]) -> Figure:
    from matplotlib.figure import Figure  # noqa: PLC0415 - lazy: the daemon's start-up must not load it

    fig = Figure(figsize=(size_px[0] / _DPI, size_px[1] / _DPI), dpi=_DPI, facecolor=_BG)
    return fig


def _style(ax: Axes, fontsize: float) -> None:
    ax.set_facecolor(_BG)
    ax.grid(True, color=_GRID, linewidth=0.8)
    ax.tick_params(colors=_FG, labelsize=fontsize)
    for spine in ax.spines.values():
        spine.set_color(_GRID)


def _time_ticks(
    ax: Axes, times: npt.NDArray[np.int64], intraday: bool, fontsize: float, most: int = 5
) -> None:
    """Up to `most` date (or time) labels on the bar-index axis; over years, at the
    first bar of evenly spaced years."""
    n = len(times)
    if n == 0:
        return
    days = (int(times[-1]) - int(times[0])) / 86_400
    if not intraday and days >= 3 * 365:
        years = (times // 86_400 * 86_400).astype("datetime64[s]").astype("datetime64[Y]")
        starts = np.flatnonzero(np.r_[True, years[1:] != years[:-1]])[1:]
        step = max(1, math.ceil(len(starts) / most))
        ticks = starts[::step]
        fmt = "%Y"
    else:
        ticks = np.unique(np.linspace(0, n - 1, min(most, n)).round().astype(int))
        fmt = "%H:%M\n%b %d" if intraday else "%b %d\n%Y"
    zone = NEW_YORK if intraday else UTC  # a daily bar's time is its date at 00:00 UTC
    ax.set_xticks(ticks.tolist())
    ax.set_xticklabels(
        [datetime.fromtimestamp(int(times[i]), zone).strftime(fmt) for i in ticks],
        fontsize=fontsize,
    )


def _panels(fig: Figure, axes: Mapping[str, Axes]) -> dict[str, tuple[int, int, int, int]]:
    height = fig.bbox.height
    out = {}
    for name, ax in axes.items():
        x0, y0, x1, y1 = ax.get_window_extent().extents
        out[name] = (round(x0), round(height - y1), round(x1), round(height - y0))
    return out


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, facecolor=_BG)
    return buf.getvalue()


def _column(bars: pl.DataFrame, name: str) -> FloatArray:
    return bars[name].cast(pl.Float64).fill_null(float("nan")).to_numpy().astype(np.float64)


def _rvol(volume: FloatArray) -> FloatArray:
    """Each bar's volume over the mean of the `RVOL_BARS` bars before it (NaN until warm)."""
    out = np.full(len(volume), np.nan)
    if len(volume) > RVOL_BARS:
        csum = np.concatenate([[0.0], np.cumsum(volume)])
        mean = (csum[RVOL_BARS:-1] - csum[: -RVOL_BARS - 1]) / RVOL_BARS
        with np.errstate(divide="ignore", invalid="ignore"):
            out[RVOL_BARS:] = np.where(mean > 0, volume[RVOL_BARS:] / mean, np.nan)
    return out


def _mark(
    ax: Axes,
    times: npt.NDArray[np.int64],
    alerts: Sequence[tuple[int, str]],
    anchor: tuple[FloatArray, FloatArray],
    fontsize: float,
) -> dict[str, int]:
    """A marker per alert at its bar (at `anchor`'s low; at its high for a rule named
    `*down*`), one style per rule and a legend; counts what was drawn per rule."""
    by_rule: dict[str, list[int]] = {}
    for t, rule in alerts:
        i = int(np.searchsorted(times, t, side="right")) - 1
        if 0 <= i < len(times):
            by_rule.setdefault(rule, []).append(i)
    low, high = anchor
    marked = {}
    for k, (rule, idx) in enumerate(by_rule.items()):
        color, marker = _RULE_STYLES[k % len(_RULE_STYLES)]
        xs = np.asarray(idx, dtype=np.float64)
        down = "down" in rule
        ys = high[idx] if down else low[idx]
        coll = ax.scatter(
            xs, ys, s=110, marker=marker, color=color, edgecolors=_FG, linewidths=0.6,
            zorder=5, label=_plain(f"{rule_words(rule)} ({len(idx)})"),
        )  # fmt: skip
        marked[rule] = len(np.asarray(coll.get_offsets()))
    if marked:
        # Right of the volume and RSI panels, a column the level labels leave empty:
        # inside the price panel it covered candles.
        ax.legend(
            loc="upper left", bbox_to_anchor=(1.02, -0.04), bbox_transform=ax.transAxes,
            borderaxespad=0.0, fontsize=fontsize, frameon=False, markerscale=0.9,
        )  # fmt: skip
    return marked


def render_candles(
    title: str,
    bars: pl.DataFrame,
    levels: Mapping[str, float | None],
    alerts: Sequence[tuple[int, str]] = (),
    *,
    intraday: bool = False,
) -> Picture:
    """Candles (price), volume with RVOL, and RSI with the 35-42 zone, for `bars`
    (oldest first: `time`, `open`, `high`, `low`, `close`, optional `volume` and
    `rsi14`). Levels in the price range are drawn and labelled in words at the
    right edge; `alerts` are (bar time, rule) pairs marked at their bar."""
    o, h, lo_, c = (_column(bars, k) for k in ("open", "high", "low", "close"))
    n = len(c)
    times = (
        bars["time"].cast(pl.Int64).to_numpy()
        if "time" in bars.columns
        else np.arange(n, dtype=np.int64) * 86_400
    )
    volume = _column(bars, "volume") if "volume" in bars.columns else np.full(n, np.nan)
    rsi = _column(bars, "rsi14") if "rsi14" in bars.columns else _column(
        pl.DataFrame({"rsi": rsi_batch(bars["close"])}), "rsi"
    )  # fmt: skip
    big, small = 22.0, 18.0

    fig = _figure(CHART_PX)
    grid = fig.add_gridspec(
        3, 1, height_ratios=(5, 1.6, 1.9), hspace=0.08,
        left=0.12, right=0.6, top=0.93, bottom=0.08,
    )  # fmt: skip
    ax_p = fig.add_subplot(grid[0])
    ax_v = fig.add_subplot(grid[1], sharex=ax_p)
    ax_r = fig.add_subplot(grid[2], sharex=ax_p)
    for ax in (ax_p, ax_v, ax_r):
        _style(ax, small)

    x = np.arange(n, dtype=np.float64)
    up = c >= o
    ax_p.vlines(x, lo_, h, colors=np.where(up, _UP, _DOWN).tolist(), linewidth=1.4, zorder=2)
    _boxes(ax_p, x, np.minimum(o, c), np.maximum(o, c), up)

    finite = np.isfinite(lo_) & np.isfinite(h)
    p_lo = float(np.min(lo_[finite])) if finite.any() else 0.0
    p_hi = float(np.max(h[finite])) if finite.any() else 1.0
    span = max(p_hi - p_lo, abs(p_hi) * 1e-3, 1e-6)
    near = {
        k: float(v)
        for k, v in levels.items()
        if v is not None and math.isfinite(v) and p_lo - 0.1 * span <= v <= p_hi + 0.1 * span
    }
    y_lo = min([p_lo, *near.values()]) - 0.06 * span
    y_hi = max([p_hi, *near.values()]) + 0.06 * span
    ax_p.set_ylim(y_lo, y_hi)
    ax_p.set_xlim(-1, n)
    # A label is about `small` points tall: its height in price units is the merge gap.
    label_pt = 16.0
    line_h = (label_pt * 1.2 / 72 * _DPI) / ax_p.get_window_extent().height * (y_hi - y_lo)
    labels = merge_levels(near, y_lo, y_hi, line_h, line_h)
    for name, value in near.items():
        ax_p.axhline(
            value, color=_LEVEL_COLORS[_level_kind(name)], linewidth=1.3, linestyle=(0, (5, 3)),
            zorder=1,
        )  # fmt: skip
    for lab in labels:
        color = _LEVEL_COLORS[_level_kind(lab.levels[-1][0])] if len(lab.levels) == 1 else _FG
        ax_p.annotate(
            _plain(lab.text), xy=(1.0, lab.mid), xycoords=("axes fraction", "data"),
            xytext=(1.02, lab.y), textcoords=("axes fraction", "data"), fontsize=label_pt,
            color=color, va="center", ha="left", annotation_clip=False,
            arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.8},
        )  # fmt: skip
    pad = 0.03 * span  # markers just off the candle
    marked = _mark(ax_p, times, alerts, (lo_ - pad, h + pad), small - 2)

    _volume_panel(ax_v, x, volume, up, small)
    _rsi_panel(ax_r, x, rsi, small)

    for ax in (ax_p, ax_v):
        ax.tick_params(labelbottom=False)
    _time_ticks(ax_r, times, intraday, small)
    fig.suptitle(_plain(title), fontsize=big, color=_FG, x=0.12, ha="left", fontweight="bold")
    panels = _panels(fig, {"price": ax_p, "volume": ax_v, "rsi": ax_r})
    png = _png(fig)
    return Picture(png, *CHART_PX, panels, marked, tuple(labels))


def _volume_panel(
    ax: Axes, x: FloatArray, volume: FloatArray, up: npt.NDArray[np.bool_], fontsize: float
) -> None:
    """Volume bars coloured like their candle, and the last RVOL in the corner."""
    _boxes(ax, x, np.zeros(len(x)), np.nan_to_num(volume), up)
    ax.set_ylim(0, max(float(np.nanmax(volume)) if np.isfinite(volume).any() else 1.0, 1.0) * 1.05)
    rvol = _rvol(volume)
    last_rvol = next((float(v) for v in rvol[::-1] if math.isfinite(v)), None)
    v_text = "volume" + ("" if last_rvol is None else f" · RVOL {last_rvol:.1f}x")
    ax.text(0.01, 0.95, v_text, transform=ax.transAxes, fontsize=fontsize, va="top", color=_FG,
            bbox=_TEXT_BOX)  # fmt: skip
    ax.yaxis.set_major_formatter(_volume_formatter())
    ax.yaxis.set_major_locator(_max_ticks(2))


def _rsi_panel(ax: Axes, x: FloatArray, rsi: FloatArray, fontsize: float) -> None:
    """RSI(14) over the 35-42 zone and the 30/70 guides, the last value in the corner."""
    ax.axhspan(*RSI_ZONE, color=_RSI_ZONE, zorder=0)
    for guide in (30.0, 70.0):
        ax.axhline(guide, color="#8c959f", linewidth=1.0, linestyle=(0, (4, 3)))
    ax.plot(x, rsi, color="#24292f", linewidth=2.0)
    ax.set_ylim(0, 100)
    ax.set_yticks([30, 70])
    last_rsi = next((float(v) for v in rsi[::-1] if math.isfinite(v)), None)
    r_text = "RSI 14" + ("" if last_rsi is None else f" · {last_rsi:.0f}") + " · zone 35-42"
    ax.text(0.01, 0.95, r_text, transform=ax.transAxes, fontsize=fontsize, va="top", color=_FG,
            bbox=_TEXT_BOX)  # fmt: skip


def render_history(
    title: str,
    frame: pl.DataFrame,
    alerts: Sequence[tuple[int, str]],
    *,
    intraday: bool = False,
    rules: Sequence[str] = (),
) -> Picture:
    """The report's picture of one symbol over the whole backtest: the close (candles
    are unreadable over years) with a dot at each alert, a strip with one row per rule
    and a tick at each of its alerts (where the count is read), and the score with its
    30 and 70 lines. `frame`: `time`, `close`, `score`, oldest first. A rule's colour
    is its place in `rules` (so one rule has one colour in every picture of a report)."""
    times = frame["time"].cast(pl.Int64).to_numpy()
    close, score = _column(frame, "close"), _column(frame, "score")
    n = len(close)
    by_rule: dict[str, list[int]] = {}
    for t, rule in alerts:
        i = int(np.searchsorted(times, t, side="right")) - 1
        if 0 <= i < n:
            by_rule.setdefault(rule, []).append(i)
    small = 13.0
    fig = _figure(REPORT_PX)
    rows = max(len(by_rule), 1)
    grid = fig.add_gridspec(
        3, 1, height_ratios=(3, 0.22 * rows + 0.3, 1.2), hspace=0.05,
        left=0.14, right=0.98, top=0.92, bottom=0.08,
    )  # fmt: skip
    ax_p = fig.add_subplot(grid[0])
    ax_a = fig.add_subplot(grid[1], sharex=ax_p)
    ax_s = fig.add_subplot(grid[2], sharex=ax_p)
    for ax in (ax_p, ax_a, ax_s):
        _style(ax, small)
    x = np.arange(n, dtype=np.float64)
    ax_p.plot(x, close, color="#24292f", linewidth=1.0, zorder=2)
    ax_p.set_xlim(-1, max(n, 1))
    ax_p.set_ylabel("close", fontsize=small, color=_FG)
    order = [*rules, *(r for r in by_rule if r not in rules)]
    by_rule = {r: by_rule[r] for r in order if r in by_rule}
    colors = [_RULE_STYLES[order.index(r) % len(_RULE_STYLES)][0] for r in by_rule]
    marked = {}
    for k, (rule, idx) in enumerate(by_rule.items()):
        color = colors[k]
        ax_p.scatter(idx, close[idx], s=14, color=color, zorder=3, linewidths=0)
        row = rows - 1 - k
        coll = ax_a.scatter(idx, np.full(len(idx), row), s=120, marker="|", color=color,
                            linewidths=1.6)  # fmt: skip
        marked[rule] = len(np.asarray(coll.get_offsets()))
    ax_a.set_ylim(-0.7, rows - 0.3)
    ax_a.set_yticks(list(range(rows)))
    ax_a.set_yticklabels(
        [_plain(f"{rule_words(r)} ({len(i)})") for r, i in reversed(by_rule.items())] or [""],
        fontsize=small - 1,
    )
    for tick, color in zip(ax_a.get_yticklabels(), reversed(colors), strict=False):
        tick.set_color(color)
    ax_a.grid(False)
    for guide in (30.0, 70.0):
        ax_s.axhline(guide, color="#8c959f", linewidth=1.0, linestyle=(0, (4, 3)))
    ax_s.plot(x, score, color=_FG, linewidth=0.8)
    ax_s.set_ylim(0, 100)
    ax_s.set_yticks([30, 70])
    ax_s.set_ylabel("score", fontsize=small, color=_FG)
    for ax in (ax_p, ax_a):
        ax.tick_params(labelbottom=False)
    _time_ticks(ax_s, times, intraday, small, most=10)
    fig.suptitle(_plain(title), fontsize=18, color=_FG, x=0.14, ha="left", fontweight="bold")
    panels = _panels(fig, {"price": ax_p, "alerts": ax_a, "score": ax_s})
    return Picture(_png(fig), *REPORT_PX, panels, marked)


def _boxes(
    ax: Axes,
    x: FloatArray,
    bottom: FloatArray,
    top: FloatArray,
    up: npt.NDArray[np.bool_],
) -> None:
    """Candle bodies or volume bars as one collection (one patch per bar is 4x slower)."""
    from matplotlib.collections import PolyCollection  # noqa: PLC0415 - lazy, see the module docstring

    top = np.maximum(top, bottom + 1e-9 * np.maximum(np.abs(bottom), 1.0))  # a doji stays visible
    left, right = x - _BAR_WIDTH / 2, x + _BAR_WIDTH / 2
    verts = np.stack(
        [np.c_[left, bottom], np.c_[left, top], np.c_[right, top], np.c_[right, bottom]], axis=1
    )
    keep = np.isfinite(verts).all(axis=(1, 2))
    colors = np.where(up, _UP, _DOWN)[keep].tolist()
    ax.add_collection(
        PolyCollection(
            list(verts[keep]), facecolors=colors, edgecolors=colors, linewidths=0.5, zorder=3
        )
    )


def _volume_formatter() -> Formatter:
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415 - lazy, see the module docstring

    def short(v: float, _pos: object) -> str:
        for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:.0f}{suffix}"
        return f"{v:.0f}"

    return FuncFormatter(short)


def _max_ticks(n: int) -> Locator:
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 - lazy, see the module docstring

    return MaxNLocator(nbins=n, min_n_ticks=1)
