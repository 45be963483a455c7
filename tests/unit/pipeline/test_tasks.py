"""Cancelling background tasks so that they end, whatever the Python version drops, and work
started again after an unexpected error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pipeline import logs, tasks
from pipeline.tasks import cancel_and_wait, restarting, until_done


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


async def test_restarting_starts_failing_work_again_after_a_doubling_pause(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tasks, "RESTART_S", 0.001)
    monkeypatch.setattr(tasks, "RESTART_MAX_S", 0.004)
    runs = 0
    failures: list[str] = []

    async def work() -> None:
        nonlocal runs
        runs += 1
        if runs <= 4:
            raise RuntimeError(f"broken {runs}")

    async def failed(failure: str) -> None:
        failures.append(failure)

    logger = logging.getLogger("test.restarting")
    with caplog.at_level(logging.ERROR, logger="test.restarting"):
        await asyncio.wait_for(restarting(work, what="work", logger=logger, failed=failed), 5)

    assert runs == 5  # returned once the work did
    assert failures == [
        f"work stopped on an error: RuntimeError('broken {n}')" for n in range(1, 5)
    ]
    assert [record.getMessage() for record in caplog.records] == [
        f"{failure}; starting it again in {delay:g} s"
        for failure, delay in zip(failures, (0.001, 0.002, 0.004, 0.004), strict=True)
    ]
    assert all(record.exc_info is not None for record in caplog.records)  # with the stack


async def test_restarting_is_cancelled_promptly_in_its_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks, "RESTART_S", 60.0)

    async def work() -> None:
        raise RuntimeError("broken")

    task = asyncio.create_task(restarting(work, what="work", logger=logging.getLogger("test")))
    for _ in range(5):
        await asyncio.sleep(0)  # failed, pausing
    assert not task.done()

    await asyncio.wait_for(cancel_and_wait(task), 1.0)

    assert task.cancelled()


async def test_restarting_starts_the_work_again_when_undoing_a_failed_run_fails_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Undoing what a failed run set up (closing a connection, say) may fail as well: the work
    # must still start again, or the service would never get through its start.
    monkeypatch.setattr(tasks, "RESTART_S", 0.001)
    runs = 0

    async def work() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("broken")

    async def failed(failure: str) -> None:
        raise OSError("cannot undo")

    logger = logging.getLogger("test.restarting")
    with caplog.at_level(logging.ERROR, logger="test.restarting"):
        await asyncio.wait_for(restarting(work, what="work", logger=logger, failed=failed), 5)

    assert runs == 2
    assert [record.getMessage() for record in caplog.records] == [
        "work stopped on an error: RuntimeError('broken'); starting it again in 0.001 s",
        "work: undoing it failed: OSError('cannot undo')",
    ]


def answering(answers: list[Exception | None]) -> Callable[[], Awaitable[None]]:
    """A step that raises each of `answers` in turn (taking it out), and returns at a None."""

    async def step() -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    return step


LOGGER = logging.getLogger("test.until_done")


async def waited_on(
    step: Callable[[], Awaitable[None]],
    caplog: pytest.LogCaptureFixture,
    *,
    level: int = logging.WARNING,
    what: str = "x",
    waiting: Callable[[str], None] = lambda _: None,
    retry_s: float = 0.0,
    errors: tuple[type[Exception], ...] = (OSError,),
    **options: Any,
) -> None:
    """until_done on `step` as a service's set-up step, its lines from `level` in `caplog`."""
    with caplog.at_level(level, logger=LOGGER.name):
        await asyncio.wait_for(
            until_done(
                step,
                what=what,
                logger=LOGGER,
                waiting=waiting,
                retry_s=retry_s,
                errors=errors,
                **options,
            ),
            5,
        )


async def test_until_done_tries_a_step_again_after_its_errors_and_raises_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    waited: list[str] = []
    await waited_on(
        answering([ValueError("not yet"), TimeoutError(), None]),
        caplog,
        what="streams not ensured yet",
        waiting=waited.append,
        retry_s=0.001,
        retry_max_s=0.002,
        errors=(ValueError, TimeoutError),
    )

    # A timeout says nothing of itself: its class does.
    assert waited == ["streams not ensured yet: not yet", "streams not ensured yet: TimeoutError"]
    assert caplog.messages == waited[:1]  # the next within STEP_FAILURE_LOG_INTERVAL_S: held back

    async def broken() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await waited_on(broken, caplog, retry_s=0.001)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_until_done_logs_an_outage_once_per_interval_and_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # OpenSearch away at start, a try every 2 s: not 30 lines a minute but, as the other
    # outage lines, the first, then one a STEP_FAILURE_LOG_INTERVAL_S with the count held back.
    clock = Clock()
    tries = 0

    async def step() -> None:
        nonlocal tries
        tries += 1
        if tries <= 40:
            clock.now += 2.0
            raise OSError("opensearch not reachable")

    await waited_on(
        step,
        caplog,
        level=logging.INFO,
        what="index template not installed yet",
        failure_log=logs.Throttle(tasks.STEP_FAILURE_LOG_INTERVAL_S, clock=clock),
    )

    failure = "index template not installed yet: opensearch not reachable"
    assert [(r.levelno, r.getMessage(), getattr(r, "held_back", None)) for r in caplog.records] == [
        (logging.WARNING, failure, 0),  # at 2 s
        (logging.WARNING, f"{failure} (14 more since the last line)", 14),  # at 32 s
        (logging.WARNING, f"{failure} (14 more since the last line)", 14),  # at 62 s
        (logging.INFO, "index template not installed yet: recovered after 40 failed tries", None),
    ]
    assert caplog.records[-1].failed_tries == 40


async def test_until_done_logs_one_line_for_a_step_failing_again_and_again_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The default pace: the first failure, and nothing more within STEP_FAILURE_LOG_INTERVAL_S.
    answers: list[Exception | None] = [OSError("not yet")] * 50 + [None]
    await waited_on(answering(answers), caplog)

    assert answers == []
    assert caplog.messages == ["x: not yet"]


async def test_a_step_done_at_once_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    await waited_on(answering([None]), caplog, level=logging.DEBUG)
    assert caplog.records == []


async def test_until_done_tries_again_after_an_unexpected_error_logged_with_its_stack_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A bug in a set-up step: the service must not die of it, nor log its stack every 2 s.
    monkeypatch.setattr(tasks, "RESTART_MAX_S", 0.004)
    answers: list[Exception | None] = [
        TypeError("bug"),
        TypeError("bug"),
        OSError("not yet"),  # an outage in between: one line, as ever
        TypeError("bug"),
        KeyError("other bug"),
        None,
    ]
    waited: list[str] = []
    await waited_on(
        answering(answers),
        caplog,
        what="not consuming yet",
        waiting=waited.append,
        retry_s=0.001,
        retry_unexpected=True,
    )

    assert answers == []  # done once the step returned
    bug = "not consuming yet: unexpected TypeError('bug')"
    other = "not consuming yet: unexpected KeyError('other bug')"
    assert waited == [bug, bug, "not consuming yet: not yet", bug, other]
    # The pause after a bug doubles up to RESTART_MAX_S; its stack only for a new one.
    assert [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
        (logging.ERROR, f"{bug}; trying again in 0.001 s", True),
        (logging.ERROR, f"{bug}; trying again in 0.002 s", False),  # the same: no stack again
        (logging.WARNING, "not consuming yet: not yet", False),
        (logging.ERROR, f"{bug}; trying again in 0.004 s", False),
        (logging.ERROR, f"{other}; trying again in 0.004 s", True),
    ]


async def test_until_done_pauses_after_an_unexpected_error_at_most_restart_max_s(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A retry_s longer than RESTART_MAX_S does not lengthen the pause after a bug.
    monkeypatch.setattr(tasks, "RESTART_MAX_S", 0.002)
    answers: list[Exception | None] = [TypeError("bug"), None]
    await waited_on(answering(answers), caplog, retry_s=0.5, retry_unexpected=True)

    assert caplog.messages == ["x: unexpected TypeError('bug'); trying again in 0.002 s"]
