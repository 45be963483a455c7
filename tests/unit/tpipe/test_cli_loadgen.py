"""`tpipe loadgen`'s rate lines: once a second until the summary, its last flushes included."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from tests.unit.tpipe.send_support import loadgen_args, track_server
from tpipe import _cmd_loadgen

RECEIPT = {"accepted": 1, "rejected": [], "duplicate": False, "batch_id": "b"}


async def test_the_rate_line_goes_on_while_the_last_batches_are_flushed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_cmd_loadgen, "REPORT_EVERY_S", 0.05)

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.6)  # a gateway slow to answer, or retries after 503s
        return web.json_response(RECEIPT, status=202)

    async with track_server(slow) as url:
        # Nothing is flushed before the end: one batch per device, sent once stopped.
        args = loadgen_args(url, duration=0.2)
        assert await _cmd_loadgen.run(args) == 0

    out, err = capsys.readouterr()
    flushing = [line for line in err.splitlines() if "flushing:" in line]
    assert len(flushing) >= 5, err  # about 0.6 s of lines 0.05 s apart
    assert flushing[0].endswith(", flushing: 2 batches left")
    assert out.startswith("loadgen: 2 devices")
