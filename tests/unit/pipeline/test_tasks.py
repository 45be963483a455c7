"""Cancelling background tasks so that they end, whatever the Python version drops."""

from __future__ import annotations

import asyncio
import contextlib

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
    stopping = asyncio.create_task(cancel_and_wait(task))
    try:
        done, _ = await asyncio.wait({stopping}, timeout=1.0)

        assert stopping in done
        assert task.cancelled()
        assert rounds == 2  # the first cancel was dropped indeed
    finally:
        for leftover in (stopping, task, stopping, task):
            leftover.cancel()
            await asyncio.sleep(0)


async def test_a_task_stopping_its_own_task_finishes_that_stop_when_cancelled_again() -> None:
    # The enricher's consumer task ends by stopping its lag refresh; a stop that times out
    # cancels the consumer again while it waits for that refresh to end.
    async def refresh() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # dropped, as 3.11's wait_for may
            await asyncio.sleep(10)
        await asyncio.sleep(10)

    lag = asyncio.create_task(refresh())

    async def consume() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await cancel_and_wait(lag)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)

    await asyncio.wait_for(cancel_and_wait(consumer), 1.0)

    assert consumer.cancelled()
    assert lag.cancelled()


async def test_cancel_and_wait_logs_a_task_that_had_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing() -> None:
        raise RuntimeError("broken")

    task = asyncio.create_task(failing(), name="checker")
    await asyncio.sleep(0)

    await cancel_and_wait(task)

    assert "checker ended on an error: RuntimeError('broken')" in caplog.text
