"""The Apprise sink: one notification service (ntfy, Discord, Slack, e-mail, ...) by URL.

Apprise (https://github.com/caronc/apprise) speaks 100+ services; the daemon
runs one `AppriseSink` per configured URL, so that the outbox retries each
service on its own and one failing service never makes another get an alert
twice. Each sink filters by minimum severity and by symbol, and sends the
alert rendered in the service's own format: HTML where it takes HTML (Apprise
turns it into Markdown for a Markdown service), plain text elsewhere.

An Apprise URL usually carries its service's token or password. The sink
keeps the URL in a `Secret`, registers every part of it that could be secret
with the log redactor, and reports failures by service name and the URL's
privacy form only.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl, unquote, urlsplit

import apprise

from daemon.logs import redact, register_secret
from daemon.secrets import Secret
from daemon.sinks.base import SinkUnavailable
from daemon.sinks.render import render_html, render_text
from signals.alerts import SEVERITIES, Alert

_MIN_SECRET_PART = 4
"""Shorter URL parts (a port, "yes", a topic like "iwm") are not worth redacting."""


def _service(url: str) -> apprise.NotifyBase | None:
    return apprise.Apprise.instantiate(url)


def carries_secret(url: str) -> bool:
    """Whether Apprise would hide part of `url` when printing it (a token, a password).

    Such a URL belongs in the environment or a systemd credential, not in the
    config file. Raises `ValueError` for a URL Apprise does not know.
    """
    service = _service(url)
    if service is None:
        raise ValueError("not a notification URL Apprise knows (check its scheme and form)")
    private: str = service.url(privacy=True)  # type: ignore[no-untyped-call]
    full: str = service.url(privacy=False)  # type: ignore[no-untyped-call]
    return private != full


def secret_parts(url: str) -> list[str]:
    """The pieces of `url` a log line must never show: user, password, path segments
    and query values (the host and short words stay readable)."""
    parts = urlsplit(url)
    pieces = [parts.username or "", parts.password or ""]
    pieces += [unquote(p) for p in parts.path.split("/")]
    pieces += [value for _, value in parse_qsl(parts.query)]
    return [p for p in {*pieces, url} if len(p) >= _MIN_SECRET_PART and p != parts.hostname]


class AppriseSink:
    """Delivers alerts to one Apprise URL.

    `min_severity` drops alerts below it (one of `SEVERITIES`); `symbols`, when
    given, keeps only alerts of those symbols. A dropped alert counts as
    delivered: there is nothing to retry. `timeout_s` bounds one notification
    (Apprise's own connect and read timeouts apply inside it).
    """

    def __init__(
        self,
        name: str,
        url: Secret,
        *,
        min_severity: str = "info",
        symbols: Sequence[str] = (),
        timeout_s: float = 30.0,
        benchmark: str = "SPY",
        comparator: str = "QQQ",
    ) -> None:
        if min_severity not in SEVERITIES:
            raise ValueError(f"min_severity must be one of {SEVERITIES}, got {min_severity!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        for piece in secret_parts(url.reveal()):
            register_secret(piece)
        service = _service(url.reveal())
        if service is None:
            raise ValueError(f"apprise {name}: not a notification URL Apprise knows")
        self.name = f"apprise.{name}"
        self.service = str(service.service_name)
        """The service's name (e.g. "ntfy", "Discord"), safe to show."""
        self._url = url
        self._apprise = apprise.Apprise()
        self._apprise.add(service)
        # The service's own first choice: HTML for e-mail, text for ntfy and JSON.
        self._as_html = _formats(service)[0] == apprise.NotifyFormat.HTML
        self._min_rank = SEVERITIES.index(min_severity)
        self._symbols = frozenset(symbols)
        self._timeout_s = timeout_s
        self._names = (benchmark, comparator)

    def __repr__(self) -> str:
        return f"AppriseSink(name={self.name!r}, service={self.service!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def wants(self, alert: Alert) -> bool:
        """Whether this service gets `alert` (severity and symbol filters)."""
        if SEVERITIES.index(alert.severity) < self._min_rank:
            return False
        return not self._symbols or alert.symbol in self._symbols

    def _message(self, alert: Alert) -> tuple[str, str, apprise.NotifyFormat]:
        """(title, body, format): the renderer's first line is the title."""
        benchmark, comparator = self._names
        if self._as_html:
            text = render_html(alert, benchmark=benchmark, comparator=comparator)
            fmt = apprise.NotifyFormat.HTML
        else:
            text = render_text(alert, benchmark=benchmark, comparator=comparator)
            fmt = apprise.NotifyFormat.TEXT
        title, _, body = text.partition("\n")
        return title, body.strip() or title, fmt

    async def send(self, alert: Alert) -> None:
        """Notify the service; `SinkUnavailable` when it did not take the alert."""
        if not self.wants(alert):
            return
        title, body, fmt = self._message(alert)
        try:
            result = await self._apprise.async_notify(
                body=body, title=title, body_format=fmt, timeout=self._timeout_s
            )
        except (TimeoutError, OSError) as exc:
            raise SinkUnavailable(self.name, f"{self.service}: {type(exc).__name__}") from None
        if result:
            return
        raise SinkUnavailable(self.name, f"{self.service}: {self._why(result)}")

    def _why(self, result: apprise.AppriseResult) -> str:
        """The last thing Apprise said went wrong, without a secret."""
        if result.status == apprise.AppriseResultStatus.TIMEOUT:
            return f"no answer within {self._timeout_s:g} s"
        problems = [e for e in result.logs() if e.level in ("WARNING", "ERROR", "CRITICAL")]
        said = str(problems[-1].message) if problems else str(result.status)
        return redact(said)[:300]


def _formats(service: apprise.NotifyBase) -> tuple[apprise.NotifyFormat, ...]:
    fmt = service.notify_format
    return tuple(fmt) if isinstance(fmt, tuple) else (fmt,)
