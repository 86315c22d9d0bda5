"""The webhook sink against a real HTTP receiver on loopback (stdlib server, its own thread)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from pathlib import Path

import pytest
import structlog

from daemon.delivery import DeliveryLoop, DeliveryOptions
from daemon.outbox import Outbox
from daemon.secrets import Secret
from daemon.sinks.base import SinkRejected, SinkUnavailable
from daemon.sinks.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSink, sign, verify
from signals.alerts import encode_alert
from tests.daemon.sinks.mosquitto import free_port
from tests.daemon.sinks.webhook_receiver import receiver
from tests.daemon.test_delivery import make_alert

SECRET = "whsec-test-secret"


def _sink(port: int, **kwargs: object) -> WebhookSink:
    options: dict[str, object] = {"secret": Secret(SECRET), "timeout_s": 2.0}
    return WebhookSink(f"http://127.0.0.1:{port}/hooks/iwm", **(options | kwargs))  # type: ignore[arg-type]


async def test_an_alert_arrives_signed_with_its_id_as_the_idempotency_key() -> None:
    alert = make_alert(0)
    with receiver(SECRET.encode()) as recv:
        async with _sink(recv.port, headers={"X-Team": "small-caps"}) as sink:
            await sink.send(alert)
    ((path, headers, body),) = recv.got.requests
    assert path == "/hooks/iwm"
    assert body == encode_alert(alert)  # the alerts.jsonl document
    assert json.loads(body)["id"] == alert.id
    assert headers["Idempotency-Key"] == alert.id
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Team"] == "small-caps"
    assert headers[SIGNATURE_HEADER] == sign(SECRET.encode(), int(headers[TIMESTAMP_HEADER]), body)
    assert recv.got.ids == [alert.id] and recv.got.bad_signatures == 0


def test_verify_refuses_a_tampered_body_a_wrong_secret_and_a_stale_timestamp() -> None:
    body, now = b'{"id":"x"}', 1_800_000_000
    headers = {TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: sign(b"k", now, body)}
    assert verify(b"k", headers, body, now_s=now + 10)
    assert not verify(b"k", headers, body + b" ", now_s=now)
    assert not verify(b"other", headers, body, now_s=now)
    assert not verify(b"k", headers, body, now_s=now + 301)  # a replay, five minutes later
    assert not verify(b"k", {SIGNATURE_HEADER: headers[SIGNATURE_HEADER]}, body, now_s=now)
    lowered = {k.lower(): v for k, v in headers.items()}  # header names are case-insensitive
    assert verify(b"k", lowered, body, now_s=now)


@pytest.mark.parametrize(
    ("status", "headers", "wait_s"),
    [
        (500, {}, None),
        (502, {}, None),
        (503, {"Retry-After": "7"}, 7.0),
        (429, {"Retry-After": "30"}, 30.0),
        (408, {}, None),
    ],
)
async def test_5xx_429_and_408_mean_later(
    status: int, headers: dict[str, str], wait_s: float | None
) -> None:
    with receiver(SECRET.encode()) as recv:
        recv.script = [(status, headers)]
        async with _sink(recv.port) as sink:
            with pytest.raises(SinkUnavailable) as later:
                await sink.send(make_alert(0))
            await sink.send(make_alert(0))  # the receiver is fine again
    assert recv.got.answered == [status, 200]  # the fault really happened, once
    assert later.value.retry_after_s == wait_s
    assert f"answered {status}" in str(later.value)


async def test_retry_after_as_an_http_date() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    with receiver(SECRET.encode()) as recv:
        recv.script = [(429, {"Retry-After": when})]
        async with _sink(recv.port) as sink:
            with pytest.raises(SinkUnavailable) as later:
                await sink.send(make_alert(0))
    assert later.value.retry_after_s is not None and 115 < later.value.retry_after_s <= 121


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422, 301])
async def test_other_answers_are_never_retried(status: int) -> None:
    with receiver(SECRET.encode()) as recv:
        recv.script = [(status, {})]
        async with _sink(recv.port) as sink:
            with pytest.raises(SinkRejected) as never:
                await sink.send(make_alert(0))
    assert recv.got.answered == [status]
    assert f"answered {status}" in str(never.value) and "not retried" in str(never.value)


async def test_a_receiver_that_is_down_or_slow_means_later() -> None:
    port = free_port()  # nobody listens there
    async with _sink(port) as sink:
        with pytest.raises(SinkUnavailable) as down:
            await sink.send(make_alert(0))
    assert "unreachable (ConnectError)" in str(down.value)
    with receiver(SECRET.encode(), delay_s=1.5) as recv:
        async with _sink(recv.port, timeout_s=0.3) as sink:
            with pytest.raises(SinkUnavailable) as slow:
                await sink.send(make_alert(0))
    assert "did not answer in time" in str(slow.value)
    assert len(recv.got.requests) == 1  # it did reach the receiver, which was too slow


async def test_canary_secrets_stay_out_of_errors_logs_and_repr() -> None:
    canaries = ("CANARY-PATH-7f3a", "CANARY-SIGN-91bc", "CANARY-AUTH-2d4e")
    url_token, secret, token = canaries
    errors: list[str] = []
    with structlog.testing.capture_logs() as logs, receiver(secret.encode()) as recv:
        sink = WebhookSink(
            f"http://127.0.0.1:{recv.port}/hooks/{url_token}?key={url_token}",
            secret=Secret(secret),
            headers={"Authorization": Secret(f"Bearer {token}")},
        )
        recv.script = [(500, {}), (400, {})]
        async with sink:
            for _ in range(2):
                try:
                    await sink.send(make_alert(0))
                except (SinkUnavailable, SinkRejected) as exc:
                    errors.append(f"{exc!s} {exc!r} {exc.__cause__!r}")
            await sink.send(make_alert(1))
        errors.append(repr(sink))
    sent = recv.got.requests[-1][1]
    assert sent["Authorization"] == f"Bearer {token}"  # the header did go out
    assert recv.got.ids == [make_alert(1).id]
    seen = " ".join(errors) + repr(logs)
    for canary in canaries:
        assert canary not in seen
    with pytest.raises(ValueError, match="must not carry credentials") as bad:
        WebhookSink("https://user:CANARY-PW@example.invalid/hook")
    assert "CANARY-PW" not in str(bad.value)


async def test_through_the_outbox_a_receiver_down_for_a_while_gets_every_alert_in_order(
    tmp_path: Path,
) -> None:
    """The receiver answers 500 for its first seconds: the outbox retries with backoff, and
    every alert arrives once, in the order the daemon decided them."""
    alerts = [make_alert(n) for n in range(6)]
    with receiver(SECRET.encode()) as recv, Outbox.open(tmp_path / "o.sqlite", ["webhook"]) as box:
        recv.fail_until = time.monotonic() + 3.0
        box.record(alerts, None, time.time())
        async with _sink(recv.port) as sink:
            loop = DeliveryLoop(
                box, sink, DeliveryOptions(backoff_initial_s=0.2, backoff_max_s=1.0, idle_s=0.2)
            )
            async with asyncio.timeout(20), asyncio.TaskGroup() as tg:
                task = tg.create_task(loop.run())
                while len(recv.got.ids) < len(alerts):
                    await asyncio.sleep(0.05)
                task.cancel()
        left = box.depth("webhook")
    assert recv.got.answered.count(500) >= 3  # it was down, several tries long
    assert recv.got.ids == [a.id for a in alerts]
    assert recv.got.repeats == 0 and left == 0
    assert loop.failed >= 3 and loop.sent == len(alerts)
