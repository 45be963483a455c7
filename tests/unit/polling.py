"""Waiting in async unit tests for something a background task does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10) -> None:
    """Returns once `condition()` answers True; fails the test, naming `what`, after
    `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"never {what}"
        await asyncio.sleep(0.005)
