"""`iwm-alerts demo` on a fresh install: alerts from the volume, RSI and score rules within a minute."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def test_demo_prints_volume_rsi_and_score_alerts(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "demo",
            "--duration",
            "60",
            "--speed",
            "60",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60
    out = proc.stdout
    assert (
        "rule volume_breakout" in out
        and "rule rsi_entry_zone" in out
        and "rule score_cross_up" in out
    )
    assert "IWM volume breakout" in out
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    rules = {json.loads(line)["rule"] for line in lines}
    assert {"volume_breakout", "rsi_entry_zone", "score_cross_up"} <= rules
    assert "3 alerts" in proc.stderr
    assert "iwm-alerts demo: console 3, jsonl 3 alerts delivered" in proc.stderr
