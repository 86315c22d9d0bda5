"""The PNG writer and the /chart picture, durations and reply formatting."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import polars as pl
import pytest

from daemon.telegram.chart import encode_png, render_chart
from daemon.telegram.commands import parse_duration
from daemon.telegram.replies import format_levels, number
from tests.daemon.telegram.kit import FakeBackend


def decode_png(data: bytes) -> np.ndarray:
    """Our own PNGs back to an (h, w, 3) array: RGB, 8 bit, filter 0 on every row."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(tag + body) & 0xFFFFFFFF == crc, tag
        chunks[tag] = body
        pos += 12 + length
    width, height, depth, color, _, _, _ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, color) == (8, 2)
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(height, -1)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def test_png_round_trip() -> None:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    assert (decode_png(encode_png(image)) == image).all()
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), dtype=np.uint8))


def test_chart_draws_candles_levels_and_rsi() -> None:
    backend = FakeBackend()
    chart = render_chart("IWM", backend.bars("IWM", 120), backend.levels("IWM"))
    assert chart is not None
    image = decode_png(chart.png)
    assert image.shape == (480, 800, 3)
    colours = {tuple(int(v) for v in px) for px in image.reshape(-1, 3)}
    assert {(38, 166, 91), (220, 68, 55), (66, 133, 244), (230, 230, 230)} <= colours
    assert "\N{LARGE BLUE SQUARE} donchian_high20 200.90" in chart.caption
    assert "donchian_low20 150.00 (off chart)" in chart.caption
    assert "fib_786 n/a (off chart)" in chart.caption


def test_chart_uses_a_given_rsi_and_needs_bars() -> None:
    bars = pl.DataFrame(
        {"open": [1.0, 2.0], "high": [2.0, 3.0], "low": [0.5, 1.5], "close": [1.5, 2.5]}
    )
    chart = render_chart("X", bars.with_columns(rsi14=pl.Series([None, 61.4])), {})
    assert chart is not None and chart.caption.endswith("RSI 61")
    assert render_chart("X", bars.head(0), {}) is None


def test_durations() -> None:
    assert [parse_duration(t) for t in ("30m", "2h", "1d", "1h30m", " 2H ")] == [
        1800,
        7200,
        86400,
        5400,
        7200,
    ]
    for bad in ("", "0m", "31d", "5x", "h", "1h 30m", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_numbers_and_levels() -> None:
    assert [number(v) for v in (None, float("nan"), 12345.6, 201.349, 0.0123)] == [
        "\N{EM DASH}",
        "\N{EM DASH}",
        "12,346",
        "201.35",
        "0.0123",
    ]
    assert format_levels("IWM", {}, None) == "No levels for IWM yet."
