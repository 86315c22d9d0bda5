"""asyncio helpers the standard library of Python 3.11 lacks.

`keep_cancel` exists because of one race: `asyncio.wait_for` in Python 3.11
returns its future's result, and drops the `cancel()`, when the cancel lands
in the same loop turn as the future completes (gh-86296; 3.12 rebuilt
`wait_for` on `asyncio.timeout` and fixed it). aiomqtt waits for every PUBACK
that way, so a task cancelled just as the broker confirms a publish carried on
as if nothing happened: at shutdown the daemon then waited for it forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def keep_cancel(awaitable: Awaitable[T]) -> T:
    """Await `awaitable`; if this task was cancelled meanwhile and the callee swallowed it, re-raise.

    `Task.cancelling()` counts cancel requests that were not taken back with
    `uncancel()`, so a cancel that a library ate still shows there. Comparing
    with the count before the call leaves older, settled requests alone.
    """
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await awaitable
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result
