"""The console and JSONL sinks: what they write, and JSONL lines decoding back to the same alerts."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.sinks.base import Sink, SinkUnavailable
from daemon.sinks.console import ConsoleSink
from daemon.sinks.jsonl import JsonlSink
from daemon.sinks.render import render_text
from signals.alerts import Alert, alert_id, decode_alert


def make_alert(
    n: int, title: str = "IWM volume breakout: 3.1\N{MULTIPLICATION SIGN} relative volume"
) -> Alert:
    bar = 1_750_000_000 + 60 * n
    return Alert(
        id=alert_id("volume_breakout", "IWM", "1m", bar),
        rule="volume_breakout",
        symbol="IWM",
        timeframe="1m",
        bar_time=bar,
        time=bar + 60,
        severity="strong",
        title=title,
        values={"close": 201.35, "level": 200.9, "level_name": "20-day high", "rsi14": None},
        score=74.0,
        label="strong bullish",
        breakdown={"rsi": {"raw": 58.0, "sub": 48.0, "weight": 0.125}},
    )


def test_both_are_sinks() -> None:
    sinks: list[Sink] = [ConsoleSink(), JsonlSink("unused.jsonl")]  # checked by mypy
    assert [s.name for s in sinks] == ["console", "jsonl"]


# -- console ---------------------------------------------------------------------------------


async def test_console_prints_the_plain_text_of_each_alert() -> None:
    stream = io.StringIO()
    alerts = [make_alert(1), make_alert(2, title="IWM <b>&amp; more")]
    async with ConsoleSink(stream) as sink:
        for alert in alerts:
            await sink.send(alert)
    assert stream.getvalue() == "".join(render_text(a) + "\n\n" for a in alerts)
    assert "IWM <b>&amp; more" in stream.getvalue()  # plain text: nothing escaped


async def test_console_defaults_to_stdout_at_send_time(capsys: pytest.CaptureFixture[str]) -> None:
    sink = ConsoleSink(benchmark="IWB")
    async with sink:
        await sink.send(make_alert(1))
    assert capsys.readouterr().out == render_text(make_alert(1), benchmark="IWB") + "\n\n"


async def test_console_survives_an_ascii_stream_and_reports_a_closed_one() -> None:
    raw = io.BytesIO()
    ascii_stream = io.TextIOWrapper(raw, encoding="ascii")
    async with ConsoleSink(ascii_stream) as sink:
        await sink.send(make_alert(1))
    assert b"\\U0001f680 IWM volume breakout: 3.1\\xd7 relative volume" in raw.getvalue()

    closed = io.StringIO()
    closed.close()
    with pytest.raises(SinkUnavailable, match="console"):
        await ConsoleSink(closed).send(make_alert(1))


# -- jsonl -----------------------------------------------------------------------------------


async def test_jsonl_lines_decode_back_to_the_same_alerts(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "alerts.jsonl"
    sink = JsonlSink(path)
    assert not path.parent.exists()  # no I/O in the constructor
    alerts = [make_alert(n) for n in range(3)]
    async with sink:
        assert path.parent.is_dir()
        for alert in alerts[:2]:
            await sink.send(alert)
    async with JsonlSink(path) as sink:  # reopening appends
        await sink.send(alerts[2])
    lines = path.read_bytes().splitlines()
    assert [decode_alert(line) for line in lines] == alerts
    assert path.read_bytes().endswith(b"\n")


async def test_jsonl_fsyncs_every_alert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync: Callable[[int], None] = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    async with JsonlSink(tmp_path / "a.jsonl") as sink:
        monkeypatch.setattr(os, "fsync", counting_fsync)
        for n in range(3):
            await sink.send(make_alert(n))
    assert len(synced) == 3


async def test_jsonl_closes_off_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    path.write_bytes(b'{"id": "torn by a cra')  # a crash mid-line, long ago
    async with JsonlSink(path) as sink:
        await sink.send(make_alert(1))
    torn, good = path.read_bytes().splitlines()
    assert torn == b'{"id": "torn by a cra'
    assert decode_alert(good) == make_alert(1)


async def test_jsonl_unavailable_when_not_open_or_the_disk_is_full(tmp_path: Path) -> None:
    with pytest.raises(SinkUnavailable, match="not open"):
        await JsonlSink(tmp_path / "a.jsonl").send(make_alert(1))
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    async with JsonlSink("/dev/full") as sink:
        with pytest.raises(SinkUnavailable, match="cannot append"):
            await sink.send(make_alert(1))
