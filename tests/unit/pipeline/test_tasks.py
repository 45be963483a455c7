"""Cancelling background tasks so that they end, whatever the Python version drops."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.tasks import cancel_and_wait


async def test_cancel_and_wait_ends_a_loop_whose_cancel_was_dropped() -> None:
    # On Python 3.11 `asyncio.wait_for` returns the result, instead of raising, when the
    # cancel arrives in the same pass of the loop as the result: the loop below goes on.
    loop = asyncio.get_running_loop()
    first: asyncio.Future[int] = loop.create_future()
    rounds = 0

    async def background() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            await asyncio.wait_for(first if rounds == 1 else loop.create_future(), 10)

    task = asyncio.create_task(background(), name="background")
    await asyncio.sleep(0)  # it waits for `first`
    first.set_result(1)  # the cancel below arrives with it, and is dropped

    await asyncio.wait_for(cancel_and_wait(task), 1.0)

    assert task.cancelled()


async def test_cancel_and_wait_logs_a_task_that_had_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing() -> None:
        raise RuntimeError("broken")

    task = asyncio.create_task(failing(), name="checker")
    await asyncio.sleep(0)

    await cancel_and_wait(task)

    assert "checker ended on an error: RuntimeError('broken')" in caplog.text
