"""The webhook sink: each alert POSTed as JSON, signed, with its id as the idempotency key.

The body is the alert's JSON document, the same as a line of `alerts.jsonl`.
Headers a receiver can rely on:

- `Idempotency-Key`: the alert id. The outbox may send an alert again after a
  timeout or a restart mid-delivery; a receiver drops a key it has seen.
- `X-Iwm-Alerts-Timestamp`: the send time, Unix seconds.
- `X-Iwm-Alerts-Signature`: `v1=` and the hex HMAC-SHA256, keyed by the shared
  secret, of `<timestamp>.<body>` (only with a secret). `verify` checks it.

What the answer means for the outbox: 2xx delivered; 408, 425, 429 and 5xx
(and a connection error or timeout) try again later, after the server's
`Retry-After` when it says; any other 4xx will never succeed, so the alert is
rejected for this sink (counted and logged by the outbox), never retried.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import httpx

from daemon.retry import parse_retry_after
from daemon.secrets import Secret
from daemon.sinks.base import SinkRejected, SinkUnavailable
from signals.alerts import Alert, encode_alert

SIGNATURE_HEADER = "X-Iwm-Alerts-Signature"
TIMESTAMP_HEADER = "X-Iwm-Alerts-Timestamp"
SIGNATURE_VERSION = "v1"
RETRYABLE_STATUS = frozenset({408, 425, 429})
"""4xx answers that mean "later", not "never"."""
_RESERVED = frozenset(
    h.lower() for h in ("content-type", "idempotency-key", SIGNATURE_HEADER, TIMESTAMP_HEADER)
)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now_s: float,
    tolerance_s: float = 300.0,
) -> bool:
    """Whether a received webhook is ours and fresh: the recipe a receiver follows.

    Recompute the HMAC over the raw body as received (before any JSON parsing),
    compare in constant time, and refuse a timestamp more than `tolerance_s`
    from the receiver's clock, so a captured request cannot be replayed later.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        timestamp = int(lowered[TIMESTAMP_HEADER.lower()])
        given = lowered[SIGNATURE_HEADER.lower()]
    except (KeyError, ValueError):
        return False
    if abs(now_s - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(given, sign(secret, timestamp, body))


def _safe_url(url: str) -> str:
    """`scheme://host[:port]` of `url`: paths and queries often carry tokens."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url must not carry credentials: use headers from the environment")
    return f"{parts.scheme}://{parts.netloc}"


class WebhookSink:
    """POSTs alerts to `url` (see the module docstring for the contract).

    `secret` signs each request; `headers` are sent as they are (values may be
    `Secret`s, e.g. an `Authorization` token from the environment). Neither the
    URL's path or query, nor a secret, appears in a log line or an exception.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: Secret | None = None,
        headers: Mapping[str, str | Secret] | None = None,
        timeout_s: float = 10.0,
        name: str = "webhook",
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._where = _safe_url(url)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        extra = dict(headers or {})
        clash = sorted(k for k in extra if k.lower() in _RESERVED)
        if clash:
            raise ValueError(f"headers may not set {', '.join(clash)}: the sink sets them")
        self.name = name
        self._url = Secret(url)  # the path may hold a token: never printed
        self._secret = secret
        self._headers = extra
        self._timeout_s = timeout_s
        self._transport = transport
        self._clock = clock
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r}, to={self._where!r})"

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(
            timeout=self._timeout_s, transport=self._transport, follow_redirects=False
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _request_headers(self, alert: Alert, body: bytes, timestamp: int) -> dict[str, str]:
        headers = {k: v.reveal() if isinstance(v, Secret) else v for k, v in self._headers.items()}
        headers.update(
            {
                "Content-Type": "application/json",
                "Idempotency-Key": alert.id,
                TIMESTAMP_HEADER: str(timestamp),
            }
        )
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret.reveal().encode(), timestamp, body)
        return headers

    async def send(self, alert: Alert) -> None:
        """POST one alert; returns when the receiver answered 2xx."""
        if self._client is None:
            raise SinkUnavailable(self.name, "not started")
        body = encode_alert(alert)
        timestamp = int(self._clock())
        try:
            response = await self._client.post(
                self._url.reveal(),
                content=body,
                headers=self._request_headers(alert, body, timestamp),
            )
        except httpx.TimeoutException:
            raise SinkUnavailable(self.name, f"{self._where} did not answer in time") from None
        except httpx.TransportError as exc:
            # The exception's text may quote the URL: only its class is kept.
            raise SinkUnavailable(
                self.name, f"{self._where} unreachable ({type(exc).__name__})"
            ) from None
        if response.is_success:
            return
        status = response.status_code
        detail = f"{self._where} answered {status} for alert {alert.id}"
        if response.is_server_error or status in RETRYABLE_STATUS:
            wait = parse_retry_after(response.headers.get("Retry-After"), self._clock())
            raise SinkUnavailable(self.name, detail, retry_after_s=wait)
        raise SinkRejected(self.name, f"{detail}: not retried (a 4xx will not change)")
