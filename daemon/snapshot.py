"""Pipeline snapshots on disk: parquet tables of the engines' arrays, JSON for the rest.

A restart that finds a snapshot taken with the same configuration resumes
exactly where the last run stopped (no cold warm-up); the feed's backfill then
repairs the gap since the snapshot's last bar, and the outbox's ids keep any
alert from going out twice.

A crash (even `kill -9`) at any point of a write leaves a usable snapshot:
the new one is written and fsynced in `<dir>.tmp`, the current one is moved
to `<dir>.old`, then `<dir>.tmp` becomes `<dir>`. Between the two renames
only `<dir>.old` holds a snapshot, so loading (and the next save) first puts
it back in place.

`FeedTimeSnapshots` decides when: every so many seconds of feed time.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import structlog

from signals.pipeline import Pipeline

_log = structlog.get_logger(__name__)

# 2: engine state keyed by indicator and signal name, with its own schema (1 keyed by position).
VERSION = 2


def _table(arrays: dict[str, np.ndarray]) -> pl.DataFrame:
    """One row per allocated symbol row; 2-D state becomes fixed-size array columns."""
    return pl.DataFrame([pl.Series(name, arr) for name, arr in arrays.items()])


def _arrays(df: pl.DataFrame) -> dict[str, np.ndarray]:
    return {name: df[name].to_numpy() for name in df.columns}


def _fsync_write(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parquet(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf)
    return buf.getvalue()


def _recover(directory: Path) -> None:
    """A crash between the two renames of `save_snapshot` left only `<dir>.old`: put it back."""
    old = directory.with_name(directory.name + ".old")
    if not (directory / "meta.json").exists() and (old / "meta.json").exists():
        shutil.rmtree(directory, ignore_errors=True)
        old.rename(directory)
        _log.warning("snapshot.recovered", path=str(directory))


def save_snapshot(pipeline: Pipeline, directory: Path, taken_at: float) -> None:
    """Write the pipeline's state to `directory`, replacing any previous snapshot atomically."""
    snap = pipeline.snapshot()
    _recover(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta: dict[str, Any] = {
        "version": VERSION,
        "taken_at": taken_at,
        "engines": {},
        "aggregators": {},
    }
    for name, (engine_meta, arrays) in snap["engines"].items():
        _fsync_write(tmp / f"engine-{name}.parquet", _parquet(_table(arrays)))
        meta["engines"][name] = engine_meta
    for name, (symbols, arrays) in snap["aggregators"].items():
        _fsync_write(tmp / f"aggregate-{name}.parquet", _parquet(_table(arrays)))
        meta["aggregators"][name] = symbols
    meta["book"] = snap["book"]
    # Written last: a directory without meta.json is never taken for a snapshot.
    _fsync_write(tmp / "meta.json", json.dumps(meta).encode())
    _fsync_dir(tmp)
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
    _log.info("snapshot.saved", path=str(directory), symbols=len(pipeline.daily.symbols))


def load_snapshot(pipeline: Pipeline, directory: Path) -> float | None:
    """Restore `pipeline` from `directory`; the snapshot's time, or None if there is none usable."""
    _recover(directory)
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != VERSION:
            raise ValueError(f"snapshot version {meta.get('version')}, this daemon reads {VERSION}")
        snap = {
            "engines": {
                name: (m, _arrays(pl.read_parquet(directory / f"engine-{name}.parquet")))
                for name, m in meta["engines"].items()
            },
            "aggregators": {
                name: (symbols, _arrays(pl.read_parquet(directory / f"aggregate-{name}.parquet")))
                for name, symbols in meta["aggregators"].items()
            },
            "book": meta["book"],
        }
        pipeline.restore(snap)
    except (OSError, ValueError, KeyError, pl.exceptions.PolarsError) as exc:
        # A snapshot from another configuration (or a damaged one) is not an error:
        # the daemon warms up from the provider instead.
        _log.warning("snapshot.ignored", path=str(directory), reason=str(exc), start="cold")
        return None
    _log.info("snapshot.restored", path=str(directory), taken_at=meta["taken_at"])
    return float(meta["taken_at"])


def last_minute(pipeline: Pipeline) -> int | None:
    """The newest 1-minute bar start the pipeline holds, any symbol; None before the first."""
    # Called after every ingested batch (FeedTimeSnapshots.tick): one array max, not a
    # lookup per symbol.
    return None if pipeline.minute is None else pipeline.minute.newest_time()


class FeedTimeSnapshots:
    """Saves `pipeline` to `directory` every `every_s` seconds of feed time (bar time).

    Live, bar time follows the wall clock. A replay plays hours of bars per
    real minute: counted in wall time its snapshots would lag hours of bars
    behind, and a restart would re-derive all of them. Call `tick` after each
    ingested batch (a consistent point: no minute half-applied); the count
    starts at the pipeline's last minute when created, or its first bar.
    """

    def __init__(self, pipeline: Pipeline, directory: Path, every_s: float) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self._pipeline, self._directory, self._every_s = pipeline, directory, every_s
        self._since = last_minute(pipeline)
        self.saved = 0
        """Snapshots written so far."""

    def save(self) -> None:
        """Write a snapshot now."""
        save_snapshot(self._pipeline, self._directory, time.time())
        self._since = last_minute(self._pipeline)
        self.saved += 1

    def tick(self) -> None:
        """Write a snapshot if `every_s` of feed time passed since the last one."""
        minute = last_minute(self._pipeline)
        if minute is None:
            return
        if self._since is None:
            self._since = minute
        elif minute - self._since >= self._every_s:
            self.save()
