"""keep_cancel: a cancel that asyncio.wait_for swallows (Python 3.11) is still honoured."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest

from daemon.aio import keep_cancel


async def _cancel_as_it_completes(wrap: bool) -> asyncio.Task[int]:
    """Cancel a task in the very loop turn its wait_for future completes: the 3.11 race."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()

    async def body() -> int:
        waiting = asyncio.wait_for(fut, 10)
        return await (keep_cancel(waiting) if wrap else waiting)

    task = asyncio.create_task(body())
    await asyncio.sleep(0)  # the task now waits inside wait_for
    fut.set_result(7)
    task.cancel()
    await asyncio.wait([task])
    return task


async def test_the_race_is_real_without_the_guard() -> None:
    task = await _cancel_as_it_completes(wrap=False)
    if sys.version_info >= (3, 12):  # wait_for was rebuilt on asyncio.timeout there
        assert task.cancelled()
    else:
        assert not task.cancelled() and task.result() == 7  # the cancel was lost
        assert task.cancelling() == 1  # ...but still counted


async def test_keep_cancel_re_raises_a_swallowed_cancel() -> None:
    task = await _cancel_as_it_completes(wrap=True)
    assert task.cancelled()


async def test_keep_cancel_passes_results_and_errors_through() -> None:
    assert await keep_cancel(asyncio.sleep(0, result="ok")) == "ok"

    async def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await keep_cancel(fails())


async def test_an_older_settled_cancel_does_not_count() -> None:
    async def body() -> str:
        with contextlib.suppress(asyncio.CancelledError):  # taken without uncancel(): stays 1
            await asyncio.sleep(10)
        return await keep_cancel(asyncio.sleep(0, result="after"))

    task = asyncio.create_task(body())
    await asyncio.sleep(0)
    task.cancel()
    assert await task == "after"


async def test_a_timeout_that_fires_in_the_race_becomes_timeout_error() -> None:
    """Under asyncio.timeout the re-raised cancel turns into TimeoutError, as it should."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()

    async def body() -> str:
        try:
            async with asyncio.timeout(0.05):
                await keep_cancel(asyncio.wait_for(fut, 10))
        except TimeoutError:
            return "timed out"
        return "completed"

    loop.call_later(0.05, lambda: None if fut.done() else fut.set_result(1))
    assert await body() in ("timed out", "completed")  # never a stray CancelledError
