"""The console sink: alerts as plain text on a stream (stdout by default), for demos and debugging.

The logs go to stderr, so the two stay apart; where both reach the same place (under
systemd with stdout sent to the journal, or `2>&1 | ...`) the human lines would break a
JSON-lines reader, and the sink says so once at start. The systemd unit discards stdout.
"""

from __future__ import annotations

import contextlib
import sys
from types import TracebackType
from typing import Self, TextIO

import structlog

from daemon.logs import shares_json_log_stream
from daemon.sinks.base import SinkUnavailable
from daemon.sinks.render import render_text
from signals.alerts import Alert

_log = structlog.get_logger(__name__)


class ConsoleSink:
    """Prints each alert's `render_text` followed by a blank line.

    With no `stream`, `sys.stdout` is looked up at each send, so redirecting
    stdout later (pytest's capture, a supervisor) is followed. A stream that
    cannot encode the emoji gets them as escapes instead of failing.
    """

    name = "console"

    def __init__(
        self, stream: TextIO | None = None, *, benchmark: str = "SPY", comparator: str = "QQQ"
    ) -> None:
        self._stream = stream
        self._links = (benchmark, comparator)

    def __repr__(self) -> str:
        return "ConsoleSink()"

    async def __aenter__(self) -> Self:
        if shares_json_log_stream(self._target()):
            _log.warning(
                "sink.console_shares_log_stream",
                sink=self.name,
                detail="alerts printed as text land among the JSON log lines; send stdout "
                "elsewhere (the systemd unit has StandardOutput=null) or set "
                "[sinks.console] enabled = false",
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # stdout already gone at shutdown: nothing left to save.
        with contextlib.suppress(OSError, ValueError):
            self._target().flush()

    def _target(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    async def send(self, alert: Alert) -> None:
        """Write the alert; a stream that is closed or broken is unavailable, not a crash."""
        benchmark, comparator = self._links
        text = render_text(alert, benchmark=benchmark, comparator=comparator) + "\n\n"
        stream = self._target()
        try:
            try:
                stream.write(text)
            except UnicodeEncodeError:  # e.g. LANG=C: ASCII stdout
                encoding = stream.encoding or "ascii"
                stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
            stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: I/O on a closed file
            raise SinkUnavailable(self.name, f"cannot write to the console: {exc}") from exc
