"""The /chart picture: candles with price levels over an RSI panel, as a PNG.

Drawn on a numpy canvas and encoded with zlib + struct (no plotting library
in the daemon's dependencies). The picture carries no text; the caption names
each level next to a coloured square that matches its line.
"""

from __future__ import annotations

import html
import itertools
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from signals.indicators.rsi import rsi_batch

Canvas = npt.NDArray[np.uint8]
Color = tuple[int, int, int]

WIDTH, HEIGHT = 800, 480
_PAD = 10
_PRICE = (_PAD, 320)  # top, bottom rows of the price panel
_RSI = (340, HEIGHT - _PAD)
_BACKGROUND: Color = (22, 26, 33)
_GRID: Color = (70, 76, 88)
_UP: Color = (38, 166, 91)
_DOWN: Color = (220, 68, 55)
_RSI_LINE: Color = (230, 230, 230)
_ZONE: Color = (40, 52, 64)
# Level colours, each with the emoji square that names it in the caption.
_LEVEL_COLORS: tuple[tuple[Color, str], ...] = (
    ((66, 133, 244), "\N{LARGE BLUE SQUARE}"),
    ((245, 145, 30), "\N{LARGE ORANGE SQUARE}"),
    ((155, 89, 182), "\N{LARGE PURPLE SQUARE}"),
    ((241, 196, 15), "\N{LARGE YELLOW SQUARE}"),
    ((141, 85, 36), "\N{LARGE BROWN SQUARE}"),
    ((236, 236, 236), "\N{WHITE LARGE SQUARE}"),
)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_png(rgb: Canvas) -> bytes:
    """An 8-bit RGB PNG of an (height, width, 3) uint8 array."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (h, w, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    height, width, _ = rgb.shape
    rows = np.zeros((height, 1 + width * 3), dtype=np.uint8)  # filter byte 0: none
    rows[:, 1:] = rgb.reshape(height, width * 3)

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class Chart:
    """A rendered chart: the PNG and its HTML caption."""

    png: bytes
    caption: str


def _line(canvas: Canvas, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
    steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.rint(np.linspace(x0, x1, steps)).astype(int)
    ys = np.rint(np.linspace(y0, y1, steps)).astype(int)
    keep = (xs >= 0) & (xs < canvas.shape[1]) & (ys >= 0) & (ys < canvas.shape[0])
    canvas[ys[keep], xs[keep]] = color


def _hline(canvas: Canvas, y: float, color: Color, dash: int = 0) -> None:
    row = round(y)
    if not 0 <= row < canvas.shape[0]:
        return
    xs = np.arange(_PAD, canvas.shape[1] - _PAD)
    if dash:
        xs = xs[(xs // dash) % 2 == 0]
    canvas[row, xs] = color


def _scale(value: float, lo: float, hi: float, panel: tuple[int, int]) -> float:
    top, bottom = panel
    return bottom - (value - lo) / (hi - lo) * (bottom - top)


def render_chart(
    symbol: str, bars: pl.DataFrame, levels: Mapping[str, float | None]
) -> Chart | None:
    """The chart of `bars` (oldest first; `open`, `high`, `low`, `close`, optional `rsi14`)
    with `levels`, or None when there are no bars to draw."""
    if bars.height == 0:
        return None
    o, h, lo_, c = (
        bars[name].cast(pl.Float64).to_numpy() for name in ("open", "high", "low", "close")
    )
    rsi_col = bars["rsi14"] if "rsi14" in bars.columns else rsi_batch(bars["close"])
    rsi = rsi_col.cast(pl.Float64).fill_null(float("nan")).to_numpy()

    lo, hi = float(np.nanmin(lo_)), float(np.nanmax(h))
    span = max(hi - lo, abs(hi) * 1e-4, 1e-9)
    # Levels near the bars stretch the scale; far ones are only named in the caption.
    shown = {
        name: float(v)
        for name, v in levels.items()
        if v is not None and math.isfinite(v) and lo - span / 2 <= v <= hi + span / 2
    }
    lo, hi = min([lo, *shown.values()]), max([hi, *shown.values()])
    margin = (hi - lo) * 0.05 or span * 0.05
    lo, hi = lo - margin, hi + margin

    canvas = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    canvas[:] = _BACKGROUND
    n = bars.height
    step = (WIDTH - 2 * _PAD) / n
    half = max(step * 0.35, 0.5)
    for i in range(n):
        if not all(math.isfinite(v) for v in (o[i], h[i], lo_[i], c[i])):
            continue
        x = _PAD + (i + 0.5) * step
        color = _UP if c[i] >= o[i] else _DOWN
        _line(canvas, x, _scale(h[i], lo, hi, _PRICE), x, _scale(lo_[i], lo, hi, _PRICE), color)
        top = round(_scale(max(o[i], c[i]), lo, hi, _PRICE))
        bottom = round(_scale(min(o[i], c[i]), lo, hi, _PRICE))
        canvas[top : bottom + 1, max(round(x - half), 0) : round(x + half) + 1] = color

    legend = []
    for k, (name, value) in enumerate(sorted(levels.items(), key=_level_order)):
        color, square = _LEVEL_COLORS[k % len(_LEVEL_COLORS)]
        if name in shown:
            _hline(canvas, _scale(shown[name], lo, hi, _PRICE), color, dash=6)
            legend.append(f"{square} {html.escape(name)} {shown[name]:.2f}")
        else:
            text = "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"
            legend.append(f"\N{WHITE SMALL SQUARE} {html.escape(name)} {text} (off chart)")

    # RSI panel: the 35-42 entry zone shaded, 30/70 guides dashed.
    zone_top, zone_bottom = (round(_scale(v, 0, 100, _RSI)) for v in (42, 35))
    canvas[zone_top : zone_bottom + 1, _PAD : WIDTH - _PAD] = _ZONE
    for guide in (30, 70):
        _hline(canvas, _scale(guide, 0, 100, _RSI), _GRID, dash=4)
    _hline(canvas, _RSI[0] - 10, _GRID)
    points = [
        (_PAD + (i + 0.5) * step, _scale(float(r), 0, 100, _RSI))
        for i, r in enumerate(rsi)
        if math.isfinite(r)
    ]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        _line(canvas, x0, y0, x1, y1, _RSI_LINE)

    last_rsi = next((float(r) for r in rsi[::-1] if math.isfinite(r)), None)
    head = f"<b>{html.escape(symbol)}</b> · {n} bars · close {c[-1]:.2f}"
    if last_rsi is not None:
        head += f" · RSI {last_rsi:.0f}"
    return Chart(encode_png(canvas), "\n".join([head, *legend]))


def _level_order(item: tuple[str, float | None]) -> tuple[bool, float, str]:
    name, value = item
    missing = value is None or not math.isfinite(value)
    return (missing, 0.0 if missing or value is None else -value, name)
