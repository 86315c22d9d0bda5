"""The REST clients' retries as uses of the one policy: backoff, Retry-After in both forms."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from daemon.feeds.alpaca import AlpacaRest, rfc3339
from daemon.feeds.rest_options import RestOptions
from tests.daemon.feeds.feedkit import KEY, SECRET, SYMBOLS, T0, FakeClock

_BARS = {"bars": {"IWM": [{"t": rfc3339(T0), "o": 1, "h": 2, "l": 0.5, "c": 1.5, "v": 100}]}}


def _http_date(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


async def test_backoff_a_shorter_retry_after_and_an_http_date_on_the_injected_clock() -> None:
    clock = FakeClock(T0 + 3600)
    answers = [
        lambda: httpx.Response(503),  # no Retry-After: the backoff, 1 s
        lambda: httpx.Response(429, headers={"Retry-After": "0"}),  # sooner than ours: 2 s
        lambda: httpx.Response(429, headers={"Retry-After": _http_date(clock.t + 30)}),
        lambda: httpx.Response(200, json=_BARS | {"next_page_token": None}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)()

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    rest = AlpacaRest(
        http,
        KEY,
        SECRET,
        RestOptions(
            SYMBOLS, rest_url="https://data.example.test", now=clock.now, sleep=clock.sleep
        ),
    )
    async with http:
        got = await rest.bars(T0, T0 + 59)
    assert clock.slept == [1.0, 2.0, 30.0]
    assert len(got.batches[0][1]) == 1 and not answers
