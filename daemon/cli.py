"""The `iwm-alerts` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from daemon import history, runner
from daemon.backtest import BacktestOptions, run_backtest, write_outputs
from daemon.bars import BarFileError, load_bars
from daemon.config import check_config_main, load_config
from daemon.config_errors import ConfigError
from daemon.fatal import ExitCode, Fatal, find_fatal
from daemon.fred import RatesFileError, read_fred_csv
from daemon.logs import on_journal
from daemon.report import summary_lines, write_report
from daemon.rules_file import load_rules
from daemon.sample import sample_daily
from daemon.secrets import SecretError
from signals.engine import EngineConfig, Links
from signals.rules.spec import RuleError


def _version() -> str:
    try:
        return version("iwm-alerts")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iwm-alerts",
        description="Streaming signal alerts for small-cap rotation (IWM vs SPY/QQQ).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bt = sub.add_parser(
        "backtest",
        help="run bar files through the engine and write indicators.csv",
        description="Run bar files (CSV or parquet) through the incremental engine and write "
        "DIR/indicators.csv with one row per symbol-bar.",
    )
    src = bt.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--bars",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="bar files: date|timestamp, open, high, low, close, volume; symbol column or file stem",
    )
    src.add_argument(
        "--sample",
        action="store_true",
        help="use the bundled synthetic IWM/SPY/QQQ daily sample (no files needed)",
    )
    bt.add_argument(
        "--timeframe",
        choices=["1d", "1m"],
        default="1d",
        help="timeframe of the input bars (default 1d); 1m runs the intraday path",
    )
    bt.add_argument(
        "--rules", type=Path, metavar="FILE", help="rules TOML replacing the bundled defaults"
    )
    bt.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    bt.add_argument(
        "--rates",
        type=Path,
        metavar="FILE",
        help="FRED CSV of the 2-year yield (observation_date,DGS2) for the rates signal",
    )
    bt.add_argument("--benchmark", default="SPY", help="relative-strength benchmark (default SPY)")
    bt.add_argument("--comparator", default="QQQ", help="breadth comparator (default QQQ)")
    bt.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    bt.add_argument(
        "--daily-bars", nargs="+", type=Path, metavar="PATH",
        help="with --timeframe 1m: daily bars that warm the daily timeframe up (days before the first minute)",
    )  # fmt: skip

    hi = sub.add_parser(
        "history",
        help="download bars from a provider's REST API into parquet files for backtest",
        description="Download bars into OUT/SYMBOL_TIMEFRAME.parquet (backtest --bars reads "
        "them). A second run fetches only what the files lack. Keys as for run: environment "
        "or systemd credentials.",
    )
    hi.add_argument("--provider", required=True, choices=history.providers())
    hi.add_argument("--symbols", nargs="+", required=True, metavar="SYMBOL")
    hi.add_argument("--timeframe", choices=["1m", "1d"], default="1d", help="default 1d")
    hi.add_argument("--start", required=True, metavar="DATE", help="YYYY-MM-DD (UTC)")
    hi.add_argument("--end", metavar="DATE", help="YYYY-MM-DD, inclusive (default: now)")
    hi.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    hi.add_argument("--rest-url", metavar="URL", help="the REST base URL (default: the provider's)")
    hi.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    cc = sub.add_parser(
        "check-config",
        help="validate a config file (and its rules file) and exit",
        description="Validate the TOML config once, as the daemon would at start-up: exit 0 with a "
        "summary, or 2 with the offending key and file named.",
    )
    cc.add_argument("--config", type=Path, required=True, metavar="PATH", help="the config TOML")

    rn = sub.add_parser(
        "run",
        help="run the daemon on its configured feed",
        description="Run the daemon: feed, engine, rules, outbox and sinks, until SIGTERM. "
        'A restart resumes from the last snapshot. With feed.provider = "replay" it follows '
        "an external replay server at feed.url, in the replay's own time.",
    )
    rn.add_argument("--config", type=Path, required=True, metavar="PATH", help="the config TOML")

    rp = sub.add_parser(
        "replay",
        help="run the full daemon fed from bar files",
        description="Replay 1-minute bar files through a local Alpaca-protocol websocket "
        "server into the full daemon, with the sinks of the config.",
    )
    rp.add_argument(
        "--bars", nargs="+", type=Path, required=True, metavar="PATH", help="1-minute bar files"
    )
    rp.add_argument(
        "--speed", type=float, default=60.0, help="bar-minutes per second (0: as fast as possible)"
    )
    rp.add_argument("--config", type=Path, required=True, metavar="PATH", help="the config TOML")

    dm = sub.add_parser(
        "demo",
        help="the embedded default: a synthetic session, no keys, no network",
        description="Replay a bundled synthetic IWM/SPY/QQQ session through the whole daemon "
        "over a local websocket, print its alerts and how many each sink delivered. Exits 2 "
        "when a sink delivered none of them, 3 when the broker refused the login. With --mqtt "
        "it publishes under its own base topic and Home Assistant device (iwm-alerts-demo) "
        "and removes every retained message it published when it ends.",
    )
    dm.add_argument("--speed", type=float, default=30.0, help="bar-minutes per second (default 30)")
    dm.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    dm.add_argument(
        "--mqtt", metavar="URL", help="also publish to this broker, e.g. mqtt://127.0.0.1:1883"
    )
    dm.add_argument(
        "--mqtt-user", metavar="NAME", help="log in to the broker as NAME (password: MQTT_PASSWORD)"
    )
    dm.add_argument("--mqtt-qos", type=int, choices=(0, 1, 2), help="QoS of the alerts (default 2)")
    dm.add_argument(
        "--mqtt-ca", type=Path, metavar="FILE", help="CA certificate of an mqtts:// broker"
    )
    dm.add_argument("--out", type=Path, metavar="DIR", help="keep alerts.jsonl here")
    return p


def _check_config(args: argparse.Namespace) -> int:
    rc = check_config_main(args.config)
    if rc != 0:
        return rc
    specs = load_rules(load_config(args.config).rules.file)
    print(f"  rules enabled: {', '.join(s.name for s in specs if s.enabled)}")
    return 0


def _backtest(args: argparse.Namespace) -> int:
    paths: list[Path] = args.bars or []
    with tempfile.TemporaryDirectory() as tmp:
        if args.sample:
            paths = [Path(tmp) / "sample.csv"]
            sample_daily().write_csv(paths[0])
        bars = load_bars(paths)
    daily = load_bars(args.daily_bars) if args.daily_bars else None
    rates = read_fred_csv(args.rates) if args.rates else None
    rules = load_rules(args.rules)
    config = EngineConfig(links=Links(benchmark=args.benchmark, comparator=args.comparator))
    options = BacktestOptions(
        rates=rates, timeframe=args.timeframe,
        progress=False if args.no_progress else None, daily_history=daily,
    )  # fmt: skip
    result = run_backtest(bars, config, rules, options)
    paths = write_outputs(result, args.out)
    stats, report = write_report(result, args.out)
    for line in summary_lines(result, stats, report[0]):
        print(line)
    print("wrote " + ", ".join(p.name for p in [*paths, *report]) + f" in {args.out}")
    return 0


def _history(args: argparse.Namespace) -> int:
    end = args.end or datetime.now(UTC).isoformat(timespec="seconds")
    request = history.HistoryRequest(
        provider=args.provider,
        symbols=tuple(s.upper() for s in args.symbols),
        timeframe=args.timeframe,
        start_s=history.parse_time(args.start, "--start"),
        end_s=history.parse_time(end, "--end", end_of_day=True),
        out=args.out,
        rest_url=args.rest_url,
    )
    return history.history_main(request, progress=False if args.no_progress else None)


def _demo_mqtt(args: argparse.Namespace) -> runner.DemoMqtt | None:
    if args.mqtt is None:
        given = [f for f, v in (("--mqtt-user", args.mqtt_user), ("--mqtt-qos", args.mqtt_qos),
                                ("--mqtt-ca", args.mqtt_ca)) if v is not None]  # fmt: skip
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise Fatal(f"demo: {' and '.join(given)} {verb} --mqtt URL", ExitCode.CONFIG)
        return None
    return runner.DemoMqtt(args.mqtt, args.mqtt_user, args.mqtt_qos, args.mqtt_ca)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script. Exit codes: `daemon.fatal.ExitCode`."""
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except (BarFileError, RatesFileError, RuleError, ConfigError, SecretError) as exc:
        return _fail(str(exc), ExitCode.CONFIG)
    except Fatal as exc:
        return _fail(str(exc), exc.code)
    except BaseExceptionGroup as group:  # a task group around the daemon
        end = find_fatal(group)
        if end is None:
            raise
        return _fail(str(end), end.code)


def _fail(message: str, code: ExitCode) -> int:
    """The one line of an expected failure; on the journal at priority err (`<3>`)."""
    priority = "<3>" if on_journal(sys.stderr) else ""
    print(f"{priority}iwm-alerts: {message}", file=sys.stderr)
    return code


def _command(args: argparse.Namespace) -> int:
    if args.command == "backtest":
        return _backtest(args)
    if args.command == "history":
        return _history(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "run":
        return asyncio.run(runner.run(args.config))
    if args.command == "replay":
        return asyncio.run(runner.replay(args.config, args.bars, args.speed))
    if args.command == "demo":
        return asyncio.run(runner.demo(args.speed, args.duration, _demo_mqtt(args), args.out))
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
