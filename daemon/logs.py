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
"""

from __future__ import annotations

import json as jsonlib
import logging
import re
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


def register_secret(value: str | Secret) -> None:
    """Hide `value` in every log line from now on, whenever logging was configured."""
    _REDACTOR.add(value)


class _RedactedRenderer:
    """Runs the renderer, then redacts the finished line (repr'd objects, escapes)."""

    def __init__(self, renderer: Processor, redactor: Redactor) -> None:
        self._renderer = renderer
        self._redactor = redactor

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        line = self._renderer(logger, method_name, event_dict)
        text = line.decode("utf-8") if isinstance(line, bytes) else str(line)
        return self._redactor.redact(text)


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

    `json=None` picks JSON lines unless `stream` is a terminal. `level` is
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
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=tty)

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _REDACTOR,
            _RedactedRenderer(renderer, _REDACTOR),
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


def redact(text: str) -> str:
    """`text` as it would appear in a log line: secrets replaced by `***`."""
    return _REDACTOR.redact(text)
