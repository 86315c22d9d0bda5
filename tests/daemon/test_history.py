"""`iwm-alerts history` end to end against the local provider servers: pages, a 429 with
`Retry-After`, an interrupted run resumed without refetching, and the one-line failures."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import polars as pl
import pytest
from websockets.asyncio.client import connect

from daemon.bars import load_bars
from daemon.fatal import ExitCode, Fatal
from daemon.feeds.replay_wire import ReplaySettings
from daemon.history import Downloader, HistoryRequest, bar_path, parse_time, plan_windows
from daemon.secrets import Secret, Secrets
from tests.daemon.feeds.feedkit import KEY, SECRET, SYMBOLS, T0, keys_of, make_frame, wait_until
from tests.daemon.feeds.finnhub_server import FinnhubServer, candles, make_tape
from tests.daemon.feeds.massive_server import MassiveServer
from tests.daemon.feeds.replay_harness import ReplayHarness

DAY = 86_400
START = parse_time("2024-01-01", "--start")
END = parse_time("2024-03-31", "--end", end_of_day=True)  # four 30-day windows


def _history() -> pl.DataFrame:
    """12,000 minutes in January (two Alpaca pages of 10,000 per symbol), an hour in
    February, an hour in March: four windows, five requests per symbol."""
    return pl.concat(
        [
            make_frame(12_000),
            make_frame(60, start=T0 + 40 * DAY),
            make_frame(60, start=T0 + 75 * DAY),
        ]
    )


def _alpaca_server() -> ReplayHarness:
    later = make_frame(1, start=T0 + 200 * DAY)  # never played: REST serves the history only
    return ReplayHarness(later, ReplaySettings(key=KEY, secret=SECRET), history=_history())


def _alpaca_secrets() -> Secrets:
    return Secrets({"ALPACA_API_KEY": Secret(KEY), "ALPACA_API_SECRET": Secret(SECRET)})


def _request(out: Path, url: str, provider: str = "alpaca") -> HistoryRequest:
    return HistoryRequest(
        provider=provider, symbols=SYMBOLS, timeframe="1m", start_s=START, end_s=END,
        out=out, rest_url=url,
    )  # fmt: skip


class _Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.waits.append(delay)


def _files(out: Path) -> list[Path]:
    return [bar_path(out, symbol, "1m") for symbol in SYMBOLS]


def test_windows_cover_the_range_and_grow_the_covered_interval_outwards() -> None:
    assert len(plan_windows(None, START, END, "1m")) == 4
    covered = (START + 30 * DAY, START + 60 * DAY - 1)
    head, *tail = plan_windows(covered, START, END, "1m")
    assert head == (START, covered[0] - 60)  # the last minute start not covered
    assert tail[0][0] == covered[1] + 60 and tail[-1][1] == END
    assert plan_windows((START, END), START, END, "1m") == []


async def test_pages_and_a_429_with_retry_after(tmp_path: Path) -> None:
    async with _alpaca_server() as server:
        server.fail_rest(429, retry_after_s=7)
        sleeps = _Sleeps()
        downloader = Downloader(
            request=_request(tmp_path, server.rest_url), secrets=_alpaca_secrets(),
            sleep=sleeps, progress=False,
        )  # fmt: skip
        results = await downloader.run()
        assert server.rest_failures_served == 1
        assert sleeps.waits == [7.0]  # the server's Retry-After, not the 1 s backoff
        assert server.rest_requests == 3 * 5 + 1  # January takes two pages
    loaded = load_bars(_files(tmp_path))
    assert keys_of(loaded.frame) == keys_of(_history()) and not loaded.dropped
    assert [r.added for r in results] == [12_120] * 3
    first = pl.read_parquet(_files(tmp_path)[0])
    assert first.columns == ["symbol", "timestamp", "open", "high", "low", "close", "volume"]


async def test_an_interrupted_run_resumes_without_refetching(tmp_path: Path) -> None:
    async with _alpaca_server() as server:
        request = _request(tmp_path, server.rest_url)
        downloader = Downloader(request=request, secrets=_alpaca_secrets(), progress=False)
        server.hold_rest_after(2)  # IWM's January (two pages) lands; February hangs
        run = asyncio.create_task(downloader.run())
        await wait_until(lambda: server.rest_waiting == 1)
        run.cancel()  # what Ctrl-C does to `asyncio.run`
        with pytest.raises(asyncio.CancelledError):
            await run
        server.hold_rest_after(None)
        server.hold_rest(False)
        await wait_until(lambda: server.rest_waiting == 0)
        kept = pl.read_parquet(_files(tmp_path)[0])
        assert kept.height == 12_000 and not _files(tmp_path)[1].exists()
        before = server.rest_requests  # the two pages and the abandoned request

        results = await downloader.run()
        assert server.rest_requests - before == 3 + 5 + 5  # IWM lacks February and March
        assert [r.added for r in results] == [120, 12_120, 12_120]

        again = await downloader.run()
        assert server.rest_requests - before == 13  # all covered: no request at all
        assert [(r.added, r.windows, r.rows) for r in again] == [(0, 0, 12_120)] * 3
    loaded = load_bars(_files(tmp_path))
    assert keys_of(loaded.frame) == keys_of(_history()) and not loaded.dropped


async def test_massive_pages_and_a_429(tmp_path: Path) -> None:
    frame = make_frame(300)
    async with MassiveServer(frame, api_key=KEY, page_size=120) as server:
        server.start()
        await server.wait_played(300)
        server.fail_rest(429, retry_after_s=3)
        sleeps = _Sleeps()
        downloader = Downloader(
            request=_request(tmp_path, server.rest_url, "massive"),
            secrets=Secrets({"MASSIVE_API_KEY": Secret(KEY)}), sleep=sleeps, progress=False,
        )  # fmt: skip
        await downloader.run()
        assert sleeps.waits == [3.0]
        assert len(server.rest_requests) == 3 * (4 + 2) + 1  # January: 3 pages of 120
    assert keys_of(load_bars(_files(tmp_path)).frame) == keys_of(frame)


async def test_a_file_from_another_provider_is_refused(tmp_path: Path) -> None:
    async with _alpaca_server() as server:
        await Downloader(
            request=_request(tmp_path, server.rest_url), secrets=_alpaca_secrets(), progress=False
        ).run()
    massive = Downloader(
        request=_request(tmp_path, "http://127.0.0.1:9", "massive"),
        secrets=Secrets({"MASSIVE_API_KEY": Secret(KEY)}), progress=False,
    )  # fmt: skip
    with pytest.raises(Fatal, match=r"IWM_1m\.parquet holds 1m bars from alpaca") as caught:
        await massive.run()
    assert caught.value.code == ExitCode.CONFIG


async def _cli(out: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "MASSIVE_", "FINNHUB_"))
    }
    base.pop("CREDENTIALS_DIRECTORY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", "history", "--symbols", "IWM", "SPY",
        "--timeframe", "1m", "--out", str(out), *args,
        env=base | env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


_ALPACA_ENV = {"ALPACA_API_KEY": KEY, "ALPACA_API_SECRET": SECRET}


async def test_the_command_downloads_then_is_up_to_date(tmp_path: Path) -> None:
    async with _alpaca_server() as server:
        args = ("--provider", "alpaca", "--rest-url", server.rest_url, "--start", "2024-01-01",
                "--end", "2024-03-31")  # fmt: skip
        code, out, err = await _cli(tmp_path, _ALPACA_ENV, *args)
        assert (code, err) == (0, "")
        assert "IWM_1m.parquet: +12120 bars (4 windows fetched), 12120 in all" in out
        code, out, _ = await _cli(tmp_path, _ALPACA_ENV, *args)
        assert code == 0 and out.count("up to date, 12120 bars") == 2
        assert server.rest_requests == 2 * 5


@pytest.mark.parametrize(
    ("env", "args", "code", "line"),
    [
        ({}, ("--start", "2024-01-01"), ExitCode.CONFIG,
         "missing secret ALPACA_API_KEY, ALPACA_API_SECRET (for history --provider alpaca)"),
        ({"ALPACA_API_KEY": KEY, "ALPACA_API_SECRET": "wrong"}, ("--start", "2024-01-01"),
         ExitCode.CREDENTIALS, "check ALPACA_API_KEY and ALPACA_API_SECRET"),
        (_ALPACA_ENV, ("--start", "2024-13-01"), ExitCode.CONFIG,
         "--start '2024-13-01' is not a date"),
        (_ALPACA_ENV, ("--start", "2024-02-01", "--end", "2024-01-01"), ExitCode.CONFIG,
         "--start is after --end"),
    ],
)  # fmt: skip
async def test_expected_failures_are_one_line(
    tmp_path: Path, env: dict[str, str], args: tuple[str, ...], code: int, line: str
) -> None:
    async with _alpaca_server() as server:
        got, out, err = await _cli(
            tmp_path, env, "--provider", "alpaca", "--rest-url", server.rest_url,
            "--no-progress", *args,
        )  # fmt: skip
    assert got == code and out == ""
    assert err.count("\n") == 1 and err.startswith("iwm-alerts: ") and line in err
    assert SECRET not in err


async def test_finnhub_candles(tmp_path: Path) -> None:
    tape = make_tape(30)
    async with FinnhubServer(tape, token=KEY) as server:
        # Playback waits for a subscribed client; this one leaves without waiting for a goodbye.
        async with connect(f"{server.url}/?token={KEY}", close_timeout=0.1) as ws:
            for symbol in SYMBOLS:
                await ws.send(json.dumps({"type": "subscribe", "symbol": symbol}))
            await asyncio.wait_for(server.finished.wait(), timeout=10)
        downloader = Downloader(
            request=_request(tmp_path, server.rest_url, "finnhub"),
            secrets=Secrets({"FINNHUB_API_KEY": Secret(KEY)}), progress=False,
        )  # fmt: skip
        results = await downloader.run()
        assert len(server.rest_requests) == 3 * 4  # one per window: candles have no pages
    assert [r.added for r in results] == [30] * 3
    assert keys_of(load_bars(_files(tmp_path)).frame) == keys_of(candles(tape))


async def test_finnhub_without_candles_in_the_plan_is_refused(tmp_path: Path) -> None:
    async with FinnhubServer(make_tape(2), token=KEY) as server:
        server.rest_unavailable = True
        code, _, err = await _cli(
            tmp_path, {"FINNHUB_API_KEY": KEY}, "--provider", "finnhub",
            "--rest-url", server.rest_url, "--start", "2024-01-02", "--end", "2024-01-02",
        )  # fmt: skip
    assert code == ExitCode.CREDENTIALS and err.count("\n") == 1
    assert "check FINNHUB_API_KEY (and that the plan covers this data)" in err


async def test_daily_bars_are_dated_as_backtest_reads_them(tmp_path: Path) -> None:
    # One bar a day at midnight New York (05:00 UTC in winter), as Alpaca stamps them.
    daily = make_frame(900).with_columns(time=(pl.col("time") - T0) // 60 * DAY + START + 5 * 3600)
    later = make_frame(1, start=T0 + 2000 * DAY)
    async with ReplayHarness(later, history=make_frame(1), daily=daily) as server:
        request = HistoryRequest(
            provider="alpaca", symbols=SYMBOLS, timeframe="1d", start_s=START,
            end_s=START + 800 * DAY, out=tmp_path, rest_url=server.rest_url,
        )  # fmt: skip
        results = await Downloader(request=request, secrets=_alpaca_secrets(), progress=False).run()
        assert [r.windows for r in results] == [3] * 3  # 366-day windows
    frame = pl.read_parquet(bar_path(tmp_path, "IWM", "1d"))
    assert frame.columns == ["symbol", "date", "open", "high", "low", "close", "volume"]
    assert frame["date"].dtype == pl.Date and frame.height == 800
    assert frame["date"][0].isoformat() == "2024-01-01"  # the session's date, not the day before
    loaded = load_bars([bar_path(tmp_path, s, "1d") for s in SYMBOLS])
    assert loaded.frame.height == 3 * 800 and not loaded.dropped


async def test_throttled_past_the_retries_exits_5_keeping_what_was_written(tmp_path: Path) -> None:
    async with _alpaca_server() as server:
        server.hold_rest_after(5)  # IWM complete; then SPY meets four 429s
        downloader = Downloader(
            request=_request(tmp_path, server.rest_url), secrets=_alpaca_secrets(),
            sleep=_Sleeps(), progress=False,
        )  # fmt: skip
        run = asyncio.create_task(downloader.run())
        await wait_until(lambda: server.rest_waiting == 1)
        server.hold_rest_after(None)
        server.fail_rest(429, times=4, retry_after_s=1)
        server.hold_rest(False)
        with pytest.raises(Fatal) as caught:
            await run
        assert server.rest_failures_served == 4
    assert caught.value.code == ExitCode.FEED_GAVE_UP
    assert str(caught.value) == (
        "alpaca: REST HTTP 429 Too Many Requests (after retries); run the same command "
        f"again to resume from {_files(tmp_path)[1]}"
    )
    assert pl.read_parquet(_files(tmp_path)[0]).height == 12_120
