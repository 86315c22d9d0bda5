"""Fixtures of the Telegram tests: a local Bot API server, a store, a fake backend, logs,
and a watch on what the event loop reports (tasks destroyed pending, exceptions never retrieved)."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from daemon.logs import configure_logging
from daemon.telegram.subscribers import SubscriberStore
from tests.daemon.telegram.botapi import BotApiServer
from tests.daemon.telegram.kit import TOKEN, FakeBackend


@pytest.fixture
async def api() -> AsyncIterator[BotApiServer]:
    async with BotApiServer(TOKEN) as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SubscriberStore]:
    with SubscriberStore.open(tmp_path / "telegram.sqlite") as s:
        yield s


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


class RawRecords(logging.Handler):
    """Every stdlib record as its own code wrote it, before any redaction."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1])
        self.lines.append(f"{record.levelname} {record.name} {text}")


@pytest.fixture
def logs() -> Iterator[tuple[io.StringIO, RawRecords]]:
    """The daemon's logging at debug into a buffer, plus the raw records; put back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    buffer = io.StringIO()
    configure_logging(json=True, level="debug", stream=buffer)
    # A logger cached now would keep this setup for good and blind later `capture_logs`.
    structlog.configure(cache_logger_on_first_use=False)
    raw = RawRecords()
    root.addHandler(raw)
    yield buffer, raw
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


class LoopNoise:
    """What the event loop's exception handler got: "Task was destroyed but it is pending!",
    "Future exception was never retrieved" and the like."""

    def __init__(self) -> None:
        self.reports: list[str] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.reports.append(f"{context.get('message')} {context.get('exception')!r}")

    def check(self) -> None:
        """Collect garbage (where those reports come from) and fail if there were any."""
        gc.collect()
        assert self.reports == []


@pytest.fixture
async def loop_noise() -> AsyncIterator[LoopNoise]:
    """The running loop's exception reports during the test; none allowed at its end."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    noise = LoopNoise()
    loop.set_exception_handler(noise)
    try:
        yield noise
        await asyncio.sleep(0)
        noise.check()
    finally:
        loop.set_exception_handler(previous)
