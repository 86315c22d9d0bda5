"""Benchmark 3: end-to-end alert latency on loopback, frame written -> alert received over MQTT.

The path is the whole daemon (`run_daemon` with a real config): a local
Alpaca-protocol websocket server (`ReplayHarness`, frames pushed with
`send_raw`) -> Alpaca feed -> pipeline -> outbox (SQLite, WAL, synchronous =
FULL, on the temp directory's disk) -> MQTT delivery loop -> a throwaway real
Mosquitto -> an aiomqtt subscriber. One rule fires on every closed IWM 1m bar;
each frame holds one minute of IWM, SPY and QQQ, and frames are paced (one
every `PACE_S`), so this measures latency, not queueing. Latency = subscriber
receive - frame write, both `time.perf_counter_ns` in this process; an alert
is matched to its frame by its bar time.

Two placements of the daemon: in this process (one event loop with the
server and the subscriber), and in a child process (`python -m bench.latency
--daemon`), so the subscriber's receive stamp is not held up by the
daemon's own work in the shared loop. The daemon's seams are stamped through
`run_daemon(on_ingest=...)`: pipeline in/out, `outbox.record`, the delivery
loop's `outbox.claim` and `outbox.delivered`. `perf_counter` is
CLOCK_MONOTONIC, one clock for every process on Linux, so the child's stamps
line up with the parent's. A third run keeps the state on tmpfs, where fsync
costs nothing, to show what the disk adds.

    python -m bench.latency [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import logging
import os
import pstats
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import structlog

from bench.common import (
    LINKED,
    alpaca_frames,
    fmt_time,
    median,
    minute_times,
    p99,
    random_walk,
    sessions,
    table,
    yes_no,
)
from bench.latency_probe import Probe, clock
from daemon.config import load_config
from daemon.feeds.replay import frame_from_rows
from daemon.logs import configure_logging
from daemon.secrets import Secrets
from daemon.service import run_daemon
from daemon.warmup import Warmup
from tests.daemon.feeds.replay_harness import ReplayHarness
from tests.daemon.sinks.mosquitto import Mosquitto

PACE_S = 0.020  # one minute-batch (3 bars) every 20 ms
WARM_FRAMES = 40  # not measured: the first waits for the whole path to be up
# The daemon starts warmed, as `run` does from the provider's REST history: daily bars,
# then a session of minutes, so the engines take their warm paths from the first frame.
WARM_DAILY = 300
WARM_MINUTE_SESSIONS = 1
FIRST_LIVE_SESSION = WARM_DAILY + WARM_MINUTE_SESSIONS
QUICK_ALERTS = 200  # --quick: 3 runs x (40 + 200) frames x 20 ms keeps the suite under a minute
FULL_ALERTS = 2000
TARGET_P99_S = 2e-3
DISK = "/var/tmp"  # a real file system, as the daemon's state dir would be
TMPFS = "/dev/shm"  # fsync is free here: the same run without the disk's cost
ALERTS_TOPIC = "iwm-alerts/alerts"

RULES = """
[[rule]]
name = "every_bar"
operator = "greater_than"
timeframe = "1m"
value = "close"
threshold = 0.0
symbols = ["IWM"]
title = "{symbol} 1m close {value:.2f}"
"""

CONFIG = """
[feed]
provider = "replay"
url = "{url}"
rest_url = "{rest_url}"
symbols = ["IWM", "SPY", "QQQ"]

[rules]
file = "{rules}"

[sinks.console]
enabled = false

[sinks.mqtt]
url = "mqtt://127.0.0.1:{port}"
qos = {qos}

[state]
dir = "{state}"

[health]
enabled = false
"""

STAGES = (
    ("write -> pipeline in", "websocket, decode, validate, feed loop", "write", "pipe_in"),
    ("pipeline", "engine + rules (3 bars)", "pipe_in", "pipe_out"),
    ("pipeline out -> outbox.record in", "alert filter", "pipe_out", "record_in"),
    ("outbox.record", "SQLite txn + fsync, rule state JSON", "record_in", "record_out"),
    ("record out -> claim in", "log line, states, delivery-loop wake-up", "record_out", "claim_in"),
    ("outbox.claim", "SQLite txn, no fsync", "claim_in", "claim_out"),
    ("claim out -> subscriber", "publish, broker, subscriber", "claim_out", "received"),
)


def _log_to(path: Path) -> io.TextIOWrapper:
    """JSON log lines at info, as the daemon writes them in production, to a file."""
    stream = path.open("a", encoding="utf-8")
    configure_logging(json=True, level="info", stream=stream)
    return stream


async def _daemon(config_path: Path, stop: asyncio.Event, probe: Probe) -> None:
    config = load_config(config_path)
    await run_daemon(
        config,
        Secrets.load(config),
        stop,
        realtime=False,
        warmup=_history(),
        on_ingest=probe.install,
        drain_timeout_s=5.0,
    )


async def _child(config_path: Path, probe_path: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    probe = Probe()
    await _daemon(config_path, stop, probe)
    probe_path.write_text(probe.dump())


# -- the bench side: server, subscriber, pacing -----------------------------------------------


@dataclass
class Run:
    """One run's stamps: frame writes and receives (this process) plus the daemon's seams."""

    placement: str
    write: dict[int, int]
    received: dict[int, int]
    duplicates: int
    probe: Probe
    measured: list[int]  # bar times of the measured frames
    load: float  # 1-minute load average when the run started: other work on the machine

    def latencies_s(self) -> list[float]:
        return [
            (self.received[t] - self.write[t]) / 1e9 for t in self.measured if t in self.received
        ]

    def stage_s(self, start: str, end: str) -> list[float]:
        seams = {**self.probe.stamps, "write": self.write, "received": self.received}
        a, b = seams.get(start, {}), seams.get(end, {})
        return [(b[t] - a[t]) / 1e9 for t in self.measured if t in a and t in b]


class Subscriber:
    """An aiomqtt client on the alerts topic; stamps each message as it is handed over."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: dict[int, int] = {}
        self.duplicates = 0
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="bench-latency") as client:
            await client.subscribe(ALERTS_TOPIC, qos=1)
            self.ready.set()
            async for message in client.messages:
                t = clock()
                payload = message.payload
                assert isinstance(payload, bytes | bytearray)
                bar_time = int(json.loads(payload)["bar_time"])
                if bar_time in self.received:
                    self.duplicates += 1
                else:
                    self.received[bar_time] = t
                self.changed.set()

    async def wait_for(self, bar_times: list[int], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not all(t in self.received for t in bar_times):
                self.changed.clear()
                await self.changed.wait()


def _write_config(tmp: Path, server: ReplayHarness, broker_port: int, qos: int) -> Path:
    rules = tmp / "rules.toml"
    rules.write_text(RULES)
    path = tmp / "config.toml"
    path.write_text(
        CONFIG.format(
            url=server.url,
            rest_url=server.rest_url,
            rules=rules,
            port=broker_port,
            qos=qos,
            state=tmp / "state",
        )
    )
    return path


async def _pump(
    server: ReplayHarness, sub: Subscriber, frames: list[bytes], times: list[int]
) -> dict[int, int]:
    """Frame 0 alone until its alert arrives (the path is up), then every frame on a fixed
    schedule, `PACE_S` apart. Returns the write stamp of every frame by bar time."""
    async with asyncio.timeout(60):
        while server.last_subscription is None:
            await asyncio.sleep(0.01)
    write: dict[int, int] = {}
    write[times[0]] = clock()
    if await server.send_raw(frames[0]) != 1:
        raise RuntimeError("the daemon is not subscribed")
    await sub.wait_for([times[0]], 30.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(1, len(frames)):
        await asyncio.sleep(max(0.0, start + i * PACE_S - loop.time()))
        write[times[i]] = clock()
        if await server.send_raw(frames[i]) != 1:
            raise RuntimeError(f"frame {i} reached no client")
    await sub.wait_for(times, 30.0)
    return write


def _history() -> Warmup:
    """The warm-up history: `WARM_DAILY` daily bars, then `WARM_MINUTE_SESSIONS` of minutes,
    all before the first live frame (seeded: the subprocess daemon builds the same)."""
    table_ = sessions(FIRST_LIVE_SESSION + 12)
    daily = random_walk(table_.label[:WARM_DAILY], len(LINKED), 4, 0.015).frame()
    times = minute_times(table_, 390 * WARM_MINUTE_SESSIONS, WARM_DAILY)
    return Warmup(daily=daily, minutes=random_walk(times, len(LINKED), 5).frame())


def _market(n_frames: int) -> tuple[list[bytes], list[int]]:
    table_ = sessions(n_frames // 390 + FIRST_LIVE_SESSION + 12)
    times = minute_times(table_, n_frames, FIRST_LIVE_SESSION)
    market = random_walk(times, len(LINKED), seed=3)
    return alpaca_frames(market), [int(t) for t in times]


async def _in_process(
    config_path: Path, pump: Callable[[], Coroutine[Any, Any, dict[int, int]]]
) -> tuple[dict[int, int], Probe]:
    """The daemon as a task of this event loop."""
    probe, stop = Probe(), asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        daemon = tg.create_task(_daemon(config_path, stop, probe), name="bench.daemon")
        try:
            write = await pump()
        finally:
            stop.set()
        await daemon
    return write, probe


async def _in_child(
    config_path: Path, pump: Callable[[], Coroutine[Any, Any, dict[int, int]]]
) -> tuple[dict[int, int], Probe]:
    """The daemon alone in a child process, stopped with SIGTERM; its stamps come back as JSON.
    A child that dies early fails the run at once, with its stderr."""
    tmp = config_path.parent
    with (tmp / "daemon.stderr").open("wb") as err:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.latency", "--daemon", str(config_path),
            str(tmp / "probe.json"), str(tmp / "daemon.log"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        try:
            async with asyncio.TaskGroup() as tg:
                pumping = tg.create_task(pump(), name="bench.pump")
                exited = tg.create_task(child.wait(), name="bench.child")
                await asyncio.wait([pumping, exited], return_when=asyncio.FIRST_COMPLETED)
                if exited.done():
                    pumping.cancel()
                    raise RuntimeError(f"the daemon exited early with {exited.result()}")
                exited.cancel()
            write = pumping.result()
        except Exception as exc:
            tail = (tmp / "daemon.stderr").read_text(errors="replace")[-3000:]
            exc.add_note(f"daemon stderr:\n{tail}")
            raise
        finally:
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(child.wait(), 30)
    if code != 0:
        tail = (tmp / "daemon.stderr").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the daemon exited with {code}:\n{tail}")
    return write, Probe.load((tmp / "probe.json").read_text())


async def run_once(
    n_alerts: int,
    placement: str,
    state_root: str = DISK,
    profile: cProfile.Profile | None = None,
    qos: int = 2,
) -> Run:
    """One run: `WARM_FRAMES` + `n_alerts` frames through the daemon `placement`d
    in this process ("in-process") or a child ("subprocess"), its state (the outbox)
    under `state_root`, alerts at MQTT `qos`. `profile` is enabled while the frames
    are pumped."""
    frames, times = _market(WARM_FRAMES + n_alerts)
    load = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(prefix="iwm-bench-latency-", dir=state_root) as tmp_name,
        Mosquitto(Path(tmp_name) / "broker") as broker,
    ):
        async with ReplayHarness(frame_from_rows([])) as server, asyncio.TaskGroup() as tg:
            config_path = _write_config(Path(tmp_name), server, broker.port, qos)
            sub = Subscriber(broker.port)
            listener = tg.create_task(sub.run(), name="bench.subscriber")
            await asyncio.wait_for(sub.ready.wait(), 10)

            async def pump() -> dict[int, int]:
                if profile is not None:
                    profile.enable()
                try:
                    return await _pump(server, sub, frames, times)
                finally:
                    if profile is not None:
                        profile.disable()

            place = _in_process if placement == "in-process" else _in_child
            write, probe = await place(config_path, pump)
            listener.cancel()
    where = "state on disk" if state_root == DISK else "state on tmpfs: no fsync cost"
    return Run(
        f"{placement}, {where}, QoS {qos}" + (" (the default)" if qos == 2 else ""),
        write,
        sub.received,
        sub.duplicates,
        probe,
        times[WARM_FRAMES:],
        load,
    )


# -- report -----------------------------------------------------------------------------------


def _in_logging(log_path: Path) -> Callable[[], None]:
    """Configure production logging for the in-process daemon; returns the undo."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = _log_to(log_path)

    def undo() -> None:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
        structlog.reset_defaults()
        stream.close()

    return undo


# (placement, state root, MQTT QoS). The default is QoS 2 (exactly once): the QoS 1
# run shows what its extra round trip costs; the full run only, to keep --quick short.
VARIANTS = (("in-process", DISK, 2), ("subprocess", DISK, 2), ("in-process", TMPFS, 2))
FULL_ONLY = (("in-process", DISK, 1),)


def measure(n_alerts: int, log: Callable[[str], None], quick: bool = False) -> list[Run]:
    runs = []
    for placement, root, qos in VARIANTS + (() if quick else FULL_ONLY):
        if not Path(root).is_dir():
            log(f"latency: no {root}, skipping that variant")
            continue
        log(
            f"latency: daemon {placement}, state under {root}, QoS {qos}, "
            f"{WARM_FRAMES} + {n_alerts} frames"
            f" every {PACE_S * 1e3:.0f} ms"
        )
        with tempfile.NamedTemporaryFile(prefix="iwm-bench-latency-", suffix=".log") as logf:
            undo = _in_logging(Path(logf.name)) if placement == "in-process" else (lambda: None)
            try:
                runs.append(asyncio.run(run_once(n_alerts, placement, root, qos=qos)))
            finally:
                undo()
    return runs


def _fs_type(path: str) -> str:
    """The file system type of the mount holding `path` (from /proc/mounts), or "?"."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "?"
    best = ("", "?")
    for m in mounts:
        if len(m) >= 3 and (path == m[1] or path.startswith(m[1].rstrip("/") + "/")):
            best = max(best, (m[1], m[2]), key=lambda x: len(x[0]))
    return best[1]


def report(runs: list[Run], quick: bool) -> str:
    rows: list[list[str]] = []
    for run in runs:
        lat = run.latencies_s()
        n = len(run.measured)
        if len(lat) != n or run.duplicates:
            raise AssertionError(
                f"{run.placement}: {len(lat)} of {n} alerts received, {run.duplicates} duplicates"
            )
        rows.append(
            [
                f"**frame written -> alert at subscriber, daemon {run.placement}** "
                f"({n} alerts, load avg {run.load:.1f} at start)",
                fmt_time(median(lat)),
                fmt_time(p99(lat)),
                fmt_time(max(lat)),
                "p99 ≤ 2 ms",
                yes_no(p99(lat) <= TARGET_P99_S),
            ]
        )
        for name, what, a, b in STAGES:
            xs = run.stage_s(a, b)
            rows.append(
                [
                    f"  {name} ({what})",
                    fmt_time(median(xs)),
                    fmt_time(p99(xs)),
                    fmt_time(max(xs)) if xs else "-",
                    "-",
                    "-",
                ]
            )
        after = run.stage_s("received", "delivered")
        rows.append(
            [
                "  (after) subscriber -> outbox.delivered (2nd topic, PUBACKs, txn, no fsync)",
                fmt_time(median(after)),
                fmt_time(p99(after)),
                fmt_time(max(after)) if after else "-",
                "-",
                "-",
            ]
        )
    n = len(runs[0].measured)
    title = (
        f"3. End-to-end alert latency on loopback ({n} alerts, one 3-bar frame every "
        f"{PACE_S * 1e3:.0f} ms{', QUICK sizes' if quick else ''})"
    )
    note = (
        f"\nThe daemon starts warmed, as `run` does: {WARM_DAILY} daily bars and "
        f"{WARM_MINUTE_SESSIONS} session(s) of minutes before the first frame. "
        "Stage rows: p50/p99/max of each leg on its own (they do not add up to the end-to-end "
        f"p99). State (outbox: SQLite WAL, record with synchronous = FULL, delivery marks NORMAL) under {DISK} ({_fs_type(DISK)}) "
        f"or {TMPFS} ({_fs_type(TMPFS)}); JSON logs at info, as in production. In-process: "
        "server, daemon and subscriber share one event loop; subprocess: the daemon alone in a "
        "child (`python -m bench.latency --daemon`), every stamp on the one CLOCK_MONOTONIC. "
        f"The machine has {os.cpu_count()} CPUs: a load average near or above that (other "
        "processes) shows in the p99 and max, much less in the p50.\n"
    )
    return table(title, ["case", "p50", "p99", "max", "target", "met"], rows) + note


def main(quick: bool, log: Callable[[str], None]) -> str:
    return report(measure(QUICK_ALERTS if quick else FULL_ALERTS, log, quick), quick)


def _profile(n_alerts: int) -> str:
    prof = cProfile.Profile()
    with tempfile.NamedTemporaryFile(suffix=".log") as logf:
        undo = _in_logging(Path(logf.name))
        try:
            asyncio.run(run_once(n_alerts, "in-process", DISK, prof))
        finally:
            undo()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    # The daemon's own path, and the libraries it calls, by cumulative time.
    stats.sort_stats("cumulative").print_stats(r"daemon/|signals/|aiomqtt|paho|websockets", 45)
    return out.getvalue()


def _cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile one in-process run")
    ap.add_argument("--daemon", nargs=3, metavar=("CONFIG", "PROBE_OUT", "LOG"), help="internal")
    args = ap.parse_args(argv)
    if args.daemon:
        config, probe_out, log_path = (Path(p) for p in args.daemon)
        _log_to(log_path)
        asyncio.run(_child(config, probe_out))
        return 0
    n = QUICK_ALERTS if args.quick else FULL_ALERTS
    if args.profile:
        print(_profile(n))
        return 0
    print(main(args.quick, lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
