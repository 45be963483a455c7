"""`tpipe dlq replay` and `delete` over a DLQ read one entry at a time (a stand-in JetStream
that logs every call, so the order of reads and writes can be checked)."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Iterator
from email.header import Header
from typing import Any

import pytest
from nats.js.api import RawStreamMsg, StreamConfig, StreamInfo, StreamState
from nats.js.errors import NotFoundError, ServerError

from pipeline import subjects
from tpipe import _cmd_dlq, cli

SOURCE = "telemetry.enriched.v1.shop"


class Dlq:
    """A DLQ stream in memory, with the JetStream calls `tpipe dlq` makes."""

    def __init__(self, count: int) -> None:
        self.messages = {seq: self._letter(seq) for seq in range(1, count + 1)}
        self.log: list[tuple[str, int]] = []
        self.fail_again: set[int] = set()

    def _letter(self, seq: int, **extra: str) -> RawStreamMsg:
        headers = {
            subjects.DLQ_STAGE_HEADER: "indexer",
            subjects.DLQ_REASON_HEADER: "mapper_parsing_exception",
            subjects.DLQ_SUBJECT_HEADER: SOURCE,
            **extra,
        }
        return RawStreamMsg(
            subject=subjects.dlq_subject("indexer"), seq=seq, data=b"batch", headers=headers
        )

    async def stream_info(self, name: str, subjects_filter: str) -> StreamInfo:
        last = max(self.messages, default=0)
        state = StreamState(
            messages=len(self.messages),
            bytes=0,
            first_seq=min(self.messages, default=0),
            last_seq=last,
            consumer_count=0,
            subjects={subjects.dlq_subject("indexer"): len(self.messages)},
        )
        return StreamInfo(config=StreamConfig(name=name), state=state)

    async def get_msg(self, stream: str, *, seq: int, subject: str, next: bool) -> RawStreamMsg:
        self.log.append(("get", seq))
        found = [s for s in sorted(self.messages) if s >= seq]
        if not found:
            raise NotFoundError
        return self.messages[found[0]]

    async def publish(self, subject: str, payload: bytes, **kwargs: Any) -> None:
        origin = int(kwargs["headers"][_cmd_dlq.REPLAY_OF_HEADER])
        self.log.append(("publish", origin))
        if origin in self.fail_again:
            # The stage rejects it again at once: a new dead letter after the last.
            seq = max(self.messages) + 1
            self.messages[seq] = self._letter(seq, **{_cmd_dlq.REPLAY_OF_HEADER: str(origin)})

    async def delete_msg(self, stream: str, seq: int) -> None:
        self.log.append(("delete", seq))
        if seq not in self.messages:  # as nats-server answers it
            raise ServerError(
                code=500, err_code=_cmd_dlq.MSG_DELETE_FAILED, description="no message found"
            )
        del self.messages[seq]


class DeletedMeanwhile(Dlq):
    """A DLQ whose entries another `tpipe dlq` deletes right after they are read."""

    async def get_msg(self, stream: str, *, seq: int, subject: str, next: bool) -> RawStreamMsg:
        msg = await super().get_msg(stream, seq=seq, subject=subject, next=next)
        assert msg.seq is not None
        del self.messages[msg.seq]
        return msg


class Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def connected(dlq: Dlq) -> Iterator[None]:
    """`tpipe dlq` talks to `dlq` instead of connecting to NATS."""

    class Connection:
        def jetstream(self) -> Dlq:
            return dlq

        async def close(self) -> None:
            return None

    async def connect(url: str) -> Connection:
        return Connection()

    original = _cmd_dlq._connect
    _cmd_dlq._connect = connect  # type: ignore[assignment]
    try:
        yield
    finally:
        _cmd_dlq._connect = original


async def replay(dlq: Dlq, *, wait_s: float = 0.0, dry_run: bool = False) -> tuple[int, str]:
    err = Pipe()
    with connected(dlq):
        code = await _cmd_dlq._replay("nats://dlq", None, dry_run, wait_s, err)
    return code, err.getvalue()


async def test_replay_reads_and_sends_one_entry_at_a_time() -> None:
    dlq = Dlq(250)

    code, err = await replay(dlq)

    assert code == 0
    # Each entry is published and deleted before the next one is read: the DLQ is
    # never held in memory, and the first progress line comes after 100 entries.
    expected: list[tuple[str, int]] = []
    for seq in range(1, 251):
        expected += [("get", seq), ("publish", seq), ("delete", seq)]
    assert dlq.log == expected
    assert err.splitlines() == [
        "100/250 replayed 100, skipped 0, failed to publish 0, failed again 0",
        "200/250 replayed 200, skipped 0, failed to publish 0, failed again 0",
        "replayed 250, skipped 0, failed to publish 0, failed again 0",
    ]
    assert dlq.messages == {}


async def test_entries_failing_again_are_left_for_the_next_run_and_counted() -> None:
    dlq = Dlq(3)
    dlq.fail_again = {2}

    code, err = await replay(dlq, wait_s=0.2)

    assert code == 1
    assert err.splitlines()[-1] == "replayed 3, skipped 0, failed to publish 0, failed again 1"
    # Entry 2's new dead letter (seq 4) was neither replayed in this run nor lost.
    assert [origin for op, origin in dlq.log if op == "publish"] == [1, 2, 3]
    assert list(dlq.messages) == [4]
    # Watching for failures reads only what came after the replayed entries.
    watch = dlq.log[dlq.log.index(("delete", 3)) + 1 :]
    assert watch[:2] == [("get", 4), ("get", 5)]
    assert {seq for _, seq in watch} == {4, 5}


async def test_a_dry_run_counts_an_entry_that_cannot_be_replayed_as_failed() -> None:
    dlq = Dlq(2)
    dlq.messages[2] = dlq._letter(2, **{subjects.SCHEMA_HEADER: _cmd_dlq.ENRICHED_EVENT_SCHEMA})
    dlq.messages[2].data = b"\xff not an event"

    code, err = await replay(dlq, dry_run=True)

    assert err.splitlines()[-1] == "would replay 1, skipped 0, failed to publish 1, failed again 0"
    assert code == 1
    assert [op for op, _ in dlq.log] == ["get", "get"]  # nothing sent or deleted


async def test_an_entry_stored_without_its_bytes_is_skipped_and_named() -> None:
    # Too large to store with the DLQ headers: replaying its empty payload would lose it.
    dlq = Dlq(2)
    omitted = {subjects.DLQ_OMITTED_BYTES_HEADER: "1048000", subjects.DLQ_SOURCE_SEQ_HEADER: "9"}
    dlq.messages[1] = dlq._letter(1, **omitted)
    dlq.messages[1].data = b""

    code, err = await replay(dlq)

    assert code == 0
    assert [origin for op, origin in dlq.log if op == "publish"] == [2]
    assert list(dlq.messages) == [1]
    assert err.splitlines() == [
        "skip seq 1: its 1048000 bytes were too large to store; the original is sequence 9 "
        f"of the stream of {SOURCE!r}",
        "replayed 1, skipped 1, failed to publish 0, failed again 0",
    ]


async def test_a_reason_with_non_ascii_text_is_listed() -> None:
    # nats-py hands such a header over as an email.header.Header, not a str.
    dlq = Dlq(1)
    reason = Header("mapper_parsing_exception: Preview of field's value: 'Jörg'", "utf-8")
    dlq.messages[1] = dlq._letter(1, **{subjects.DLQ_REASON_HEADER: reason})  # type: ignore[arg-type]
    out, err = io.StringIO(), io.StringIO()

    with connected(dlq):
        code = await _cmd_dlq._list("nats://dlq", None, 10, "jsonl", out, err)

    assert code == 0
    assert "Jörg" in out.getvalue()


async def test_a_list_cut_by_its_limit_says_how_many_there_are() -> None:
    dlq = Dlq(5)
    out, err = io.StringIO(), io.StringIO()

    with connected(dlq):
        await _cmd_dlq._list("nats://dlq", None, 2, "table", out, err)

    assert len(out.getvalue().splitlines()) == 3  # the heading and two entries
    assert err.getvalue() == "the first 2 of 5 dead letters (--limit for more)\n"


@pytest.mark.parametrize("stage", ["gateway", "telemetry.dlq.v1.>", "Indexer"])
def test_a_stage_without_a_dlq_is_a_usage_error(
    stage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(dlq_command="list", stage=stage, nats="nats://dlq")

    assert _cmd_dlq.run(args) == _cmd_dlq.EXIT_USAGE
    assert "is not a stage with a DLQ (enricher, indexer)" in capsys.readouterr().err


async def delete(dlq: Dlq, *seqs: int) -> tuple[int, str, str]:
    out, err = Pipe(), Pipe()
    with connected(dlq):
        code = await _cmd_dlq._delete("nats://dlq", seqs, out, err)
    return code, out.getvalue(), err.getvalue()


async def test_an_entry_replay_always_skips_can_be_deleted() -> None:
    dlq = Dlq(3)
    bad_app = {subjects.DLQ_SUBJECT_HEADER: "telemetry.raw.v1.bad!app"}
    dlq.messages[2] = dlq._letter(2, **bad_app, **{subjects.DLQ_REASON_HEADER: "invalid_app_id"})

    code, out, err = await delete(dlq, 2)

    assert code == 0
    assert out == "deleted seq 2: indexer, telemetry.raw.v1.bad!app, invalid_app_id\n"
    assert err == "deleted 1, not found 0\n"
    assert list(dlq.messages) == [1, 3]
    _, err = await replay(dlq)
    assert "skip seq" not in err


async def test_deleting_a_sequence_not_in_the_dlq_says_so_and_exits_1() -> None:
    dlq = Dlq(3)

    code, out, err = await delete(dlq, 3, 9, 3)

    assert code == 1
    assert out.splitlines() == [f"deleted seq 3: indexer, {SOURCE}, mapper_parsing_exception"]
    assert err.splitlines() == [
        "seq 9: no such dead letter in TELEMETRY_DLQ",
        "deleted 1, not found 1",
    ]
    assert list(dlq.messages) == [1, 2]


async def test_deleting_an_entry_deleted_meanwhile_says_it_was_not_found() -> None:
    code, out, err = await delete(DeletedMeanwhile(3), 2)

    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        "seq 2: no such dead letter in TELEMETRY_DLQ",
        "deleted 0, not found 1",
    ]


async def test_an_entry_deleted_meanwhile_is_replayed_without_a_delete_error() -> None:
    code, err = await replay(DeletedMeanwhile(2))

    assert code == 0
    assert err.splitlines() == ["replayed 2, skipped 0, failed to publish 0, failed again 0"]


def test_delete_takes_one_sequence_or_more(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dlq", "delete"]) == _cmd_dlq.EXIT_USAGE
    assert cli.main(["dlq", "delete", "0"]) == _cmd_dlq.EXIT_USAGE
    assert "must be greater than 0" in capsys.readouterr().err
