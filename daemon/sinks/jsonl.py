"""The JSONL sink: one alert per line (`encode_alert` JSON), appended and fsynced per alert.

Delivery is at-least-once, so after a crash the file may hold an alert twice:
readers dedupe by `id`. A line torn by a crash (no trailing newline) is
closed off when the file is opened again, so the next alert starts a line of
its own; a failed write is cut back off the file before the error is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from daemon.sinks.base import SinkUnavailable
from signals.alerts import Alert, encode_alert


class JsonlSink:
    """Appends alerts to `path`, creating it and its parent directories on enter."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        # One append at a time: the cut-back on failure must not eat another alert's line.
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"JsonlSink(path={str(self.path)!r})"

    async def __aenter__(self) -> Self:
        self._fd = await asyncio.to_thread(self._open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Read-write only to look at the last byte; every write still appends.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                _write_all(fd, b"\n")
                os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        return fd

    async def send(self, alert: Alert) -> None:
        """Append the alert as one JSON line and fsync it."""
        line = encode_alert(alert) + b"\n"
        async with self._lock:
            fd = self._fd
            if fd is None:
                raise SinkUnavailable(self.name, "the file is not open")
            try:
                await asyncio.to_thread(_append, fd, line)
            except OSError as exc:  # disk full, I/O error: may clear up, so try again later
                raise SinkUnavailable(self.name, f"cannot append to {self.path}: {exc}") from exc


def _append(fd: int, line: bytes) -> None:
    size = os.fstat(fd).st_size
    try:
        _write_all(fd, line)
        os.fsync(fd)
    except OSError:
        # No half line left for the retry to append after; if even this fails,
        # the torn line is closed off at the next open.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
