"""One config writer for the tests that run the whole daemon (in-process or as a subprocess)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def write_config(
    tmp: Path,
    *,
    feed: str,
    provider: str = "replay",
    rules: str | Path | None = None,
    symbols: Sequence[str] = ("IWM", "SPY", "QQQ"),
    backoff_s: tuple[float, float] = (0.05, 0.2),
    alerts: Path | None = None,
    state: str = "",
    health: bool = False,
    log: str | None = None,
    extra: str = "",
) -> Path:
    """`tmp/config.toml` for a daemon on loopback: the feed lines given (`url = ...`),
    `rules` (written to `tmp/rules.toml`), a JSONL sink (`alerts`, default
    `tmp/alerts.jsonl`), state under `tmp/state`, no console, health off unless
    asked, `log` as the `[log] level` (JSON) if given, then `extra` TOML verbatim.
    `rules` is the rules text, or the path of a rules file already written."""
    tmp.mkdir(parents=True, exist_ok=True)
    rules_line = ""
    if isinstance(rules, str):
        (tmp / "rules.toml").write_text(rules)
        rules = tmp / "rules.toml"
    if rules is not None:
        rules_line = f'[rules]\nfile = "{rules}"\n'
    listed = ", ".join(f'"{s}"' for s in symbols)
    parts = [
        f'[feed]\nprovider = "{provider}"\n{feed}\nsymbols = [{listed}]\n'
        f"backoff_initial_s = {backoff_s[0]}\nbackoff_max_s = {backoff_s[1]}\n",
        rules_line,
        "[sinks.console]\nenabled = false\n",
        f'[sinks.jsonl]\npath = "{alerts or tmp / "alerts.jsonl"}"\n',
        f'[state]\ndir = "{tmp / "state"}"\n{state}',
        "" if health or "[health]" in extra else "[health]\nenabled = false\n",
        "" if log is None else f'[log]\nlevel = "{log}"\nformat = "json"\n',
        extra,
    ]
    path = tmp / "config.toml"
    path.write_text("\n".join(p for p in parts if p))
    return path
