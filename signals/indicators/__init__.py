"""Incremental, columnar indicators: one row of state per symbol.

Every indicator follows one contract (see `Columnar`):

- `update(rows, ...)` advances the rows named by `rows` (unique row indices)
  by one closed bar, vectorised, and returns their values;
- `peek(rows, ...)` returns what `update` would return, without mutating;
- values are NaN until warmed up, never a fake 0.0;
- `reset(rows)` makes those rows equal to fresh ones; `resize(n)` adds rows.

Each module also holds the polars batch reference of its indicator
(`*_batch`), seeded exactly like TA-Lib; tests prove streaming == batch.
"""
