"""`tpipe send` reads NDJSON a line at a time: a pipe's events go out before it ends, a file's
lines are all checked before the first batch."""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from aiohttp import web

from tests.unit.tpipe.send_support import ndjson_file, send_args, track_server
from tpipe import _cmd_send
from tpipe._events_file import read_events
from tpipe.errors import UsageError


class Recorder:
    """A gateway that accepts every batch and keeps the event ids and the batch sizes."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.sizes: list[int] = []
        self.first_batch = threading.Event()

    async def track(self, request: web.Request) -> web.Response:
        events = orjson.loads(await request.read())
        self.ids += [event["event_id"] for event in events]
        self.sizes.append(len(events))
        self.first_batch.set()
        return web.json_response({"accepted": len(events), "rejected": []}, status=202)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    fake = Recorder()
    async with track_server(fake.track) as url:
        yield fake, url


def lines(first: int, last: int) -> bytes:
    return "".join(f'{{"event_id": "e-{n}"}}\n' for n in range(first, last)).encode()


def stdin_pipe(monkeypatch: pytest.MonkeyPatch) -> int:
    """Standard input made a pipe; returns its write end."""
    read_end, write_end = os.pipe()
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=os.fdopen(read_end, "rb")))
    return write_end


async def test_a_pipe_is_sent_as_it_comes(
    recorder: tuple[Recorder, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake, url = recorder
    write_end = stdin_pipe(monkeypatch)

    def producer() -> None:
        # The rest is written only once the first batch has reached the gateway: a send that
        # read the whole input first would never see it.
        os.write(write_end, lines(0, 150))
        if fake.first_batch.wait(timeout=10):
            os.write(write_end, lines(150, 250))
        os.close(write_end)

    thread = threading.Thread(target=producer)
    thread.start()
    try:
        status = await _cmd_send.run(send_args(url, Path("-")))
    finally:
        thread.join()

    assert status == 0
    assert fake.sizes == [100, 100, 50]
    assert fake.ids == [f"e-{n}" for n in range(250)]


async def test_a_broken_line_down_a_pipe_says_what_went_and_what_did_not(
    recorder: tuple[Recorder, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, url = recorder
    write_end = stdin_pipe(monkeypatch)
    os.write(write_end, lines(0, 150) + b"{oops\n" + lines(150, 200))
    os.close(write_end)

    with pytest.raises(UsageError, match=r"^stdin:151: not JSON"):
        await _cmd_send.run(send_args(url, Path("-")))

    assert fake.ids == [f"e-{n}" for n in range(100)]
    out, err = capsys.readouterr()
    assert "sent 100 events in 1 batch" in out
    assert "not sent: the rest of the input, from event #100 on" in err


async def test_a_files_lines_are_all_checked_before_the_first_batch(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    fake, url = recorder
    path = tmp_path / "events.ndjson"
    path.write_bytes(lines(0, 250) + b"{oops\n")

    with pytest.raises(UsageError, match=r"events.ndjson:251: not JSON"):
        await _cmd_send.run(send_args(url, path))

    assert fake.sizes == []


async def test_a_files_progress_counts_against_its_total(
    recorder: tuple[Recorder, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = recorder
    path = ndjson_file(tmp_path / "events.ndjson", 250)

    assert await _cmd_send.run(send_args(url, path, progress=True)) == 0

    assert "sending: 250/250 events, accepted 250, rejected 0" in capsys.readouterr().err
    assert fake.sizes == [100, 100, 50]


@pytest.mark.parametrize(
    ("data", "total", "pipe_total"),
    [
        # NDJSON (a byte order mark, blank lines, CRLF): streamed; a file's total counted first,
        # a pipe's not known before its end.
        (b'\xef\xbb\xbf{"event_id": "a"}\r\n\r\n{"event_id": "b"}\r\n', 2, None),
        # Documents, and a single line: read whole.
        (b'[{"event_id": "a"},\n {"event_id": "b"}]\n', 2, 2),
        (b'{\n  "events": [{"event_id": "a"},\n{"event_id": "b"}]\n}\n', 2, 2),
        (b'{"event_id": "a"}\n', 1, 1),
    ],
)
def test_every_shape_reads_the_same_from_a_file_or_a_pipe(
    data: bytes, total: int, pipe_total: int | None
) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        from_pipe = read_events(pipe, source="stdin")
        assert from_pipe.total == pipe_total
        piped = [event for batch in from_pipe.batches(1) for event in batch]
    from_file = read_events(io.BytesIO(data), source="f")

    assert from_file.total == total
    assert [event for batch in from_file.batches(1) for event in batch] == piped
    assert [event["event_id"] for event in piped] == ["a", "b"][:total]
