"""`tpipe loadgen`'s rate lines: once a second until the summary, its last flushes included."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TextIO

import pytest
from aiohttp import web

from tests.unit.tpipe.send_support import loadgen_args, track_server
from tpipe import _cmd_loadgen

RECEIPT = {"accepted": 1, "rejected": [], "duplicate": False, "batch_id": "b"}


class FlushingLines:
    """stderr that sets `two_seen` once two rate lines say what is left to flush."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._seen = 0
        self.two_seen = asyncio.Event()

    def write(self, text: str) -> int:
        self._seen += text.count("flushing:")
        if self._seen >= 2:
            self.two_seen.set()
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()


async def test_the_rate_line_goes_on_while_the_last_batches_are_flushed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_cmd_loadgen, "REPORT_EVERY_S", 0.05)
    stderr = FlushingLines(sys.stderr)
    monkeypatch.setattr(sys, "stderr", stderr)

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        # A gateway slow to answer, or retries after 503s: no answer until the rate line
        # has gone on twice (bounded, should it never).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stderr.two_seen.wait(), timeout=10)
        return web.json_response(RECEIPT, status=202)

    async with track_server(slow) as url:
        # Nothing is flushed before the end: one batch per device, sent once stopped.
        args = loadgen_args(url, duration=0.2)
        assert await _cmd_loadgen.run(args) == 0

    out, err = capsys.readouterr()
    flushing = [line for line in err.splitlines() if "flushing:" in line]
    assert len(flushing) >= 2, err
    assert flushing[0].endswith(", flushing: 2 batches left")
    assert out.startswith("loadgen: 2 devices")
