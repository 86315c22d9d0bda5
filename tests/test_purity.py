"""signals/ stays sans-I/O: no event loop, sockets, clocks or logging, and never imports daemon/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BANNED = {
    "asyncio", "socket", "ssl", "select", "selectors", "time", "logging", "structlog",
    "websockets", "httpx", "aiomqtt", "telegram", "sqlite3", "subprocess", "threading",
    "urllib", "http", "os", "io", "pathlib", "shutil", "daemon",
}  # fmt: skip


def test_signals_imports_nothing_with_io() -> None:
    offenders = []
    files = sorted((ROOT / "signals").rglob("*.py"))
    assert len(files) > 5
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in BANNED
            ]
    assert offenders == []
