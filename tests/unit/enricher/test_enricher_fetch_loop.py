"""The fetch loop with a stand-in subscription: when a stopping loop's pulls are over."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
import pytest
from nats.js.errors import NotFoundError

from enricher._nats import ConsumerSettings, FetchLoop

SETTINGS = ConsumerSettings(
    name="enricher", ack_wait_s=30.0, max_ack_pending=16, fetch_batch=4, fetch_timeout_s=0.1
)


class Subscription:
    """A pull subscription whose fetch waits until the test lets it time out."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.expire = asyncio.Event()

    async def fetch(self, batch: int, *, timeout: float) -> list[Any]:  # noqa: ASYNC109
        self.waiting.set()
        await self.expire.wait()
        self.expire.clear()
        raise nats.errors.TimeoutError


class Handler:
    async def handle(self, deliveries: list[Any]) -> None:
        raise AssertionError("nothing was fetched")


async def test_a_stopping_loops_pulls_are_done_only_once_its_fetch_has_ended() -> None:
    sub = Subscription()
    loop = FetchLoop(sub, Handler(), settings=SETTINGS)  # type: ignore[arg-type]
    running = asyncio.create_task(loop.run())
    await sub.waiting.wait()

    loop.stop()
    done = asyncio.create_task(loop.pulls_done())
    await asyncio.sleep(0.05)
    assert not done.done()  # its fetch can still be handed a message

    sub.expire.set()
    await asyncio.wait_for(done, 1.0)
    await asyncio.wait_for(running, 1.0)


async def test_a_loop_stopped_between_fetches_has_no_pull_waiting() -> None:
    loop = FetchLoop(Subscription(), Handler(), settings=SETTINGS)  # type: ignore[arg-type]
    loop.stop()
    await asyncio.wait_for(loop.pulls_done(), 1.0)


class Idle:
    """A pull subscription with nothing to deliver: each fetch times out, as nats-py's does
    with its own TimeoutError or with asyncio's (or, `answers_empty`, returns no message)."""

    def __init__(self, *, answers_empty: bool = False) -> None:
        self.fetches = 0
        self.sixth = asyncio.Event()
        self._answers_empty = answers_empty

    async def fetch(self, batch: int, *, timeout: float) -> list[Any]:  # noqa: ASYNC109
        self.fetches += 1
        if self.fetches == 6:
            self.sixth.set()
        await asyncio.sleep(0.001)
        if self._answers_empty:
            return []
        raise (asyncio.TimeoutError if self.fetches % 2 else nats.errors.TimeoutError)()

    async def consumer_info(self) -> Any:
        raise AssertionError("an idle stream is no outage: nothing to restore")


async def test_an_idle_stream_is_not_logged_as_failing(caplog: pytest.LogCaptureFixture) -> None:
    sub = Idle()
    loop = FetchLoop(sub, Handler(), settings=SETTINGS)  # type: ignore[arg-type]
    running = asyncio.create_task(loop.run())
    # Six fetches within a second: no pause between them, no error waited out.
    await asyncio.wait_for(sub.sixth.wait(), 1.0)
    loop.stop()
    await asyncio.wait_for(running, 1.0)
    assert "fetch failing" not in caplog.text


class Unanswered:
    """A pull subscription whose fetches fail as JetStream answers them: the stream is gone."""

    def __init__(self) -> None:
        self.failed = asyncio.Event()

    async def fetch(self, batch: int, *, timeout: float) -> list[Any]:  # noqa: ASYNC109
        self.failed.set()
        await asyncio.sleep(0.001)
        raise NotFoundError(code=404, err_code=10059, description="stream not found")


async def test_fetches_failing_are_logged_with_what_jetstream_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sub = Unanswered()
    loop = FetchLoop(sub, Handler(), settings=SETTINGS)  # type: ignore[arg-type]
    running = asyncio.create_task(loop.run())
    await asyncio.wait_for(sub.failed.wait(), 1.0)
    await asyncio.sleep(0.01)
    loop.stop()
    await asyncio.wait_for(running, 1.0)
    assert caplog.messages[0] == (
        "fetch failing: nats: NotFoundError: code=404 err_code=10059"
        " description='stream not found'; retrying"
    )  # not `NotFoundError()`


async def test_a_fetch_answered_with_no_message_hands_nothing_to_the_handler() -> None:
    # An idle enricher observed enricher_batch_seconds ~15 times a second: each empty fetch
    # was handled as a batch.
    sub = Idle(answers_empty=True)
    loop = FetchLoop(sub, Handler(), settings=SETTINGS)  # type: ignore[arg-type]
    running = asyncio.create_task(loop.run())
    await asyncio.wait_for(sub.sixth.wait(), 1.0)
    loop.stop()
    await asyncio.wait_for(running, 1.0)  # Handler raises if it is handed anything
