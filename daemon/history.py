"""`iwm-alerts history`: download bars over a provider's REST API into parquet files.

One file per symbol and timeframe, `OUT/{SYMBOL}_{timeframe}.parquet`, with
the columns `backtest --bars` reads: `symbol`, `timestamp` (1m, UTC) or `date`
(1d), `open`, `high`, `low`, `close`, `volume`. The range a file covers (what
was asked for, not just the first and last bar: holidays and nights have no
bars) travels in the file's own metadata with a schema version, so a second
run fetches only what lies outside it. Each window of bars is merged into the
file and the file replaced atomically before the next request: an interrupted
run loses at most the window in flight.

Pagination, retries and `Retry-After` are the provider's REST client's
(`daemon.feeds.rest`); the provider registry says which secrets a provider
needs and how to fetch (`FeedProvider.download`).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import httpx
import msgspec
import polars as pl
from tqdm import tqdm

from daemon.bars import BarFileError, read_bar_file
from daemon.fatal import ExitCode, Fatal
from daemon.feeds.base import FeedError
from daemon.feeds.provider import BarDownload, HistoryTimeframe
from daemon.feeds.registry import FEEDS
from daemon.feeds.rest_options import RestOptions
from daemon.secrets import Secret, SecretError, Secrets, load_secret
from daemon.startup import feed_fatal
from signals.bar import Bar

SCHEMA_VERSION = 1
_META_KEY = "iwm-alerts.history"
_DAY_S = 86_400
STEP_S: dict[HistoryTimeframe, int] = {"1m": 60, "1d": _DAY_S}
# One request series per window: a month of minutes (about six Alpaca pages with
# extended hours), a year of days; small enough that an interruption loses little.
WINDOW_S: dict[HistoryTimeframe, int] = {"1m": 30 * _DAY_S, "1d": 366 * _DAY_S}
_SYMBOL = re.compile(r"[A-Z][A-Z0-9.]{0,9}")
_PRICES = ("open", "high", "low", "close", "volume")


def providers() -> list[str]:
    """The providers `history` can download from, as the registry lists them."""
    return [name for name, provider in FEEDS.items() if provider.download is not None]


def parse_time(text: str, flag: str, *, end_of_day: bool = False) -> int:
    """Epoch seconds of `YYYY-MM-DD` (00:00 UTC; 23:59:59 with `end_of_day`) or an ISO
    timestamp (UTC when it names no zone); `Fatal` (exit 2) naming `flag` otherwise."""
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise Fatal(
            f"history: {flag} {text!r} is not a date (YYYY-MM-DD) or an ISO timestamp",
            ExitCode.CONFIG,
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    epoch = int(stamp.timestamp())
    return epoch + _DAY_S - 1 if end_of_day and len(text) <= 10 else epoch


@dataclass(frozen=True, kw_only=True)
class HistoryRequest:
    """What to download, from where, into which directory. `rest_url`: the provider's
    default when None (tests point it at a local server)."""

    provider: str
    symbols: tuple[str, ...]
    timeframe: HistoryTimeframe
    start_s: int
    end_s: int
    out: Path
    rest_url: str | None = None

    def __post_init__(self) -> None:
        if self.provider not in providers():
            raise Fatal(f"history: no download for provider {self.provider!r}", ExitCode.CONFIG)
        bad = [s for s in self.symbols if not _SYMBOL.fullmatch(s)]
        if bad or not self.symbols:
            raise Fatal(f"history: not a symbol: {', '.join(bad) or '(none)'}", ExitCode.CONFIG)
        if self.start_s > self.end_s:
            raise Fatal("history: --start is after --end", ExitCode.CONFIG)


@dataclass
class SymbolResult:
    """One symbol's file: the range it covers, what it gained, what it holds."""

    symbol: str
    path: Path
    covered: tuple[int, int] | None = None
    added: int = 0
    rows: int = 0
    windows: int = 0
    span: tuple[int, int] | None = None  # first and last bar in the file
    rejected: Counter[str] = field(default_factory=Counter)


def bar_path(out: Path, symbol: str, timeframe: HistoryTimeframe) -> Path:
    """Where `symbol`'s `timeframe` bars live under `out`."""
    return out / f"{symbol}_{timeframe}.parquet"


class _Meta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    schema: int
    provider: str
    timeframe: str
    covered: tuple[int, int]


def read_coverage(path: Path, provider: str, timeframe: HistoryTimeframe) -> tuple[int, int] | None:
    """The range `path` covers (None: no file). A file from another provider or a newer
    schema is refused (`Fatal`, exit 2); one without our metadata covers its bars' span."""
    if not path.exists():
        return None
    try:
        raw = pl.read_parquet_metadata(path).get(_META_KEY)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise Fatal(f"history: cannot read {path}: {exc}", ExitCode.LOCAL) from exc
    if raw is None:
        times = _read(path)["time"].sort()
        return (int(times[0]), int(times[-1])) if len(times) else None
    try:
        meta = msgspec.json.decode(raw, type=_Meta)
    except msgspec.DecodeError as exc:
        raise Fatal(
            f"history: {path} has unreadable history metadata: {exc}", ExitCode.CONFIG
        ) from exc
    if meta.schema != SCHEMA_VERSION or (meta.provider, meta.timeframe) != (provider, timeframe):
        raise Fatal(
            f"history: {path} holds {meta.timeframe} bars from {meta.provider} (schema "
            f"{meta.schema}); choose another --out to download {timeframe} from {provider}",
            ExitCode.CONFIG,
        )
    return meta.covered


def plan_windows(
    covered: tuple[int, int] | None, start_s: int, end_s: int, timeframe: HistoryTimeframe
) -> list[tuple[int, int]]:
    """The windows to fetch so the file covers `[start_s, end_s]`: the head below
    `covered` newest first, then the tail above it oldest first, so the covered range
    stays one interval whenever a run stops."""
    step, size = STEP_S[timeframe], WINDOW_S[timeframe]
    if covered is None:
        return list(_split(start_s, end_s, size))
    head = list(_split(start_s, covered[0] - step, size))[::-1]
    return head + list(_split(covered[1] + step, end_s, size))


def _split(start_s: int, end_s: int, size: int) -> Iterator[tuple[int, int]]:
    while start_s <= end_s:
        yield start_s, min(start_s + size - 1, end_s)
        start_s += size


def _read(path: Path) -> pl.DataFrame:
    try:
        return read_bar_file(path).select("time", *_PRICES)
    except BarFileError as exc:
        raise Fatal(f"history: {exc}", ExitCode.LOCAL) from exc


def merge_into(
    path: Path, symbol: str, bars: Sequence[Bar], meta: _Meta, timeframe: HistoryTimeframe
) -> tuple[int, pl.DataFrame]:
    """Merge `bars` into `path` (a bar already there is replaced), stamp `meta`, and
    replace the file atomically. Returns how many bars are new and the merged frame."""
    new = pl.DataFrame(
        [(b.time, b.open, b.high, b.low, b.close, b.volume) for b in bars],
        schema={"time": pl.Int64, **dict.fromkeys(_PRICES, pl.Float64)},
        orient="row",
    )
    old = _read(path) if path.exists() else new.clear()
    merged = (
        pl.concat([old, new]).unique(subset="time", keep="last", maintain_order=True).sort("time")
    )
    stamp = pl.from_epoch("time", time_unit="s").dt.replace_time_zone("UTC")
    when = stamp.dt.date().alias("date") if timeframe == "1d" else stamp.alias("timestamp")
    frame = merged.select(pl.lit(symbol).alias("symbol"), when, *_PRICES)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        frame.write_parquet(tmp, metadata={_META_KEY: msgspec.json.encode(meta).decode()})
        os.replace(tmp, path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise Fatal(f"history: cannot write {path}: {exc}", ExitCode.LOCAL) from exc
    return merged.height - old.height, merged


def load_provider_secrets(provider: str) -> Secrets:
    """The provider's secrets from systemd credentials or the environment, as for `run`;
    `SecretError` naming each one missing."""
    names = FEEDS[provider].secrets
    found: dict[str, Secret] = {}
    for name in names:
        secret = load_secret(name)
        if secret is not None:
            found[name] = secret
    missing = [name for name in names if name not in found]
    if missing:
        raise SecretError(
            f"missing secret {', '.join(missing)} (for history --provider {provider}): set it "
            "as an environment variable or a systemd credential (LoadCredential=NAME:/path)"
        )
    return Secrets(MappingProxyType(found))


@dataclass(frozen=True, kw_only=True)
class Downloader:
    """Runs a `HistoryRequest`; the clock and `sleep` (waits between retries) are injectable.

    Bars still forming are never asked for (the request ends one bar before `now`):
    the file would keep them half-built, as a resumed run starts after them.
    """

    request: HistoryRequest
    secrets: Secrets
    now: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    progress: bool | None = None  # None: a progress bar on a terminal only

    async def run(self) -> list[SymbolResult]:
        """Fetch what each symbol's file lacks; `Fatal` on what a rerun would not fix."""
        r = self.request
        try:
            r.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Fatal(f"history: cannot create {r.out}: {exc.strerror}", ExitCode.LOCAL) from exc
        end_s = min(r.end_s, int(self.now()) - STEP_S[r.timeframe])
        plans = []
        for symbol in r.symbols:
            result = SymbolResult(symbol, bar_path(r.out, symbol, r.timeframe))
            result.covered = read_coverage(result.path, r.provider, r.timeframe)
            if result.covered is not None:
                times = _read(result.path)["time"]
                result.rows = len(times)
                result.span = (int(times[0]), int(times[-1])) if len(times) else None
            plans.append((result, plan_windows(result.covered, r.start_s, end_s, r.timeframe)))
        download = FEEDS[r.provider].download
        assert download is not None  # HistoryRequest checked it
        disable = None if self.progress is None else not self.progress
        total = sum(len(windows) for _, windows in plans)
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as http:
            with tqdm(total=total, unit="window", disable=disable, leave=False) as bar:
                for result, windows in plans:
                    await self._symbol(http, download, result, windows, bar)
        return [result for result, _ in plans]

    async def _symbol(
        self,
        http: httpx.AsyncClient,
        download: BarDownload,
        result: SymbolResult,
        windows: list[tuple[int, int]],
        bar: tqdm[None],
    ) -> None:
        r = self.request
        options = RestOptions(
            (result.symbol,), rest_url=r.rest_url, name=r.provider, now=self.now, sleep=self.sleep
        )
        for start_s, end_s in windows:
            bar.set_postfix_str(f"{result.symbol} {_day(start_s)}")
            try:
                received = await download(
                    http, self.secrets, options, (start_s, end_s, r.timeframe)
                )
            except FeedError as exc:
                raise _fatal(exc, result.path) from exc
            bars = [b for _, batch in received.batches for b in batch]
            result.rejected.update(rejection.reason for rejection in received.rejected)
            if "backfill_truncated" in result.rejected:
                raise Fatal(
                    f"history: {r.provider} returned more pages than the client reads for "
                    f"{result.symbol} from {_day(start_s)}",
                    ExitCode.FEED_GAVE_UP,
                )
            covered = result.covered
            result.covered = (
                (start_s, end_s)
                if covered is None
                else (min(covered[0], start_s), max(covered[1], end_s))
            )
            meta = _Meta(SCHEMA_VERSION, r.provider, r.timeframe, result.covered)
            added, merged = merge_into(result.path, result.symbol, bars, meta, r.timeframe)
            result.added += added
            result.rows, result.windows = merged.height, result.windows + 1
            if merged.height:
                result.span = (int(merged["time"][0]), int(merged["time"][-1]))
            bar.update(1)


def _fatal(exc: FeedError, path: Path) -> Fatal:
    """Refused keys (exit 3) and plan limits as `run` reports them; what retries could not
    fix (throttled, unreachable) exits 5 and says a rerun resumes."""
    fatal = feed_fatal(exc)
    if fatal is not None:
        return fatal
    return Fatal(
        f"{exc.feed}: {exc.detail} (after retries); run the same command again to resume "
        f"from {path}",
        ExitCode.FEED_GAVE_UP,
    )


def _day(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d")


def _stamp(epoch_s: int, timeframe: HistoryTimeframe) -> str:
    fmt = "%Y-%m-%d" if timeframe == "1d" else "%Y-%m-%d %H:%M"
    return datetime.fromtimestamp(epoch_s, UTC).strftime(fmt)


def summary_lines(results: Sequence[SymbolResult], timeframe: HistoryTimeframe) -> list[str]:
    """One line per file: what it gained, what it holds, what was rejected."""
    lines = []
    for r in results:
        span = (
            f"{_stamp(r.span[0], timeframe)} .. {_stamp(r.span[1], timeframe)} UTC"
            if r.span
            else "no bars"
        )
        line = f"{r.path}: +{r.added} bars ({r.windows} windows fetched), {r.rows} in all, {span}"
        if not r.windows:
            line = f"{r.path}: up to date, {r.rows} bars, {span}"
        if r.rejected:
            line += " ; rejected " + ", ".join(f"{k} {v}" for k, v in r.rejected.most_common())
        lines.append(line)
    return lines


def history_main(request: HistoryRequest, *, progress: bool | None = None) -> int:
    """Run `history` with the provider's secrets; print one line per file."""
    downloader = Downloader(
        request=request, secrets=load_provider_secrets(request.provider), progress=progress
    )
    started = time.monotonic()
    try:
        results = asyncio.run(downloader.run())
    except KeyboardInterrupt:  # Ctrl-C: what was written stays; say how to go on
        print(
            "iwm-alerts: history interrupted; run the same command again to resume", file=sys.stderr
        )
        return 130
    for line in summary_lines(results, request.timeframe):
        print(line)
    print(f"done in {time.monotonic() - started:.1f} s")
    return ExitCode.OK
