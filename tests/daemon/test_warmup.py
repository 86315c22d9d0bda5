"""Start-up warm-up over Alpaca's REST API: daily history relabelled, minutes split at today."""

from __future__ import annotations

import json
from datetime import date

import httpx
import msgspec
import numpy as np
import polars as pl

from daemon.app import warm_up
from daemon.bars import frame_to_batch
from daemon.calendar import xnys_sessions
from daemon.feeds.alpaca_rest import fetch_alpaca_warmup
from daemon.feeds.massive_rest import fetch_massive_warmup
from daemon.rules_file import load_rules
from daemon.warmup import Warmup, WarmupRequest, today_label
from signals.engine import EngineConfig
from signals.pipeline import Pipeline
from tests.daemon.feeds.massive_server import MassiveServer

KEY = "massive-test-key-0001"


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

    w = await fetch_alpaca_warmup("k", "s", WarmupRequest(
        symbols=["IWM"], sessions=sessions, now=now, rest_url="http://alpaca.test",
        daily_days=30, minute_sessions=3, transport=httpx.MockTransport(handler),
    ))  # fmt: skip
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


def test_warm_up_advances_rule_state_exactly_as_a_loud_run_would() -> None:
    """Warm-up makes no Alert objects (the cost of a 2,000-symbol warm-up), but rule state
    (armed, last fire, previous value) ends up identical, and it really did fire rules."""
    sessions = xnys_sessions(date(2023, 1, 1), date(2024, 3, 31))
    rng = np.random.default_rng(3)
    days = sessions.label[:250]
    frames = []
    for k, sym in enumerate(("IWM", "SPY", "QQQ")):
        close = 100.0 * (1 + k) * np.exp(np.cumsum(rng.normal(0, 0.02, len(days))))
        frames.append(
            pl.DataFrame(
                {
                    "symbol": sym,
                    "time": days,
                    "open": close,
                    "high": close * 1.01,
                    "low": close * 0.99,
                    "close": close,
                    "volume": rng.uniform(1e6, 5e6, len(days)),
                }
            )
        )
    daily = pl.concat(frames)
    quiet = Pipeline(EngineConfig(), load_rules(), sessions=sessions)
    warm_up(quiet, Warmup(daily=daily))
    loud = Pipeline(EngineConfig(), load_rules(), sessions=sessions)
    alerts = loud.on_daily_bars(frame_to_batch(daily.sort("time", "symbol"))).alerts
    assert len(alerts) > 10
    assert json.dumps(quiet.book.state()) == json.dumps(loud.book.state())  # NaN-safe
    after = frame_to_batch(
        daily.filter(pl.col("time") == days[-1]).with_columns(time=pl.lit(int(sessions.label[251])))
    )
    assert [a.id for a in quiet.on_daily_bars(after).alerts] == [
        a.id for a in loud.on_daily_bars(after).alerts
    ]


async def test_massive_warmup_over_real_http_relabels_daily_and_leaves_today_to_the_minutes() -> (
    None
):
    """Massive users get the same warm-up as Alpaca's: daily aggregates (stamped at midnight
    New York by the server, relabelled to the session date), minutes of recent sessions."""
    sessions = xnys_sessions(date(2024, 1, 1), date(2024, 3, 31))
    labels = [int(x) for x in sessions.label]
    today = 1710460800  # 2024-03-15 00:00 UTC
    i = labels.index(today)
    now = int(sessions.open[i]) + 90 * 60  # 11:00 New York
    rng = np.random.default_rng(5)
    daily = pl.DataFrame(
        {
            "symbol": [s for s in ("IWM", "SPY") for _ in labels[: i + 1]],
            "time": labels[: i + 1] * 2,  # today's partial daily bar too: it must be left out
            "open": 100.0, "high": 102.0, "low": 99.0,
            "close": rng.uniform(99.5, 101.5, 2 * (i + 1)),
            "volume": rng.uniform(1e6, 2e6, 2 * (i + 1)),
        }
    )  # fmt: skip
    minute_times = [int(sessions.open[k]) + 60 * m for k in range(i - 3, i) for m in range(390)]
    minute_times += [int(sessions.open[i]) + 60 * m for m in range(90)]
    minutes = pl.DataFrame(
        {
            "symbol": [s for t in minute_times for s in ("IWM", "SPY")],
            "time": [t for t in minute_times for _ in range(2)],
            "open": 100.0, "high": 101.0, "low": 99.0, "close": 100.5, "volume": 10.0,
        }
    )  # fmt: skip
    async with MassiveServer(minutes, api_key=KEY, daily=daily, page_size=500) as server:
        server.start()
        await server.wait_played(len(minute_times))
        w = await fetch_massive_warmup(KEY, WarmupRequest(
            symbols=["IWM", "SPY"], sessions=sessions, now=now,
            rest_url=server.rest_url, daily_days=30, minute_sessions=3,
        ))  # fmt: skip
        paths = [r[0].path for r in server.rest_requests]
    assert any("/range/1/day/" in p for p in paths) and any("/range/1/minute/" in p for p in paths)
    assert w.today == today and w.daily is not None and w.minutes is not None
    want = daily.filter(pl.col("time").is_in(labels[i - 30 : i])).sort("symbol", "time")
    got = w.daily.sort("symbol", "time")
    assert got["time"].to_list() == want["time"].to_list()  # relabelled, today left out
    assert got["close"].to_list() == want["close"].to_list()
    assert w.minutes.height == minutes.height
    pipe = Pipeline(EngineConfig(), load_rules(), sessions=sessions)
    warm_up(pipe, w)
    assert pipe.engine("1d").last_time("IWM") == labels[i - 1]
    assert pipe.minute is not None and pipe.minute.last_time("SPY") == minute_times[-1]
