"""What the replay server is made of: its settings, the frames it replays, and the
Alpaca-protocol messages its websocket speaks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec
import polars as pl

from daemon.feeds.alpaca_wire import ERROR_MESSAGES

COLUMNS: Final = ("symbol", "time", "open", "high", "low", "close", "volume")
LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True, kw_only=True)
class ReplaySettings:
    """How a replay server plays and where it listens.

    `speed` is bar-minutes per real second (0 or infinity: as fast as the
    client reads); with `manual` the timeline moves only when `advance` is
    called. With `key`/`secret` set, only those credentials authenticate (402
    otherwise); by default any do. It listens on loopback only (`host`), on
    free ports by default; `stream` names the URL's last segment, and a session
    that does not authenticate within `auth_timeout_s` gets error 404.
    """

    speed: float = 0.0
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 0
    http_port: int = 0
    stream: str = "iex"
    auth_timeout_s: float = 10.0
    manual: bool = False

    def __post_init__(self) -> None:
        if self.host not in LOOPBACK:
            raise ValueError(f"the replay server listens on loopback only, not {self.host!r}")
        if not self.speed >= 0:
            raise ValueError(
                f"speed must be >= 0 (0 or inf: as fast as possible), got {self.speed}"
            )


@dataclass(frozen=True)
class ReplayFrames:
    """The bars a replay serves, normalised: the `live` minutes it plays, the minutes before
    them (`history`) and daily bars (`daily`) its REST side also serves, when given."""

    live: pl.DataFrame
    history: pl.DataFrame | None = None
    daily: pl.DataFrame | None = None

    @classmethod
    def of(
        cls, bars: pl.DataFrame, history: pl.DataFrame | None, daily: pl.DataFrame | None
    ) -> ReplayFrames:
        """Check and normalise the frames; `ValueError` when `bars` lacks a column."""
        missing = [c for c in COLUMNS if c not in bars.columns]
        if missing:
            raise ValueError(f"bars need columns {COLUMNS}, missing {missing}")
        return cls(
            normalised(bars),
            None if history is None else normalised(history),
            None if daily is None else normalised(daily),
        )


def as_json(value: object) -> str:
    """`value` as JSON text."""
    return msgspec.json.encode(value).decode()


def error_message(code: int) -> str:
    """Alpaca's error message for `code`, as the server sends it."""
    return as_json([{"T": "error", "code": code, "msg": ERROR_MESSAGES.get(code, "error")}])


@dataclass
class Client:
    """One client's subscriptions."""

    bars: set[str] = field(default_factory=set)
    updated: set[str] = field(default_factory=set)
    daily: set[str] = field(default_factory=set)

    def wants(self, symbol: str) -> bool:
        return "*" in self.bars or symbol in self.bars

    def message(self) -> str:
        return as_json(
            [
                {
                    "T": "subscription",
                    "trades": [],
                    "quotes": [],
                    "bars": sorted(self.bars),
                    "updatedBars": sorted(self.updated),
                    "dailyBars": sorted(self.daily),
                    "statuses": [],
                    "lulds": [],
                    "corrections": [],
                    "cancelErrors": [],
                }
            ]
        )


class Request(msgspec.Struct, rename={"updated": "updatedBars", "daily": "dailyBars"}):
    """A client message: `auth`, `subscribe` or `unsubscribe`."""

    action: str
    key: str = ""
    secret: str = ""
    bars: list[str] = []
    updated: list[str] = []
    daily: list[str] = []


def normalised(bars: pl.DataFrame) -> pl.DataFrame:
    """`bars` with the replay's column types, sorted by time then symbol."""
    return bars.select(
        pl.col("symbol").cast(pl.String),
        pl.col("time").cast(pl.Int64),
        *(pl.col(c).cast(pl.Float64) for c in COLUMNS[2:]),
    ).sort("time", "symbol")


def frame_from_rows(
    rows: Iterable[tuple[str, int, float, float, float, float, float]],
) -> pl.DataFrame:
    """A replay frame from `(symbol, time, open, high, low, close, volume)` tuples."""
    return pl.DataFrame(
        list(rows),
        schema={
            "symbol": pl.String,
            "time": pl.Int64,
            "open": pl.Float64,
            "high": pl.Float64,
            "low": pl.Float64,
            "close": pl.Float64,
            "volume": pl.Float64,
        },
        orient="row",
    )
