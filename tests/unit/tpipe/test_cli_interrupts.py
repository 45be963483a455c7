"""Ctrl-C and SIGTERM: commands stop at once and say what they had done."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.unit.tpipe.send_support import loadgen_args, ndjson_file, send_args, track_server
from tpipe import _cmd_loadgen, _cmd_send, _cmd_tail, errors

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
    assert "sent 100 events in 1 batch" in out
    assert "accepted: 100" in out
    assert "tpipe send: not sent: 150 events, from event #100 on" in err


async def test_loadgen_flushes_once_without_retries_after_ctrl_c(
    capsys: pytest.CaptureFixture[str],
) -> None:
    requests = 0

    async def busy(request: web.Request) -> web.Response:
        nonlocal requests
        await request.read()
        requests += 1
        return web.json_response({"message": "busy"}, status=503, headers={"Retry-After": "0"})

    async with track_server(busy) as url:
        loadgen = asyncio.create_task(_cmd_loadgen.run(loadgen_args(url)))
        await asyncio.sleep(0.3)  # devices record, nothing is due to flush yet
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(errors.Unavailable, match="no batch got through"):
            await asyncio.wait_for(loadgen, timeout=30)

    assert requests == 2  # one final flush per device
    assert "retries 0" in capsys.readouterr().out


async def test_ctrl_c_cuts_short_a_loadgen_wait_for_retry_after(
    capsys: pytest.CaptureFixture[str],
) -> None:
    requests = 0
    both_waiting = asyncio.Event()

    async def come_back_later(request: web.Request) -> web.Response:
        nonlocal requests
        await request.read()
        requests += 1
        if requests == 2:
            both_waiting.set()
        return web.json_response({"message": "busy"}, status=429, headers={"Retry-After": "50"})

    async with track_server(come_back_later) as url:
        loadgen = asyncio.create_task(_cmd_loadgen.run(loadgen_args(url, flush_interval=0.1)))
        await asyncio.wait_for(both_waiting.wait(), timeout=10)  # each device waits 50 s
        await asyncio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)
        assert await asyncio.wait_for(loadgen, timeout=10) == errors.EXIT_FAILURE

    assert "retries 0" in capsys.readouterr().out


async def test_a_second_ctrl_c_stops_loadgen_during_a_hanging_flush(
    stalling: tuple[StallingGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = stalling
    fake.answered = 0
    loadgen = asyncio.create_task(_cmd_loadgen.run(loadgen_args(url, flush_interval=0.1)))
    await asyncio.wait_for(fake.stalled.wait(), timeout=10)
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.sleep(0.1)
    os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(asyncio.CancelledError):
        # Well below the poster's 30 s per attempt.
        await asyncio.wait_for(loadgen, timeout=10)
    assert capsys.readouterr().out.startswith("loadgen: 2 devices")


async def test_ctrl_c_gives_up_a_hanging_nats_connect() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # a TCP peer that never says INFO
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    args = argparse.Namespace(
        user=[], event=[], app=[], format="table", count=None, nats=f"nats://127.0.0.1:{port}"
    )
    try:
        tail = asyncio.create_task(_cmd_tail.run(args))
        await asyncio.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(asyncio.CancelledError):
            # Well below the connect's own bound (CONNECT_ATTEMPTS tries of 2 s).
            await asyncio.wait_for(tail, timeout=1.5)
    finally:
        server.close()
        await server.wait_closed()
