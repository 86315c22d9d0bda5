"""signals/ stays within the complexity limits the rest of the code base is moving to.

The repository-wide ruff configuration still exempts the argument, branch,
return and statement counts (PLR0911-0917) while other packages are brought
under them; signals/ already is, and this keeps it so. Modules stay one
concept each, a few hundred lines at most.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400


def test_signals_is_clean_under_the_complexity_rules() -> None:
    rules = "PLR0911,PLR0912,PLR0913,PLR0915,PLR0917"
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", rules, "signals"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_signals_module_is_over_the_line_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / "signals").rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
