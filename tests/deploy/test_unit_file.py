"""deploy/iwm-alerts.service: the directives the daemon relies on, `systemd-analyze verify`
and the `systemd-analyze security --offline=true` exposure (<= 2.0, the design's bar)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from daemon.secrets import SECRET_NAMES

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "iwm-alerts.service"
MAX_EXPOSURE = 2.0
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value assigned, in order (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):  # a continuation line
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=VALUE line: {raw!r}"
        sections[section][key.strip()].append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit: dict[str, dict[str, list[str]]], key: str, section: str = "Service") -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def test_notify_watchdog_and_restart(unit: dict[str, dict[str, list[str]]]) -> None:
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert one(unit, "WatchdogSec") == "60"
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "RestartSec")
    assert one(unit, "ExecStart") == (
        "/opt/iwm-alerts/.venv/bin/iwm-alerts run --config /etc/iwm-alerts/config.toml"
    )
    assert one(unit, "WantedBy", "Install") == "multi-user.target"
    assert "network-online.target" in one(unit, "After", "Unit")


def test_user_directories_and_credentials(unit: dict[str, dict[str, list[str]]]) -> None:
    assert one(unit, "DynamicUser") == "yes"
    assert one(unit, "StateDirectory") == "iwm-alerts"
    assert one(unit, "ConfigurationDirectory") == "iwm-alerts"
    assert one(unit, "UMask") == "0077"
    creds = dict(v.split(":", 1) for v in unit["Service"]["LoadCredential"])
    assert set(creds) == {
        "TELEGRAM_BOT_TOKEN",
        "ALPACA_API_KEY",
        "ALPACA_API_SECRET",
        "MASSIVE_API_KEY",
        "FINNHUB_API_KEY",
        "MQTT_PASSWORD",
    }
    assert set(creds) <= set(SECRET_NAMES)  # names the daemon looks up in $CREDENTIALS_DIRECTORY
    # Bare credential names are searched in /etc/credstore and skipped when missing; an
    # absolute path that does not exist would stop the service from starting.
    assert all(not path.startswith("/") for path in creds.values())


HARDENING = {
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "DevicePolicy": "closed",
    "ProcSubset": "pid",
    "ProtectProc": "invisible",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
}


@pytest.mark.parametrize(("key", "value"), sorted(HARDENING.items()))
def test_hardening_directive(unit: dict[str, dict[str, list[str]]], key: str, value: str) -> None:
    assert one(unit, key) == value


def test_syscall_filter_and_network(unit: dict[str, dict[str, list[str]]]) -> None:
    filters = unit["Service"]["SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert one(unit, "SystemCallErrorNumber") == "EPERM"
    # Outbound internet stays open (providers, Telegram, FRED behind CDNs): no deny-all.
    assert not any("any" in v.split() for v in unit["Service"].get("IPAddressDeny", []))


def test_polars_cpu_check_is_skipped_under_mdwe(unit: dict[str, dict[str, list[str]]]) -> None:
    # polars' import-time CPU check makes memory executable, which MemoryDenyWriteExecute refuses.
    env = " ".join(unit["Service"]["Environment"]).split()
    assert "POLARS_SKIP_CPU_CHECK=1" in env


def run_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "--no-pager", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # The venv of /opt/iwm-alerts is not installed here: point ExecStart at a binary that is.
    true = shutil.which("true")
    assert true is not None
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={true}", UNIT.read_text())
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    proc = run_analyze("verify", str(copy))
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if UNIT.name in line]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ours == []


@needs_systemd_analyze
def test_systemd_analyze_verify_original_only_misses_the_binary() -> None:
    proc = run_analyze("verify", str(UNIT))
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if UNIT.name in line]
    # The one complaint allowed here: /opt/iwm-alerts/.venv/bin/iwm-alerts is not installed.
    assert all("is not executable" in line for line in ours), ours


@needs_systemd_analyze
def test_systemd_analyze_security_exposure() -> None:
    proc = run_analyze("security", "--offline=true", str(UNIT))
    out = proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for iwm-alerts\.service: (\d+(?:\.\d+)?)", out)
    assert match is not None, out
    assert float(match.group(1)) <= MAX_EXPOSURE, out
