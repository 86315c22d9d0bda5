"""The sink contract and the errors that tell the outbox what to do next."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from signals.alerts import Alert


class SinkError(Exception):
    """Base of sink errors. Messages never carry secrets."""

    def __init__(self, sink: str, detail: str) -> None:
        super().__init__(f"{sink}: {detail}")
        self.sink = sink
        self.detail = detail


class SinkUnavailable(SinkError):
    """Try again later (network down, broker gone, flood control). `retry_after_s` if the peer said."""

    def __init__(self, sink: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(sink, detail)
        self.retry_after_s = retry_after_s


class SinkAuthFailed(SinkError):
    """The peer refused our credentials. At start-up the daemon stops (exit 3) with this
    line, which names the secret or key to check; later it is retried like an outage."""


class SinkRejected(SinkError):
    """This alert will never go through this sink (bad request, too large): do not retry it."""


class Sender(Protocol):
    """What a delivery loop needs: a name and `send` (see `Sink`)."""

    name: str

    async def send(self, alert: Alert) -> None: ...


class Sink(Protocol):
    """An async context manager that delivers alerts.

    `send` either returns (delivered: the outbox marks it) or raises
    `SinkUnavailable` (the outbox retries with backoff) or `SinkRejected`
    (the outbox gives up on this alert for this sink). It must be idempotent
    by `alert.id` where the transport allows (MQTT consumers dedupe by id).
    """

    name: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def send(self, alert: Alert) -> None: ...
