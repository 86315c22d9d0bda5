"""deploy/iwm-alerts.service: exit codes a restart cannot fix, the start timeout of a
daemon that is READY before its network dependencies answer, and a journal that only
gets the JSON log lines."""

from __future__ import annotations

import pytest

from daemon.fatal import ExitCode
from daemon.secrets import SECRET_NAMES
from tests.deploy.test_unit_file import UNIT, one, parse_unit

Unit = dict[str, dict[str, list[str]]]


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text())


def test_exit_codes_a_restart_cannot_fix_stop_the_restarts(unit: Unit) -> None:
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "RestartPreventExitStatus").split() == ["2", "3", "5"]


def test_the_exit_codes_are_the_daemons() -> None:
    codes = {code.name: int(code) for code in ExitCode}
    assert codes == {
        "OK": 0,
        "BUG": 1,
        "CONFIG": 2,
        "CREDENTIALS": 3,
        "LOCAL": 4,
        "FEED_GAVE_UP": 5,
    }


def test_ready_does_not_wait_for_the_network(unit: Unit) -> None:
    assert int(one(unit, "TimeoutStartSec")) <= 120
    assert "warm-up" not in UNIT.read_text().lower()


def test_only_json_logs_reach_the_journal(unit: Unit) -> None:
    assert one(unit, "StandardOutput") == "null"  # the console sink's text
    assert one(unit, "StandardError") == "journal"  # not inherit: that would be null too


def test_every_secret_the_daemon_reads_is_loaded(unit: Unit) -> None:
    names = {value.split(":", 1)[0] for value in unit["Service"]["LoadCredential"]}
    assert names == set(SECRET_NAMES)
