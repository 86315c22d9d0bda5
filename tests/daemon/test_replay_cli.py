"""`iwm-alerts replay` needs no feed: `[feed]` is optional and ignored, no provider key asked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl

from tests.daemon.minute_market import minute_market
from tests.daemon.sinks.mosquitto import free_port

ROOT = Path(__file__).resolve().parents[2]


def _bars(tmp: Path) -> Path:
    df, _ = minute_market(n_sessions=1)
    path = tmp / "bars.csv"
    df.with_columns(
        pl.from_epoch("time", time_unit="s")
        .dt.replace_time_zone("UTC")
        .dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        .alias("timestamp")
    ).drop("time").write_csv(path)
    return path


def _replay(bars: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "MASSIVE_"))}
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", "replay", "--bars", str(bars), "--speed", "0",
         "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


def test_replay_with_a_config_without_feed(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[sinks.console]\nenabled = false\n[sinks.jsonl]\npath = "{tmp_path / "a.jsonl"}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n[health]\nenabled = false\n'
    )
    proc = _replay(_bars(tmp_path), config)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"replayed [1-9]\d* bars", proc.stderr)


def test_replay_with_the_example_config_asks_for_no_alpaca_keys(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "config.example.toml").read_text()
    assert 'provider = "alpaca"' in text
    text = text.replace('dir = "./state"', f'dir = "{tmp_path / "state"}"')
    text = text.replace("port = 9108", f"port = {free_port()}")
    config = tmp_path / "example.toml"
    config.write_text(text)
    proc = _replay(_bars(tmp_path), config)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ALPACA_API_KEY" not in proc.stderr
    assert re.search(r"replayed [1-9]\d* bars", proc.stderr)
