"""Logging: structlog everywhere, JSON lines in production, secrets redacted.

`configure_logging` takes over the root logger: structlog events and stdlib
records (httpx, websockets, aiomqtt, telegram, apscheduler...) all go through
one `ProcessorFormatter`, so one redactor sees every line. The redactor
replaces registered secret values, Telegram bot-token-shaped strings, URL
passwords and secret-named query parameters with `***`: first in every field
(nested dicts and lists, exception text), then once more in the rendered line,
which catches values that only appear in a `repr`.

Event names are dotted verbs (`feed.connected`, `alert.sent`), with units in
field names (`delay_s`, `lag_ms`).

Logs go to stderr; the console sink prints alerts to stdout. A reader of the
JSON lines (`journalctl -o cat | jq`) needs the two apart: the systemd unit
discards stdout, and `shares_json_log_stream` lets the console sink warn when
both end up in the same pipe, socket or file. On the journal's stream
(`$JOURNAL_STREAM`, sd-daemon(3)) each line starts with its syslog priority,
`<4>` for a warning: journald files the line under that priority and strips the
prefix, so `journalctl -p warning` works and `-o cat` still shows plain JSON.
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import re
import stat
import sys
from collections.abc import Iterable
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from daemon.secrets import TELEGRAM_TOKEN_SHAPE, Secret

REDACTED = "***"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# sd-daemon(3) priorities, as `<N>` line prefixes for the journal.
_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}

# httpx logs every request URL at INFO, and a Telegram Bot API URL carries the
# bot token: keep them quiet even before redaction.
_QUIET_LOGGERS = ("httpx", "httpcore")

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^/\s@]+@")
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&](?:token|api_?key|key|secret|password|access_token)=)[^&\s\"'#]+",
    re.IGNORECASE,
)
# Nesting deeper than this is rendered through repr and redacted as text.
_MAX_DEPTH = 8


class Redactor:
    """A structlog processor that replaces secrets in every field with `***`.

    Register the values to hide with `add`; strings shaped like Telegram bot
    tokens, URL passwords and `?token=`-style query parameters are hidden
    without registration.
    """

    def __init__(self, secrets: Iterable[str | Secret] = ()) -> None:
        self._values: set[str] = set()
        self._known: re.Pattern[str] | None = None
        for value in secrets:
            self.add(value)

    def add(self, value: str | Secret) -> None:
        """Hide `value` (and its JSON- and repr-escaped forms) from now on. Empty values are ignored."""
        text = value.reveal() if isinstance(value, Secret) else value
        if not text:
            return
        # A renderer may escape quotes or backslashes; match what it writes too.
        self._values |= {text, jsonlib.dumps(text)[1:-1], repr(text)[1:-1]}
        # Longest first, so a secret that contains another is hidden whole.
        alternatives = sorted(self._values, key=len, reverse=True)
        self._known = re.compile("|".join(re.escape(v) for v in alternatives))

    def redact(self, text: str) -> str:
        """`text` with every secret replaced by `***`."""
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        text = TELEGRAM_TOKEN_SHAPE.sub(REDACTED, text)
        text = _URL_PASSWORD.sub(rf"\g<head>:{REDACTED}@", text)
        return _QUERY_SECRET.sub(rf"\g<head>{REDACTED}", text)

    def _value(self, value: object, depth: int) -> object:
        if isinstance(value, str):
            return self.redact(value)
        if value is None or isinstance(value, bool | int | float | Secret):
            return value
        if depth < _MAX_DEPTH:
            if isinstance(value, dict):
                return {
                    self._value(k, depth + 1): self._value(v, depth + 1) for k, v in value.items()
                }
            if isinstance(value, list | tuple):
                # Plain list or tuple: a NamedTuple's constructor takes fields, not an iterable.
                items = [self._value(v, depth + 1) for v in value]
                return items if isinstance(value, list) else tuple(items)
        # Anything else renders through its repr: replace it only when that leaks.
        text = repr(value)
        clean = self.redact(text)
        return value if clean == text else clean

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        for key, value in event_dict.items():
            event_dict[key] = self._value(value, 0)
        return event_dict


_REDACTOR = Redactor()


class _Output:
    """Where the configured logging writes."""

    json_stream: TextIO | None = None
    """The stream of the JSON log lines (None: not configured, or not as JSON)."""


_OUTPUT = _Output()


def register_secret(value: str | Secret) -> None:
    """Hide `value` in every log line from now on, whenever logging was configured."""
    _REDACTOR.add(value)


class _RedactedRenderer:
    """Runs the renderer, then redacts the finished line (repr'd objects, escapes); on the
    journal, prefixes the line with its priority (`<4>`)."""

    def __init__(self, renderer: Processor, redactor: Redactor, *, journal: bool) -> None:
        self._renderer = renderer
        self._redactor = redactor
        self._journal = journal

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        level = event_dict.get("level")
        line = self._renderer(logger, method_name, event_dict)
        text = line.decode("utf-8") if isinstance(line, bytes) else str(line)
        text = self._redactor.redact(text)
        if self._journal:
            text = f"<{_PRIORITIES.get(str(level), 6)}>{text}"
        return text


def _shared_processors() -> list[Processor]:
    """What every event gets, from structlog or from stdlib logging."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        # Exceptions become text here so the redactor sees the traceback.
        structlog.processors.format_exc_info,
    ]


def configure_logging(
    json: bool | None = None,
    level: str = "info",
    *,
    secrets: Iterable[str | Secret] = (),
    stream: TextIO | None = None,
) -> None:
    """Send structlog and stdlib logging to `stream` (default stderr), redacted.

    `json=None` picks JSON lines unless `stream` is a terminal. On the journal's
    stream each line starts with its priority (`<4>`), which journald strips. `level` is
    debug, info, warning, error or critical. `secrets` are registered with the
    redactor, like `register_secret`. Replaces every root handler: one left
    behind would print unredacted lines.
    """
    levelno = _LEVELS.get(level.lower())
    if levelno is None:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(_LEVELS)}")
    for value in secrets:
        register_secret(value)
    stream = sys.stderr if stream is None else stream
    tty = stream.isatty()
    renderer: Processor
    if json if json is not None else not tty:
        renderer = structlog.processors.JSONRenderer()
        _OUTPUT.json_stream = stream
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
        _OUTPUT.json_stream = None

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _REDACTOR,
            _RedactedRenderer(renderer, _REDACTOR, journal=on_journal(stream)),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(levelno, logging.WARNING))
    logging.captureWarnings(True)

    # The structlog chain is the same in every mode (rendering lives in the
    # formatter), so caching bound loggers cannot pin an old configuration.
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def on_journal(stream: TextIO) -> bool:
    """Whether `stream` is systemd's journal stream: `$JOURNAL_STREAM` names its device
    and inode (sd-daemon(3)); a child that inherited the variable but not the stream is not."""
    wanted = os.environ.get("JOURNAL_STREAM", "")
    ours = _file_id(stream)
    return bool(wanted) and ours is not None and wanted == f"{ours[0]}:{ours[1]}"


def shares_json_log_stream(stream: TextIO) -> bool:
    """Whether text written to `stream` lands among the JSON log lines: the same pipe,
    socket (the journal's) or file. Terminals and /dev/null never count."""
    logs = _OUTPUT.json_stream
    if logs is None:
        return False
    ours = _file_id(stream)
    return ours is not None and ours == _file_id(logs)


def _file_id(stream: TextIO) -> tuple[int, int] | None:
    """(device, inode) of a pipe, socket or regular file behind `stream`, else None."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return None
    if not (
        stat.S_ISFIFO(info.st_mode) or stat.S_ISSOCK(info.st_mode) or stat.S_ISREG(info.st_mode)
    ):
        return None
    return info.st_dev, info.st_ino


def redact(text: str) -> str:
    """`text` as it would appear in a log line: secrets replaced by `***`."""
    return _REDACTOR.redact(text)
