"""Logging: JSON lines with timestamp, level and event; no secret ever reaches a line."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
import structlog

from daemon.logs import Redactor, configure_logging, redact, register_secret
from daemon.secrets import Secret

CANARY = "Zq8canary41secretvalue"
BOT_TOKEN = "123456789:AAHfakeFAKEfakeFAKEfakeFAKEfake_-12"
TOKEN_URL = f"https://api.telegram.org/bot{BOT_TOKEN}/sendMessage"


class _Pair(NamedTuple):
    key: str
    size: int


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Afterwards, the root logger, the quieted loggers and structlog are put back."""
    root = logging.getLogger()
    level = root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    for handler in list(root.handlers):
        if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
            root.removeHandler(handler)
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)
    logging.captureWarnings(False)
    structlog.reset_defaults()


@pytest.fixture
def stream(restore_logging: None) -> io.StringIO:
    """JSON logging into a buffer, with the canary registered."""
    buffer = io.StringIO()
    configure_logging(json=True, stream=buffer, secrets=[Secret(CANARY)])
    return buffer


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    text = buffer.getvalue()
    assert CANARY not in text
    assert BOT_TOKEN not in text
    return [json.loads(line) for line in text.splitlines()]


def test_json_lines_carry_timestamp_level_event(stream: io.StringIO) -> None:
    structlog.get_logger("daemon.feed").info("feed.connected", provider="alpaca", lag_ms=12)
    (line,) = _lines(stream)
    assert line["event"] == "feed.connected"
    assert line["level"] == "info"
    assert line["logger"] == "daemon.feed"
    assert (line["provider"], line["lag_ms"]) == ("alpaca", 12)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])


def test_level_filters(stream: io.StringIO) -> None:
    log = structlog.get_logger("daemon.x")
    log.debug("x.hidden")
    logging.getLogger("websockets.client").debug("hidden too")
    log.warning("x.shown")
    assert [line["event"] for line in _lines(stream)] == ["x.shown"]


def test_registered_secret_never_appears_in_fields(stream: io.StringIO) -> None:
    log = structlog.get_logger("daemon.feed")
    log.info(
        "feed.auth",
        key=CANARY,
        message=f"sending key {CANARY} now",
        nested={"auth": {"key": CANARY, "ok": True}, "list": [CANARY, 1, (CANARY,)]},
        pair=_Pair(CANARY, 2),
        symbols=["IWM", "SPY"],
        **{CANARY: "as a key"},
    )
    (line,) = _lines(stream)
    assert line["key"] == "***"
    assert line["message"] == "sending key *** now"
    assert line["nested"] == {"auth": {"key": "***", "ok": True}, "list": ["***", 1, ["***"]]}
    assert line["symbols"] == ["IWM", "SPY"]
    assert line["pair"] == ["***", 2]
    assert line["***"] == "as a key"


def test_objects_whose_repr_leaks_are_redacted(stream: io.StringIO) -> None:
    class Client:
        def __repr__(self) -> str:
            return f"Client(key={CANARY!r})"

    structlog.get_logger().info("feed.client", client=Client(), secret=Secret("not-registered"))
    (line,) = _lines(stream)
    assert line["client"] == "Client(key='***')"
    assert line["secret"] == "Secret('***')"


def test_exception_text_is_redacted(stream: io.StringIO) -> None:
    log = structlog.get_logger("daemon.sinks.telegram")
    try:
        raise ConnectionError(f"POST {TOKEN_URL} failed with key {CANARY}")
    except ConnectionError:
        log.exception("alert.failed", sink="telegram")
    (line,) = _lines(stream)
    assert line["level"] == "error" and line["sink"] == "telegram"
    assert "Traceback" in line["exception"]
    assert "ConnectionError: POST https://api.telegram.org/bot***/sendMessage" in line["exception"]
    assert "failed with key ***" in line["exception"]


def test_stdlib_loggers_are_routed_and_redacted(stream: io.StringIO) -> None:
    logging.getLogger("httpx").warning("HTTP Request: POST %s %s", TOKEN_URL, '"HTTP/1.1 502"')
    logging.getLogger("httpx").info("HTTP Request: GET %s", TOKEN_URL)  # below WARNING: dropped
    logging.getLogger("httpcore.http11").info("send_request_headers.started")
    logging.getLogger("websockets.client").info("auth frame %s", {"key": CANARY})
    logging.getLogger("aiomqtt").info("connect mqtt://ha:%s@broker:1883", "pw1234")
    try:
        raise OSError(f"token {CANARY}")
    except OSError:
        logging.getLogger("apscheduler.executors").exception("Job raised")
    lines = _lines(stream)
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("httpx", "warning"),
        ("websockets.client", "info"),
        ("aiomqtt", "info"),
        ("apscheduler.executors", "error"),
    ]
    assert (
        lines[0]["event"]
        == 'HTTP Request: POST https://api.telegram.org/bot***/sendMessage "HTTP/1.1 502"'
    )
    assert lines[1]["event"] == "auth frame {'key': '***'}"
    assert lines[2]["event"] == "connect mqtt://ha:***@broker:1883"
    assert "OSError: token ***" in lines[3]["exception"]
    assert "timestamp" in lines[0]


def test_secret_registered_after_configure(stream: io.StringIO) -> None:
    late = "LateSecretValue-987"
    register_secret(late)
    register_secret("")  # ignored: would otherwise match everywhere
    structlog.get_logger().info("x.late", value=late, other="kept")
    (line,) = _lines(stream)
    assert (line["value"], line["other"]) == ("***", "kept")


def test_secrets_with_json_escapes(stream: io.StringIO) -> None:
    quoted = 'pa"ss\\word'
    register_secret(quoted)

    class Holder:
        def __repr__(self) -> str:
            return f"Holder({quoted})"

    structlog.get_logger().info("x.quoted", holder=Holder(), plain=quoted)
    assert quoted not in stream.getvalue()
    assert json.dumps(quoted)[1:-1] not in stream.getvalue()
    (line,) = _lines(stream)
    assert (line["holder"], line["plain"]) == ("Holder(***)", "***")


def test_warnings_are_logged_redacted(stream: io.StringIO) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)
        warnings.warn(f"deprecated url {TOKEN_URL}", UserWarning, stacklevel=1)
    (line,) = _lines(stream)
    assert line["logger"] == "py.warnings" and "bot***/sendMessage" in line["event"]


@pytest.mark.usefixtures("restore_logging")
def test_console_renderer_on_a_tty() -> None:
    tty = _Tty()
    configure_logging(stream=tty, secrets=[CANARY])
    structlog.get_logger("daemon.feed").info("feed.connected", key=CANARY, lag_ms=3)
    try:
        raise RuntimeError(CANARY)
    except RuntimeError:
        structlog.get_logger().exception("feed.crashed")
    text = tty.getvalue()
    assert "feed.connected" in text and "lag_ms" in text
    assert "RuntimeError: ***" in text
    assert CANARY not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


@pytest.mark.usefixtures("restore_logging")
def test_json_is_the_default_off_a_tty() -> None:
    buffer = io.StringIO()
    configure_logging(stream=buffer, level="WARNING")
    structlog.get_logger().info("x.hidden")
    structlog.get_logger().error("x.shown")
    assert json.loads(buffer.getvalue())["event"] == "x.shown"


def test_configure_rejects_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging(level="loud", stream=io.StringIO())


def test_redactor_patterns() -> None:
    r = Redactor([Secret("abc123"), "abc123-longer"])
    assert r.redact("x abc123-longer y abc123") == "x *** y ***"
    assert r.redact(f"bot{BOT_TOKEN}/getMe") == "bot***/getMe"
    assert r.redact("mqtts://user:p%40ss@host:8883") == "mqtts://user:***@host:8883"
    assert r.redact("wss://ws.finnhub.io?token=abc&x=1") == "wss://ws.finnhub.io?token=***&x=1"
    assert r.redact("https://api.example/v2?apiKey=k9") == "https://api.example/v2?apiKey=***"
    assert r.redact("12:30:45 IWM 201.35 https://fred.example/csv?id=DGS2") == (
        "12:30:45 IWM 201.35 https://fred.example/csv?id=DGS2"
    )
    register_secret(CANARY)
    assert redact(f"token {CANARY}") == "token ***"
