"""Start-up warm-up over Alpaca's REST API: daily history relabelled, minutes split at today."""

from __future__ import annotations

from datetime import date

import httpx
import msgspec
import numpy as np
import polars as pl

from daemon.app import Warmup, warm_up
from daemon.calendar import xnys_sessions
from daemon.rules_file import load_rules
from daemon.warmup import fetch_alpaca_warmup, today_label
from signals.engine import EngineConfig
from signals.pipeline import Pipeline


def _stamp(t: int) -> str:
    return np.datetime_as_string(np.datetime64(t, "s"), unit="s") + "Z"


async def test_fetches_daily_and_minutes_and_relabels_daily() -> None:
    sessions = xnys_sessions(date(2024, 1, 1), date(2024, 3, 31))
    # "Now" is 11:00 ET on 2024-03-15, a session under way.
    now = (
        int(sessions.open[list(sessions.label).index(today_label(sessions, 1710514800) or 0)])
        + 90 * 60
    )
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        seen.append(params)
        assert request.headers["APCA-API-KEY-ID"] == "k" and request.url.path == "/v2/stocks/bars"
        if params["timeframe"] == "1Day":
            days = [int(x) for x in sessions.label if int(params_start(params)) <= x <= now]
            # Alpaca stamps daily bars at midnight New York (04:00 or 05:00 UTC).
            rows = [
                {
                    "t": _stamp(d + 5 * 3600),
                    "o": 10,
                    "h": 11,
                    "l": 9,
                    "c": 10.5,
                    "v": 1000,
                    "n": 1,
                    "vw": 10,
                }
                for d in days
            ]
        else:
            start = int(params_start(params))
            rows = [{"t": _stamp(t), "o": 10, "h": 11, "l": 9, "c": 10.5, "v": 10, "n": 1, "vw": 10}
                    for t in range(start, now, 3600)]  # fmt: skip
        return httpx.Response(200, json={"bars": {"IWM": rows}, "next_page_token": None})

    def params_start(p: dict[str, str]) -> float:
        return float(np.datetime64(p["start"].rstrip("Z")).astype("datetime64[s]").astype(int))

    w = await fetch_alpaca_warmup(
        key="k", secret="s", symbols=["IWM"], sessions=sessions, now=now, rest_url="http://alpaca.test",
        daily_days=30, minute_sessions=3, transport=httpx.MockTransport(handler),
    )  # fmt: skip
    assert [p["timeframe"] for p in seen] == ["1Day", "1Min"]
    assert w.today == 1710460800  # 2024-03-15 00:00 UTC
    assert w.daily is not None and w.minutes is not None
    assert w.daily.height == 30 and int(w.daily["time"].max()) < w.today  # type: ignore[arg-type]
    assert set((w.daily["time"] % 86_400).to_list()) == {0}
    first_minute_session = sessions.label[list(sessions.label).index(w.today) - 3]
    assert int(w.minutes["time"].min()) // 86_400 * 86_400 == first_minute_session  # type: ignore[arg-type]
    assert msgspec.json.encode(seen[0]["symbols"]) == b'"IWM"'


def test_warm_up_routes_todays_minutes_into_the_forming_daily_bar() -> None:
    sessions = xnys_sessions(date(2024, 1, 1), date(2024, 3, 31))
    today = int(sessions.label[-10])
    i = list(sessions.label).index(today)
    minutes = pl.DataFrame(
        {
            "symbol": "IWM",
            "time": [int(sessions.open[i - 1]) + 60 * k for k in range(390)] + [int(sessions.open[i]) + 60 * k for k in range(30)],
            "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 100.0,
        }
    )  # fmt: skip
    pipe = Pipeline(EngineConfig(), load_rules(), sessions=sessions)
    warm_up(pipe, Warmup(minutes=minutes, today=today))
    assert pipe.minute is not None
    assert pipe.minute.last_time("IWM") == int(sessions.open[i]) + 60 * 29
    assert (
        pipe.engine("1d").last_time("IWM") is None
    )  # yesterday's minutes did not make a daily bar
