"""Ctrl-C and SIGTERM: commands stop at once and say what they had done."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.unit.tpipe.send_support import ndjson_file, send_args, track_server
from tpipe import _cmd_send

RECEIPT = {"accepted": 100, "rejected": [], "duplicate": False, "batch_id": "b"}


class StallingGateway:
    """Accepts the first `answered` requests, then never answers."""

    def __init__(self, answered: int) -> None:
        self.answered = answered
        self.requests = 0
        self.stalled = asyncio.Event()

    async def track(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        if self.requests > self.answered:
            self.stalled.set()
            await asyncio.Event().wait()
        return web.json_response(RECEIPT, status=202)


@pytest.fixture
async def stalling() -> AsyncIterator[tuple[StallingGateway, str]]:
    fake = StallingGateway(answered=1)
    async with track_server(fake.track) as url:
        yield fake, url


async def test_an_interrupted_send_prints_what_went_and_what_did_not(
    stalling: tuple[StallingGateway, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = stalling
    args = send_args(url, ndjson_file(tmp_path / "events.ndjson", 250))
    send = asyncio.create_task(_cmd_send.run(args))
    await asyncio.wait_for(fake.stalled.wait(), timeout=10)

    send.cancel()  # what asyncio.run does on Ctrl-C
    with pytest.raises(asyncio.CancelledError):
        await send

    out, err = capsys.readouterr()
    assert "sent 100 events in 1 batches" in out
    assert "accepted: 100" in out
    assert "tpipe send: not sent: 150 events, from event #100 on" in err
