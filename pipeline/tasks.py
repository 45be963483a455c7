"""Background tasks: cancelling them so that they really end, starting again work that ended
on an unexpected error, and trying a set-up step again until it is done."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pipeline import logs

log = logging.getLogger(__name__)

# How long a cancelled task has before it is cancelled again.
CANCEL_AGAIN_S = 0.05


async def to_the_end(work: Awaitable[Any]) -> None:
    """Awaits `work` until it has ended, however often the caller is cancelled meanwhile, then
    raises the CancelledError if there was one: for a clean-up (a failed start stopping what
    it began) that a cancel, again and again from `cancel_and_wait`, would otherwise cut
    short, leaving a server listening. `work` must end by itself (a stop has its deadline)."""
    task = asyncio.ensure_future(work)
    interrupted = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            interrupted = True  # or `work` itself was: its result() raises that then
    if interrupted:
        raise asyncio.CancelledError
    task.result()


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancels `tasks` and returns once every one has ended.

    A task still running shortly after its cancel is cancelled again: on Python 3.11,
    `asyncio.wait_for` drops a cancel that arrives as what it waits for completes (fixed in
    3.12), and a background loop would go on, a stop that awaits it waiting forever. Cancelled
    itself meanwhile, it still waits for the tasks to end, then raises CancelledError. A task
    that ended on an error other than the cancel has it logged here.
    """
    pending = {task for task in tasks if not task.done()}
    interrupted = False
    while pending:
        for task in pending:
            task.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN_S)
        except asyncio.CancelledError:
            # Cancelled itself (its caller is being cancelled, again and again if it called
            # this too): the tasks must still end first, or they would be left running.
            interrupted = True
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s ended on an error: %r", task.get_name(), task.exception())
    if interrupted:
        raise asyncio.CancelledError


# Work that ends on an unexpected error is started again after this pause, doubling up to
# RESTART_MAX_S while it keeps ending so.
RESTART_S = 1.0
RESTART_MAX_S = 30.0
# A set-up step failing while what it waits for is away logs its first failure, then one line
# this often at most, as the other outage lines: not one a try (30 a minute every 2 s).
STEP_FAILURE_LOG_INTERVAL_S = 30.0


async def restarting(
    work: Callable[[], Awaitable[None]],
    *,
    what: str,
    logger: logging.Logger,
    failed: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Runs `work()` until it returns, starting it again each time it ends on an error.

    The error is logged with its stack (`<what> stopped on an error: <error>; starting it
    again in <n> s`), `failed` is given the first part of that line (for readiness, and to
    undo what the run left half done; its own error is logged too), and `work()` starts again
    after a pause: RESTART_S,
    doubling up to RESTART_MAX_S while it keeps failing. Cancelling ends it, in the pause too.
    """
    delay = RESTART_S
    while True:
        try:
            await work()
            return
        except Exception as err:
            failure = f"{what} stopped on an error: {err!r}"
            logger.error("%s; starting it again in %g s", failure, delay, exc_info=err)
            if failed is not None:
                try:
                    await failed(failure)
                except Exception as undo_err:  # the next run starts over all the same
                    logger.error("%s: undoing it failed: %r", what, undo_err, exc_info=undo_err)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RESTART_MAX_S)


async def until_done(
    step: Callable[[], Awaitable[object]],
    *,
    what: str,
    logger: logging.Logger,
    waiting: Callable[[str], None],
    retry_s: float,
    retry_max_s: float | None = None,
    errors: tuple[type[Exception], ...],
    retry_unexpected: bool = False,
    failure_log: logs.Throttle | None = None,
) -> None:
    """Runs `step()` until it returns, trying again after each of `errors` (a server not
    there yet, a setting it refuses...): a set-up step a service waits on.

    Each of `errors` is given to `waiting` (for readiness) and logged as `failure_log` paces
    it (default: the first, then one line per STEP_FAILURE_LOG_INTERVAL_S), as `<what>:
    <error>`, with `held_back`, the failures left out since the previous line; the next try
    comes after `retry_s`, doubling up to `retry_max_s` when given.
    Any other error is raised; with `retry_unexpected` it is tried again too, as the bug it
    is: logged as an error (`<what>: unexpected <error>; trying again in <n> s`), with its
    stack unless the unexpected error before it was the same, and given to `waiting`
    (`<what>: unexpected <error>`); the pause after it starts at `retry_s` (RESTART_MAX_S at
    most) and doubles each time, up to RESTART_MAX_S.
    A step done after failures says so (`<what>: recovered after <n> failed tries`).
    """
    failure_log = failure_log or logs.Throttle(STEP_FAILURE_LOG_INTERVAL_S)
    delay = retry_s  # after one of `errors`
    unexpected_delay = min(retry_s, RESTART_MAX_S)
    last_unexpected = ""
    failed = 0
    started = asyncio.get_running_loop().time()
    while True:
        try:
            await step()
        except errors as err:
            failure = f"{what}: {str(err) or type(err).__name__}"
            _log_failure(logger, failure, failure_log)
            pause = delay
            if retry_max_s is not None:
                delay = min(delay * 2, retry_max_s)
        except Exception as err:
            if not retry_unexpected:
                raise
            failure = f"{what}: unexpected {err!r}"
            pause = unexpected_delay
            stack = err if failure != last_unexpected else None
            logger.error("%s; trying again in %g s", failure, pause, exc_info=stack)
            last_unexpected = failure
            unexpected_delay = min(unexpected_delay * 2, RESTART_MAX_S)
        else:
            if failed:
                waited_s = asyncio.get_running_loop().time() - started
                logger.info(
                    "%s: recovered after %d failed tries",
                    what,
                    failed,
                    extra={"failed_tries": failed, "waited_s": round(waited_s, 1)},
                )
            return
        failed += 1
        waiting(failure)
        await asyncio.sleep(pause)


def _log_failure(logger: logging.Logger, failure: str, failure_log: logs.Throttle) -> None:
    """One of a step's expected failures (an outage), when `failure_log` admits it."""
    held_back = failure_log.admit()
    if held_back is None:
        return
    # No count on the first line of an outage, nor on one a try slower than the interval.
    logger.warning("%s%s", failure, logs.since_last_line(held_back), extra={"held_back": held_back})
