"""The batch reference of the whole engine: every column of `Engine` from whole series, in polars.

Built only from the indicators' `*_batch` references, per-symbol shifts and
joins on bar time, it shares no state machine with the streaming engine: it is
the oracle the property tests hold the engine to.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from signals.base_indicators import proxy_yield
from signals.engine import COLUMNS, FIB_COLUMNS, EngineConfig
from signals.indicators.atr import atr_batch
from signals.indicators.donchian import donchian_batch
from signals.indicators.ema import ema_batch
from signals.indicators.macd import macd_batch
from signals.indicators.rsi import rsi_batch
from signals.indicators.rvol import rvol_batch
from signals.indicators.swing import swing_batch
from signals.indicators.volume_ratio import volume_ratio_batch
from signals.rates import RatesSeries
from signals.score import SIGNALS, composite
from signals.subscores import (
    sub_atr,
    sub_breadth,
    sub_fib,
    sub_macd,
    sub_rates,
    sub_rs,
    sub_rsi,
    sub_volume,
)


def _own_columns(g: pl.DataFrame, cfg: EngineConfig, rates: RatesSeries | None) -> pl.DataFrame:
    """Everything that depends on one symbol's own bars."""
    c, h, lo, v = g["close"], g["high"], g["low"], g["volume"]
    macd = macd_batch(c, cfg.macd_fast, cfg.macd_slow, cfg.macd_signal)
    don = donchian_batch(h, lo, cfg.donchian_period)
    sw = swing_batch(h, lo, c, cfg.swing_lookback)
    k = cfg.change_period
    y = rates.asof(g["time"].to_numpy()) if rates is not None else np.full(g.height, np.nan)
    cols = {
        "rsi14": rsi_batch(c, cfg.rsi_period),
        "macd": macd["macd"],
        "macd_signal": macd["macd_signal"],
        "macd_hist": macd["macd_hist"],
        "atr14": atr_batch(h, lo, c, cfg.atr_period),
        "volume_ratio": volume_ratio_batch(v, cfg.volume_period),
        "rvol": (
            rvol_batch(
                g.select("session", "minute", "volume"), cfg.rvol_sessions, cfg.minutes_per_session
            )
            if cfg.intraday
            else pl.Series([None] * g.height, dtype=pl.Float64)
        ),
        "donchian_high20": don["donchian_high"],
        "donchian_low20": don["donchian_low"],
        "swing_high": sw["swing_high"],
        "swing_low": sw["swing_low"],
        "swing_dir": sw["direction"].cast(pl.Float64),
        "fib_ratio": sw["fib_ratio"],
        **{name: sw[name] for name in FIB_COLUMNS},
        "prev_close": c.shift(1),
        "ret20": c / c.shift(k) - 1.0,
        "rates": pl.Series(y, dtype=pl.Float64),
    }
    return g.with_columns(**{n: s.alias(n) for n, s in cols.items()})


def reference_frame(
    bars: pl.DataFrame, config: EngineConfig | None = None, rates: RatesSeries | None = None
) -> pl.DataFrame:
    """All engine columns for `bars` (symbol, time, OHLCV [, session, minute]), sorted by time, symbol."""
    cfg = config or EngineConfig()
    k = cfg.change_period
    parts = [
        _own_columns(g.sort("time"), cfg, rates)
        for _, g in bars.sort(["symbol", "time"]).group_by("symbol", maintain_order=True)
    ]
    own = pl.concat(parts).fill_nan(None)
    at_time = own.select("symbol", "time", "close", "ret20")
    links = pl.DataFrame(
        {
            "symbol": own["symbol"].unique().to_list(),
        }
    ).with_columns(
        pl.col("symbol")
        .map_elements(lambda s: _other(cfg.links_for(s).benchmark, s), pl.Utf8)
        .alias("bench"),
        pl.col("symbol")
        .map_elements(lambda s: _other(cfg.links_for(s).comparator, s), pl.Utf8)
        .alias("comp"),
    )
    df = (
        own.join(links, on="symbol", how="left")
        .join(
            at_time.select(
                pl.col("symbol").alias("bench"), "time", pl.col("close").alias("bench_close")
            ),
            on=["bench", "time"],
            how="left",
        )
        .join(
            at_time.select(
                pl.col("symbol").alias("comp"), "time", pl.col("ret20").alias("comp_ret20")
            ),
            on=["comp", "time"],
            how="left",
        )
        .sort(["symbol", "time"])
        .with_columns(
            (pl.col("close") / pl.col("bench_close")).alias("rs_ratio"),
            (pl.col("ret20") - pl.col("comp_ret20")).alias("breadth20"),
            (pl.col("rates") - pl.col("rates").shift(k).over("symbol")).alias("rates_delta20"),
            (100.0 * pl.col("atr14") / pl.col("close")).alias("atr_pct"),
            (pl.col("rvol") if cfg.intraday else pl.col("volume_ratio")).alias("volume_signal"),
        )
        .with_columns(
            (pl.col("rs_ratio") / pl.col("rs_ratio").shift(k).over("symbol") - 1.0).alias(
                "rs_roc20"
            )
        )
    )
    if rates is None and cfg.rates_proxy is not None:
        # The proxy's implied yield at each bar time, then its change over the symbol's bars.
        proxy = at_time.filter(pl.col("symbol") == cfg.rates_proxy).select(
            "time",
            pl.Series(
                "proxy_y",
                proxy_yield(
                    at_time.filter(pl.col("symbol") == cfg.rates_proxy)["close"].to_numpy(),
                    cfg.rates_proxy_duration,
                ),
            ),
        )
        df = (
            df.drop("rates_delta20").join(proxy, on="time", how="left").sort(["symbol", "time"])
            .with_columns(pl.col("proxy_y").fill_nan(None).alias("rates"))
            .with_columns((pl.col("rates") - pl.col("rates").shift(k).over("symbol")).alias("rates_delta20"))
            .drop("proxy_y")
        )  # fmt: skip
    df = pl.concat(
        [_ratio_emas(g, cfg) for _, g in df.group_by("symbol", maintain_order=True)]
    ).with_columns((pl.col("rs_ema_fast") / pl.col("rs_ema_slow") - 1.0).alias("rs_ema_spread"))
    a = {
        c: df[c].cast(pl.Float64).to_numpy()
        for c in df.columns
        if c not in ("symbol", "bench", "comp")
    }
    subs = {
        "rsi": sub_rsi(a["rsi14"]),
        "macd": sub_macd(a["macd_hist"], a["atr14"]),
        "fib": sub_fib(a["swing_dir"], a["fib_ratio"]),
        "volume": sub_volume(a["volume_signal"], a["close"], a["prev_close"]),
        "atr": sub_atr(a["atr_pct"]),
        "rs": sub_rs(a["rs_roc20"]),
        "breadth": sub_breadth(a["breadth20"]),
        "rates": sub_rates(a["rates_delta20"]),
    }
    df = df.with_columns(
        *(pl.Series(f"sub_{s}", subs[s]) for s in SIGNALS),
        pl.Series("score", composite(subs, cfg.weights, cfg.min_signals)),
    )
    return df.select("symbol", "time", *COLUMNS).sort(["time", "symbol"]).fill_nan(None)


def _ratio_emas(g: pl.DataFrame, cfg: EngineConfig) -> pl.DataFrame:
    """EMAs of the benchmark ratio over the bars that have one (bars without one get null)."""
    have = g["rs_ratio"].is_not_null()
    ratio = g["rs_ratio"].filter(have)
    out = {}
    for name, period in (("rs_ema_fast", cfg.rs_ema_fast), ("rs_ema_slow", cfg.rs_ema_slow)):
        values = iter(ema_batch(ratio, period).to_list())
        out[name] = pl.Series(name, [next(values) if h else None for h in have], dtype=pl.Float64)
    return g.with_columns(**out)


def _other(link: str | None, symbol: str) -> str | None:
    return None if link == symbol else link
