"""Pipeline snapshots on disk: parquet tables of the engines' arrays, JSON for the rest.

A restart that finds a snapshot taken with the same configuration resumes
exactly where the last run stopped (no cold warm-up); the feed's backfill then
repairs the gap since the snapshot's last bar, and the outbox's ids keep any
alert from going out twice. The directory is replaced atomically: a crash
mid-write leaves the previous snapshot intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import structlog

from signals.pipeline import Pipeline

_log = structlog.get_logger(__name__)

VERSION = 1


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


def save_snapshot(pipeline: Pipeline, directory: Path, taken_at: float) -> None:
    """Write the pipeline's state to `directory`, replacing any previous snapshot atomically."""
    snap = pipeline.snapshot()
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
        _table(arrays).write_parquet(tmp / f"engine-{name}.parquet")
        meta["engines"][name] = engine_meta
    for name, (symbols, arrays) in snap["aggregators"].items():
        _table(arrays).write_parquet(tmp / f"aggregate-{name}.parquet")
        meta["aggregators"][name] = symbols
    meta["book"] = snap["book"]
    _fsync_write(tmp / "meta.json", json.dumps(meta).encode())
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    _log.info("snapshot.saved", path=str(directory), symbols=len(pipeline.daily.symbols))


def load_snapshot(pipeline: Pipeline, directory: Path) -> float | None:
    """Restore `pipeline` from `directory`; the snapshot's time, or None if there is none usable."""
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != VERSION:
            raise ValueError(f"snapshot version {meta.get('version')}, expected {VERSION}")
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
        _log.warning("snapshot.ignored", path=str(directory), reason=str(exc))
        return None
    _log.info("snapshot.restored", path=str(directory), taken_at=meta["taken_at"])
    return float(meta["taken_at"])
