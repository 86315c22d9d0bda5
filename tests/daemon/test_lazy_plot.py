"""matplotlib stays out of the daemon until a picture is asked for (issue 16).

Checked in fresh interpreters: the run path imported, and the whole daemon run
for a few seconds of `demo` (feed, engine, rules, outbox, sinks), leave
`sys.modules` without matplotlib; drawing a chart brings it in.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN_PATH = (
    "daemon.cli", "daemon.runner", "daemon.app", "daemon.service", "daemon.backend",
    "daemon.telegram.bot", "daemon.telegram.commands", "daemon.telegram.chart",
    "daemon.telegram.sink", "daemon.plot",
)  # fmt: skip
LOADED = "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"


def _python(code: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_the_run_path_does_not_import_matplotlib(tmp_path: Path) -> None:
    imports = "; ".join(f"import {m}" for m in RUN_PATH)
    assert _python(f"import sys; {imports}; {LOADED}", tmp_path) == "[]"


def test_a_running_daemon_does_not_import_matplotlib(tmp_path: Path) -> None:
    demo = "from daemon.cli import main; main(['demo', '--duration', '4', '--speed', '60'])"
    assert _python(f"import sys; {demo}; {LOADED}", tmp_path) == "[]"


def test_drawing_a_chart_does(tmp_path: Path) -> None:
    draw = (
        "import polars as pl; from daemon.telegram.chart import render_chart; "
        "render_chart('X', pl.DataFrame({'time': [0, 86400], 'open': [1.0, 2.0], "
        "'high': [2.0, 3.0], 'low': [0.5, 1.5], 'close': [1.5, 2.5]}), {})"
    )
    assert "matplotlib.figure" in _python(f"import sys; {draw}; {LOADED}", tmp_path)
