"""Error lines say what happened, also for exceptions without a text (a timeout)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.unit.tpipe.send_support import ndjson_file, send_args, track_server
from tpipe import _cmd_dlq, _cmd_send, _cmd_tail, _commands, errors


async def test_a_gateway_that_does_not_answer_times_out_with_a_message(tmp_path: Path) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with track_server(hang) as url:
        args = send_args(url, ndjson_file(tmp_path / "events.ndjson", 3), timeout=0.2)
        with pytest.raises(errors.Unavailable) as caught:
            await _cmd_send.run(args)

    assert str(caught.value) == f"{url}/v1/track: timed out after 0.2 s"


def test_send_and_loadgen_take_a_timeout_per_request() -> None:
    assert _commands._parse(["send", "events.json", "--timeout", "2.5"]).timeout == 2.5
    assert _commands._parse(["loadgen"]).timeout == 30.0


async def _time_out(**_: Any) -> None:
    raise TimeoutError


async def test_a_nats_connect_that_times_out_names_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_cmd_tail.nats, "connect", _time_out)
    with pytest.raises(errors.Unavailable, match=r"127\.0\.0\.1:4222: TimeoutError$"):
        await _cmd_tail._connect("nats://127.0.0.1:4222", _cmd_tail.Outage("nats://127.0.0.1:4222"))
    with pytest.raises(_cmd_dlq.DlqError, match=r"127\.0\.0\.1:4222: TimeoutError$"):
        await _cmd_dlq._connect("nats://127.0.0.1:4222")
