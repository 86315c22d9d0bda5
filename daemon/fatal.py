"""Expected failures that end the daemon: one clear line and a documented exit code.

A `Fatal` is raised where the daemon learns that going on cannot help (the
provider refused the keys, the health port is taken). Its message names what
to check (a secret's name, a config key), never a secret's value. The command
line prints it as `iwm-alerts: <message>` and exits with its code; the
systemd unit's `RestartPreventExitStatus=` lists the codes a restart cannot
fix. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes of `iwm-alerts` (README, Troubleshooting; deploy/iwm-alerts.service)."""

    OK = 0
    BUG = 1  # an unexpected exception: a traceback
    CONFIG = 2  # bad config, a missing secret, bad command-line input
    CREDENTIALS = 3  # a provider, the Bot API or the broker refused the credentials
    LOCAL = 4  # a local resource is unusable: health.port in use, state.dir not writable
    FEED_GAVE_UP = 5  # the feed stopped for good for another reason (plan, subscription)


class Fatal(Exception):
    """The daemon stops: `str(self)` is the one line to print, `code` the exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def find_fatal(exc: BaseException) -> Fatal | None:
    """The `Fatal` behind `exc`, looking inside (nested) exception groups: a task group
    that fails because one task raised `Fatal` raises a group around it. None when
    anything else is in there too: that is a bug, and keeps its traceback."""
    leaves = list(_leaves(exc))
    if leaves and all(isinstance(leaf, Fatal) for leaf in leaves):
        first = leaves[0]
        assert isinstance(first, Fatal)
        return first
    return None


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc
