"""JSON logs and the console sink's text stay on separate streams.

Logs go to stderr, the console sink to stdout; the systemd unit discards stdout
(`StandardOutput=null`, `StandardError=journal`), so `journalctl -o cat | jq`
reads only JSON. Where the two do meet (stdout sent to the journal too, `2>&1`),
the console sink says so once at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO, cast

import polars as pl
import pytest
import structlog

from daemon.feeds.replay import ReplayServer, ReplaySettings
from daemon.logs import configure_logging, on_journal, shares_json_log_stream
from daemon.sinks.console import ConsoleSink
from tests.daemon.daemon_config import write_config
from tests.daemon.minute_market import minute_market
from tests.daemon.sinks.test_console_jsonl import make_alert

WARNING = "sink.console_shares_log_stream"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def _pipe() -> tuple[TextIO, TextIO]:
    r, w = os.pipe()
    return _text(os.fdopen(r, "r", encoding="utf-8")), _text(os.fdopen(w, "w", encoding="utf-8"))


def _text(stream: object) -> TextIO:
    return cast(TextIO, stream)


async def _console_once(stream: TextIO) -> None:
    async with ConsoleSink(stream) as sink:
        await sink.send(make_alert(1))


@pytest.mark.usefixtures("restore_logging")
async def test_console_text_on_the_json_log_stream_is_reported_once() -> None:
    reader, writer = _pipe()
    with reader, writer:
        configure_logging(json=True, stream=writer)
        shared = _text(os.fdopen(os.dup(writer.fileno()), "w", encoding="utf-8"))  # like 2>&1
        with shared:
            assert shares_json_log_stream(shared)
            await _console_once(shared)
        writer.close()
        lines = reader.read().splitlines()
    events = [json.loads(line)["event"] for line in lines if line.startswith("{")]
    assert events == [WARNING]
    assert any(not line.startswith("{") for line in lines)  # the alert's own text


@pytest.mark.usefixtures("restore_logging")
async def test_separate_streams_are_quiet() -> None:
    log_reader, log_writer = _pipe()
    out_reader, out_writer = _pipe()
    with log_reader, log_writer, out_reader, out_writer:
        configure_logging(json=True, stream=log_writer)
        assert not shares_json_log_stream(out_writer)
        await _console_once(out_writer)
        log_writer.close()
        out_writer.close()
        assert log_reader.read() == ""
        assert "IWM volume breakout" in out_reader.read()


@pytest.mark.usefixtures("restore_logging")
def test_terminals_devnull_and_human_logs_never_count(tmp_path: Path) -> None:
    with open(os.devnull, "w") as null:
        configure_logging(json=True, stream=null)
        assert not shares_json_log_stream(null)  # StandardOutput=null beside a null log
    path = tmp_path / "both.log"
    with path.open("w") as file:
        configure_logging(json=False, stream=file)
        assert not shares_json_log_stream(file)  # human logs: mixing is what you asked for
        configure_logging(json=True, stream=file)
        assert shares_json_log_stream(file)
    assert not shares_json_log_stream(sys.stdout)  # pytest's capture has no file number


@pytest.mark.usefixtures("restore_logging")
def test_on_the_journal_each_line_carries_its_priority_for_journald_to_strip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, journald = socket.socketpair()  # the journal's stream socket, as systemd hands it over
    with ours, journald, ours.makefile("w", encoding="utf-8") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert on_journal(_text(stream))
        configure_logging(json=True, stream=_text(stream), level="debug")
        log = structlog.get_logger("test")
        log.debug("a.debug")
        log.info("a.info")
        log.warning("a.warning")
        log.error("a.error")
        logging.getLogger("stdlib").critical("from stdlib")
        stream.flush()
        ours.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := journald.recv(65536):
            received += chunk
    lines = received.decode().splitlines()
    assert [line[:4] for line in lines] == ["<7>{", "<6>{", "<4>{", "<3>{", "<2>{"]
    assert [json.loads(line[3:])["event"] for line in lines] == [
        "a.debug",
        "a.info",
        "a.warning",
        "a.error",
        "from stdlib",
    ]


@pytest.mark.usefixtures("restore_logging")
def test_off_the_journal_lines_are_plain_json(monkeypatch: pytest.MonkeyPatch) -> None:
    reader, writer = _pipe()
    with reader, writer:
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # inherited, but not our stream
        assert not on_journal(writer)
        configure_logging(json=True, stream=writer)
        structlog.get_logger("test").warning("a.warning")
        writer.close()
        (line,) = reader.read().splitlines()
    assert json.loads(line)["event"] == "a.warning"
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not on_journal(sys.stderr)


RULES = """
[[rule]]
name = "every_bar"
operator = "greater_than"
timeframe = "1m"
value = "close"
threshold = 0
"""


async def test_the_daemon_run_as_the_unit_runs_it_writes_only_json_to_the_journal(
    tmp_path: Path,
) -> None:
    """`run` with the console sink on, stdout discarded (the unit's `StandardOutput=null`)
    and stderr on a stream socket named by `$JOURNAL_STREAM` (`StandardError=journal`):
    every line is `<N>` and JSON, so after journald strips the prefix `jq` reads it all."""
    df, _ = minute_market(n_sessions=1)
    first = int(df["time"].min())  # type: ignore[arg-type]
    df = df.filter(pl.col("time") < first + 40 * 60)
    ours, journald = socket.socketpair()
    info = os.fstat(ours.fileno())
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
    loop = asyncio.get_running_loop()
    journald.setblocking(False)
    received = bytearray()

    async def drain() -> None:
        while chunk := await loop.sock_recv(journald, 65536):
            received.extend(chunk)

    async with ReplayServer(df, ReplaySettings(speed=0.0)) as server, asyncio.TaskGroup() as tg:
        reader = tg.create_task(drain())
        config = write_config(
            tmp_path,
            feed=f'url = "{server.url}"\nrest_url = "{server.rest_url}"',
            rules=RULES,
            log="info",
        )
        config.write_text(
            config.read_text().replace(
                "[sinks.console]\nenabled = false", "[sinks.console]\nenabled = true"
            )
        )
        with ours:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemon.cli", "run", "--config", str(config),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=ours.fileno(), env=env,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            alerts = tmp_path / "alerts.jsonl"
            while not (alerts.exists() and len(alerts.read_text().splitlines()) >= 10):
                assert time.monotonic() < deadline, received[-2000:].decode()
                await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0, received[-2000:].decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await asyncio.wait_for(reader, 10)
    journald.close()
    lines = received.decode().splitlines()
    assert lines and all(re.match(r"<[0-7]>\{", line) for line in lines), lines[:5]
    messages = [line[3:] for line in lines]  # what `journalctl -o cat` shows
    events = [json.loads(m)["event"] for m in messages]
    assert "alert.sent" in events and WARNING not in events
    jq = shutil.which("jq")
    if jq is not None:  # the recipe of deploy/INSTALL.md, on what the journal keeps
        sent = subprocess.run(
            [jq, "-cR", 'fromjson? | select(.event == "alert.sent")'],
            input="\n".join(messages), capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        assert len(sent.stdout.splitlines()) == events.count("alert.sent")
