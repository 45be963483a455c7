"""Replies that are not clean HTTP (cut short, a broken gzip body, not HTTP at all) are
failures like a dropped connection: retried, then reported, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from tests.unit.tpipe.send_support import ndjson_file, send_args
from tpipe import _cmd_loadgen, _cmd_send, errors
from tpipe._backoff import Backoff
from tpipe._track import TrackPoster

RECEIPT = orjson.dumps({"accepted": 1, "rejected": [], "duplicate": False, "batch_id": "b"})
REPLIES = {
    "ok": b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(RECEIPT)).encode() + b"\r\n\r\n" + RECEIPT,
    "cut": b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: 100\r\n\r\n" + RECEIPT[:5],
    "bad-gzip": b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
    b"Content-Encoding: gzip\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
}


class RawGateway:
    """Answers each request with the next queued reply (then with `default`), byte for byte."""

    def __init__(self, *, default: str = "ok") -> None:
        self.replies: list[str] = []
        self.default = default
        self.requests = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        self.requests += 1
        writer.write(REPLIES[self.replies.pop(0) if self.replies else self.default])
        await writer.drain()
        writer.close()


@pytest.fixture
async def raw_gateway() -> AsyncIterator[tuple[RawGateway, str]]:
    fake = RawGateway()
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def no_sleep(_: float) -> None:
    return None


def poster(url: str, *, retries: int) -> TrackPoster:
    return TrackPoster(
        url, write_key="wk", max_retries=retries, backoff=Backoff(rand=lambda: 0.0), sleep=no_sleep
    )


@pytest.mark.parametrize("reply", ["cut", "bad-gzip", "not-http"])
async def test_an_unclean_reply_is_retried(raw_gateway: tuple[RawGateway, str], reply: str) -> None:
    fake, url = raw_gateway
    fake.replies = [reply]
    async with poster(url, retries=2) as send:
        receipt = await send.post([{"event_id": "a"}])
    assert receipt.accepted == 1
    assert receipt.retries == 1
    assert fake.requests == 2


async def test_unclean_replies_that_last_are_unavailable_on_one_line(
    raw_gateway: tuple[RawGateway, str],
) -> None:
    fake, url = raw_gateway
    fake.default = "not-http"
    async with poster(url, retries=1) as send:
        with pytest.raises(errors.Unavailable, match="Bad status line") as caught:
            await send.post([{"event_id": "a"}])
    assert "\n" not in str(caught.value)
    assert fake.requests == 2


async def test_send_cut_short_by_unclean_replies_says_what_was_not_sent(
    raw_gateway: tuple[RawGateway, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = raw_gateway
    fake.replies = ["ok"]
    fake.default = "cut"
    args = send_args(url, ndjson_file(tmp_path / "events.ndjson", 250))

    with pytest.raises(errors.Unavailable, match="payload is not completed"):
        await _cmd_send.run(args)

    out, err = capsys.readouterr()
    assert "sent 100 events in 1 batch" in out
    assert "tpipe send: not sent: 150 events, from event #100 on" in err


async def test_loadgen_counts_unclean_replies_as_failed_batches(
    raw_gateway: tuple[RawGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = raw_gateway
    fake.default = "bad-gzip"
    args = argparse.Namespace(
        gateway=url,
        key="wk",
        retries=0,
        timeout=30.0,
        allow_remote=False,
        devices=2,
        rate=100.0,
        duration=0.3,
        events=None,
        batch_size=5,
        flush_interval=0.1,
    )

    with pytest.raises(errors.Unavailable, match="no batch got through"):
        await _cmd_loadgen.run(args)

    out, _ = capsys.readouterr()
    assert out.startswith("loadgen: 2 devices")
    assert fake.requests > 0
