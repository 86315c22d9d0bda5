"""A real HTTP receiver for webhook tests: stdlib `ThreadingHTTPServer` on a free loopback port.

It does what the README tells a receiver to do: verify the signature over the
raw body, drop an `Idempotency-Key` it has seen (counting the repeat), and
answer 200. `script` makes it misbehave: a list of `(status, headers)` answers
given before any real handling, one per request, or `fail_until` (monotonic
time) during which every request gets a 500.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from daemon.sinks.webhook import verify


@dataclass
class Received:
    """What reached the receiver, in arrival order."""

    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    """Alert ids accepted (signature good, key not seen before)."""
    repeats: int = 0
    bad_signatures: int = 0
    answered: list[int] = field(default_factory=list)


class Receiver:
    """The server and what it saw; use `receiver(...)` to run one."""

    def __init__(self, secret: bytes | None, delay_s: float = 0.0) -> None:
        self.secret = secret
        self.delay_s = delay_s
        self.script: list[tuple[int, dict[str, str]]] = []
        self.fail_until = 0.0
        self.got = Received()
        self.lock = threading.Lock()
        self.port = 0

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        """The answer to one request (called on the server's thread)."""
        with self.lock:
            self.got.requests.append((path, headers, body))
            if self.script:
                answer = self.script.pop(0)
            elif time.monotonic() < self.fail_until:
                answer = (500, {})
            elif self.secret is not None and not verify(
                self.secret, headers, body, now_s=time.time()
            ):
                self.got.bad_signatures += 1
                answer = (401, {})
            else:
                key = headers.get("Idempotency-Key", "")
                if json.loads(body).get("id") != key:
                    answer = (400, {})  # not the documented contract
                elif key in self.got.ids:
                    self.got.repeats += 1
                    answer = (200, {})
                else:
                    self.got.ids.append(key)
                    answer = (200, {})
            self.got.answered.append(answer[0])
            return answer


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status, extra = receiver.handle(self.path, dict(self.headers.items()), body)
            if receiver.delay_s:
                time.sleep(receiver.delay_s)
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def receiver(secret: bytes | None = None, *, delay_s: float = 0.0) -> Iterator[Receiver]:
    """A running receiver on 127.0.0.1 (its `port`), stopped on exit."""
    recv = Receiver(secret, delay_s)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recv))
    server.daemon_threads = True
    recv.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield recv
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
