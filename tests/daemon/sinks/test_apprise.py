"""The Apprise sink against real local servers: HTTP targets (json://, form://), a server
speaking ntfy's publish API (ntfy://), and e-mail through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import email.policy
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from daemon.logs import configure_logging
from daemon.secrets import Secret
from daemon.sinks.apprise_sink import AppriseSink, carries_secret
from daemon.sinks.base import SinkUnavailable
from signals.alerts import Alert
from tests.daemon.sinks.mosquitto import free_port
from tests.daemon.test_delivery import make_alert
from tests.daemon.test_logs import restore_logging

__all__ = ["restore_logging"]  # a fixture, used by name


@dataclass
class Http:
    """What a local HTTP server received; `statuses` scripts its next answers (else 200)."""

    port: int = 0
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    ntfy: bool = False
    """Answer as ntfy's publish API does (a JSON message event)."""


@contextmanager
def http_server(*, ntfy: bool = False) -> Iterator[Http]:
    got = Http(ntfy=ntfy)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                got.requests.append((self.command, self.path, dict(self.headers.items()), body))
                status = got.statuses.pop(0) if got.statuses else 200
            reply = b""
            if got.ntfy and status == 200:
                topic = self.path.strip("/")
                reply = json.dumps(
                    {"id": "sPs71M8A2T", "time": 1, "event": "message", "topic": topic}
                ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_POST = do_PUT = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    got.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _strong(n: int = 0, symbol: str = "IWM") -> Alert:
    alert = make_alert(n)
    return Alert(
        **{
            **{f: getattr(alert, f) for f in alert.__struct_fields__},
            "severity": "strong",
            "symbol": symbol,
        }
    )


async def test_a_json_target_gets_the_alert_rendered() -> None:
    alert = _strong()
    with http_server() as http:
        async with AppriseSink("hook", Secret(f"json://127.0.0.1:{http.port}/iwm")) as sink:
            await sink.send(alert)
    ((method, path, _, body),) = http.requests
    document = json.loads(body)
    assert (method, path) == ("POST", "/iwm")
    assert document["title"] == alert.title or alert.title in document["title"]
    assert "rule volume_breakout" in document["message"]


async def test_a_form_target_gets_the_alert_as_form_fields() -> None:
    alert = _strong()
    with http_server() as http:
        async with AppriseSink("form", Secret(f"form://127.0.0.1:{http.port}/in")) as sink:
            await sink.send(alert)
    ((_, path, headers, body),) = http.requests
    fields = parse_qs(body.decode())
    assert path == "/in" and headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert alert.title in fields["title"][0] and "volume_breakout" in fields["message"][0]


async def test_ntfy_publish_api_with_a_token() -> None:
    alert = _strong()
    with http_server(ntfy=True) as http:
        url = Secret(f"ntfy://tk_localtoken123@127.0.0.1:{http.port}/iwm-alerts")
        async with AppriseSink("phone", url) as sink:
            assert sink.service == "ntfy"
            await sink.send(alert)
    ((method, path, headers, body),) = http.requests
    assert method in ("POST", "PUT")
    published = json.loads(body) if body.startswith(b"{") else {"message": body.decode()}
    text = json.dumps(published) + json.dumps(headers)
    assert "iwm-alerts" in path + text  # the topic
    assert headers["Authorization"] == "Bearer tk_localtoken123"
    assert "volume_breakout" in text


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"


async def test_e_mail_through_a_real_smtp_server() -> None:
    alert = _strong()
    mailbox = _Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        url = f"mailto://127.0.0.1:{port}?from=iwm-alerts@example.com&to=trader@example.com"
        async with AppriseSink("mail", Secret(url)) as sink:
            await sink.send(alert)
    finally:
        controller.stop()
    (message,) = mailbox.messages
    assert message["To"] == "trader@example.com"
    assert alert.title in str(message["Subject"])
    part = message.get_body(preferencelist=("html", "plain"))
    assert part is not None and "volume_breakout" in part.get_content()


async def test_severity_and_symbol_filters() -> None:
    info = make_alert(0)  # severity info
    strong_iwm, strong_spy = _strong(1), _strong(2, symbol="SPY")
    with http_server() as http:
        url = Secret(f"json://127.0.0.1:{http.port}/x")
        async with AppriseSink("f", url, min_severity="notable", symbols=["IWM"]) as sink:
            for alert in (info, strong_iwm, strong_spy):
                await sink.send(alert)
    assert len(http.requests) == 1
    assert strong_iwm.title in json.loads(http.requests[0][3])["title"]


async def test_a_failing_service_means_later_and_no_secret_is_shown(
    restore_logging: None,
) -> None:
    """Apprise's own debug lines (stdlib logging, which mention the URL) go through the
    daemon's redacting handler like everything else."""
    canary = "tk_CANARY81f2e0c4"
    buffer = io.StringIO()
    configure_logging(json=True, level="debug", stream=buffer)
    with structlog.testing.capture_logs() as logs, http_server(ntfy=True) as http:
        http.statuses = [500, 503]
        url = Secret(f"ntfy://{canary}@127.0.0.1:{http.port}/topic-{canary}")
        errors: list[str] = []
        async with AppriseSink("phone", url, timeout_s=10) as sink:
            for _ in range(2):
                with pytest.raises(SinkUnavailable) as later:
                    await sink.send(_strong())
                errors.append(f"{later.value!s} {later.value!r} {later.value.__cause__!r}")
            await sink.send(_strong())  # the service is back
        errors.append(repr(sink))
    assert len(http.requests) == 3  # both faults happened, then the delivery
    assert http.requests[0][2]["Authorization"] == f"Bearer {canary}"  # it was sent, though
    assert "ntfy" in errors[0] and "500" in errors[0]
    assert canary not in " ".join(errors) + repr(logs)
    text = buffer.getvalue()
    assert "ntfy" in text.lower()  # Apprise did log about this service
    assert canary not in text


async def test_a_service_that_is_down_means_later() -> None:
    port = free_port()
    async with AppriseSink("x", Secret(f"json://127.0.0.1:{port}/x"), timeout_s=10) as sink:
        with pytest.raises(SinkUnavailable, match="JSON"):
            await sink.send(_strong())


def test_which_urls_carry_a_secret() -> None:
    assert carries_secret("ntfys://tk_abcdef@ntfy.sh/topic")
    assert carries_secret("discord://1234567/abcdefTOKEN")
    assert carries_secret("json://user:password@127.0.0.1/x")
    assert not carries_secret("json://127.0.0.1:8080/hook")
    assert not carries_secret("ntfy://ntfy.sh/my-topic")
    with pytest.raises(ValueError, match="Apprise knows"):
        carries_secret("nosuchscheme://x")
